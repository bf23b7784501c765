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

# One output: is anything abnormal on the image at all.
NORMAL_ABNORMAL: tuple[Label, ...] = (_sct("Abnormal", "263654008", "Abnormal"),)

VOCABULARIES: dict[str, tuple[Label, ...]] = {
    "nih-chestxray14": NIH_CHESTXRAY14,
    "normal-abnormal": NORMAL_ABNORMAL,
}
