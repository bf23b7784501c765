"""Label vocabularies: the findings a model can predict, each with the code the SR writes for it.

Codes are SNOMED CT (scheme designator ``SCT``) where a concept fits the label as the source
dataset uses it. Where none was found and verified, the label gets a code in the local scheme
``99CXR`` (the ``99`` prefix is the DICOM convention for private coding schemes), so that an SR
never claims a SNOMED meaning it cannot back.
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED_CT = "SCT"
LOCAL_SCHEME = "99CXR"


@dataclass(frozen=True)
class Label:
    """One finding a model predicts and the coded concept that names it in DICOM output.

    Parameters
    ----------
    name : str
        The label as the training data spells it (``"Pleural_Thickening"``).
    code_value : str
        Code value of the concept (DICOM Code Value, at most 16 characters).
    coding_scheme : str
        Coding scheme designator, ``"SCT"`` or ``"99CXR"``.
    code_meaning : str
        Human-readable meaning written beside the code.
    """

    name: str
    code_value: str
    coding_scheme: str
    code_meaning: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Label.name must not be empty")
        if not self.code_value or len(self.code_value) > 16:
            raise ValueError(f"Label {self.name!r}: code_value must be 1-16 characters")
        if not self.coding_scheme:
            raise ValueError(f"Label {self.name!r}: coding_scheme must not be empty")
        if not self.code_meaning or len(self.code_meaning) > 64:
            raise ValueError(f"Label {self.name!r}: code_meaning must be 1-64 characters")


def _sct(name: str, code: str, meaning: str) -> Label:
    return Label(name, code, SNOMED_CT, meaning)


# NIH ChestX-ray14 (Wang et al., CVPR 2017), in the order of the dataset's own label list.
NIH_CHESTXRAY14: tuple[Label, ...] = (
    _sct("Atelectasis", "46621007", "Atelectasis"),
    _sct("Cardiomegaly", "8186001", "Cardiomegaly"),
    _sct("Consolidation", "95436008", "Lung consolidation"),
    _sct("Edema", "19242006", "Pulmonary edema"),
    _sct("Effusion", "60046008", "Pleural effusion"),
    _sct("Emphysema", "87433001", "Pulmonary emphysema"),
    _sct("Fibrosis", "51615001", "Pulmonary fibrosis"),
    # ChestX-ray14 "Hernia" on a chest film is almost always a hiatal hernia (retrocardiac
    # gas/soft-tissue mass); no broader "hernia seen on chest radiograph" concept exists.
    _sct("Hernia", "84089009", "Hiatal hernia"),
    _sct("Infiltration", "409609008", "Radiologic infiltrate of lung"),
    _sct("Mass", "309529002", "Lung mass"),
    # 786838002 covers one or more nodules; "Solitary nodule of lung" would over-specify.
    _sct("Nodule", "786838002", "Pulmonary nodule"),
    # No SNOMED CT concept for pleural thickening could be verified; keep it local until one is.
    Label("Pleural_Thickening", "PLEURAL_THICK", LOCAL_SCHEME, "Pleural thickening"),
    _sct("Pneumonia", "233604007", "Pneumonia"),
    _sct("Pneumothorax", "36118008", "Pneumothorax"),
)

# One output: is anything abnormal on the image at all (seeds 000 and 002, IU X-ray).
NORMAL_ABNORMAL: tuple[Label, ...] = (_sct("Abnormal", "263654008", "Abnormal"),)


def _local(name: str, code: str, meaning: str) -> Label:
    return Label(name, code, LOCAL_SCHEME, meaning)


# CheXpert / MIMIC-CXR (Irvin et al., AAAI 2019), in the order of the datasets' CSV columns.
# Uncertain (-1) mentions are a training matter: see models.targets.UncertainPolicy.
CHEXPERT_14: tuple[Label, ...] = (
    # "No Finding" means none of the twelve pathologies (support devices allowed); SNOMED's
    # "Imaging result normal" would claim more than that.
    _local("No Finding", "NO_FINDING", "No finding"),
    _local("Enlarged Cardiomediastinum", "ENL_CARDIOMED", "Enlarged cardiomediastinum"),
    # Not codes.SCT.Cardiomegaly: pydicom lists 287272002 under that name (DICOM's echo
    # context groups), but SNOMED CT now gives 287272002 as "Enlarged septal foramen of heart".
    _sct("Cardiomegaly", "8186001", "Cardiomegaly"),
    # DICOM has DCM 112001 "Opacity", but no SNOMED CT concept for a lung opacity was verified.
    _local("Lung Opacity", "LUNG_OPACITY", "Lung opacity"),
    _local("Lung Lesion", "LUNG_LESION", "Lung lesion"),
    _sct("Edema", "19242006", "Pulmonary edema"),
    _sct("Consolidation", "95436008", "Lung consolidation"),
    _sct("Pneumonia", "233604007", "Pneumonia"),
    _sct("Atelectasis", "46621007", "Atelectasis"),
    _sct("Pneumothorax", "36118008", "Pneumothorax"),
    _sct("Pleural Effusion", "60046008", "Pleural effusion"),
    _local("Pleural Other", "PLEURAL_OTHER", "Other pleural abnormality"),
    _sct("Fracture", "125605004", "Fracture of bone"),
    _local("Support Devices", "SUPPORT_DEVICES", "Support devices"),
)

# Open-i / IU X-ray, MeSH-derived (seed 003 used 22 disease labels). The 22 most frequent
# findings of indiana_reports.csv's MeSH field, counted in reports (3,851 reports; the count is
# the comment), by the rule models.targets.mesh_finding_key implements: a term's main heading,
# or heading/first qualifier for anatomical headings ("Lung/hypoinflation"); "Pulmonary
# Emphysema" counted as "Emphysema", "Aorta, Thoracic/tortuous" as "Aorta/tortuous"; "normal",
# "No Indexing", image-quality terms and devices left out. Next below the cut: Osteophyte (69),
# Pulmonary Congestion (68), Spondylosis (63), Infiltrate (60).
OPENI_MESH: tuple[Label, ...] = (
    _local("Opacity", "OPACITY", "Opacity"),  # 432
    _sct("Cardiomegaly", "8186001", "Cardiomegaly"),  # 345
    _sct("Pulmonary Atelectasis", "46621007", "Atelectasis"),  # 315
    _sct("Calcinosis", "18115005", "Pathologic calcification"),  # 292
    _local("Lung/hypoinflation", "LUNG_HYPOINFL", "Hypoinflation of lung"),  # 276
    _local("Calcified Granuloma", "CALC_GRANULOMA", "Calcified granuloma"),  # 266
    _local("Thoracic Vertebrae/degenerative", "TSPINE_DEGEN", "Degenerative thoracic spine"),  # 250
    _local("Aorta/tortuous", "AORTA_TORTUOUS", "Tortuous aorta"),  # 235
    _local("Lung/hyperdistention", "LUNG_HYPERINFL", "Hyperinflation of lung"),  # 202
    _sct("Cicatrix", "12402003", "Scar"),  # 184
    _local("Spine/degenerative", "SPINE_DEGEN", "Degenerative spine"),  # 174
    _local("Markings", "LUNG_MARKINGS", "Prominent lung markings"),  # 159
    _sct("Pleural Effusion", "60046008", "Pleural effusion"),  # 149
    _sct("Atherosclerosis", "38716007", "Atherosclerosis"),  # 125
    _local("Airspace Disease", "AIRSPACE_DIS", "Airspace disease"),  # 118
    _local("Density", "DENSITY", "Density"),  # 116
    _local("Deformity", "DEFORMITY", "Deformity"),  # 113
    _local("Granulomatous Disease", "GRANULOMATOUS", "Granulomatous disease"),  # 107
    # Open-i's "Nodule" is not always pulmonary, so the general concept, not 786838002.
    _sct("Nodule", "27925004", "Nodule"),  # 106
    _sct("Emphysema", "87433001", "Pulmonary emphysema"),  # 96
    _sct("Scoliosis", "298382003", "Scoliosis deformity of spine"),  # 95
    _sct("Fractures, Bone", "125605004", "Fracture of bone"),  # 83
)

# Two outputs every staged adult and paediatric source can label (NIH ChestX-ray14 "No Finding"
# vs any finding and its Pneumonia label; Kermany's NORMAL / PNEUMONIA folders; RSNA's classes):
# is anything abnormal, and is it pneumonia. Abnormal comes first, as in "normal-abnormal".
ABNORMAL_PNEUMONIA: tuple[Label, ...] = (
    NORMAL_ABNORMAL[0],
    _sct("Pneumonia", "233604007", "Pneumonia"),
)

VOCABULARIES: dict[str, tuple[Label, ...]] = {
    "nih-chestxray14": NIH_CHESTXRAY14,
    "normal-abnormal": NORMAL_ABNORMAL,
    "abnormal-pneumonia": ABNORMAL_PNEUMONIA,
    "chexpert-14": CHEXPERT_14,
    "openi-mesh-22": OPENI_MESH,
}
