"""Coded concepts the result writers use, in one place, each with the reason it was chosen.

The findings' own codes come from the model's label vocabulary (``Finding``); these are the
concepts that frame them.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

# TID 1500 row 1, document title (CID 7021).
REPORT_TITLE = CodedConcept(*codes.cid7021.ImagingMeasurementReport)

# TID 1500 row 4, "Procedure reported" (CID 100). CID 100 has no chest radiography code: its
# only projection-radiography member, LOINC 43468-8 "XR unspecified body region", came in 2021
# and validators built on the 2019 groups (PixelMed's) reject it as they reject SNOMED CT
# 399208008 "Plain chest X-ray" (extending the group). SNOMED CT 363679005 "Imaging procedure"
# is in every edition; the body part and view are the source image's own attributes.
PROCEDURE_CHEST_XRAY = CodedConcept(*codes.cid100.ImagingProcedure)

# TID 300 concept name of the model output. DCM 122157 "Probability" (PS3.16 Table D-1) is the
# generic concept. The alternatives in CID 6048 mean something narrower: 111047 "Probability of
# cancer", and 111012 "Certainty of Finding", a mammography-CAD operating point in percent.
PROBABILITY = CodedConcept("122157", "DCM", "Probability")

# A probability in [0, 1] is dimensionless: UCUM "1" ("no units", CID 7181).
NO_UNITS = CodedConcept(*codes.UCUM.NoUnits)

# Value of the presence call (CID 241 "Present-Absent Only"; the standard's SNOMED codes).
PRESENT = CodedConcept(*codes.cid241.Present)
ABSENT = CodedConcept(*codes.cid241.Absent)

# Observer type of the TID 1002 observer context: the algorithm is a device observer.
DEVICE_OBSERVER = CodedConcept(*codes.DCM.Device)

# TID 1500 row 12 container and the concept of its row 14 TEXT items: report-level statements
# that belong to no single finding (the review notice, the disclaimer, what text was used).
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = CodedConcept(*codes.DCM.Comment)

# The summary finding of the report (row 13 of TID 1500's Qualitative Evaluations, a CODE):
# DCM 121071 "Finding" valued SNOMED CT "Abnormal" when any label is present, otherwise SNOMED
# CT 281900007 "No abnormality detected" (what the algorithm saw, not "Normal", a clinical
# judgement it cannot make).
SUMMARY_FINDING = CodedConcept(*codes.DCM.Finding)
ABNORMAL = CodedConcept(*codes.SCT.Abnormal)
NO_ABNORMALITY = CodedConcept("281900007", "SCT", "No abnormality detected")

# TID 1500 row 6, the container of the measurement groups.
IMAGING_MEASUREMENTS = CodedConcept(*codes.DCM.ImagingMeasurements)

# TID 1600 Image Library containers and the TID 1602 row 1 "Modality" descriptor (CID 29).
IMAGE_LIBRARY = CodedConcept(*codes.DCM.ImageLibrary)
IMAGE_LIBRARY_GROUP = CodedConcept(*codes.DCM.ImageLibraryGroup)
MODALITY = CodedConcept(*codes.DCM.Modality)
_CID29 = {code.value: code for code in codes.cid29.concepts.values()}


def modality(value: str) -> CodedConcept | None:
    """The CID 29 code of a Modality attribute value ("CR", "DX"), or None if it has none."""
    code = _CID29.get(str(value).strip().upper())
    return None if code is None else CodedConcept(code.value, code.scheme_designator, code.meaning)


# Purpose of reference of the overlay's Source Image Sequence (CID 7202).
SOURCE_FOR_IMAGE_PROCESSING = CodedConcept(*codes.DCM.SourceImageForImageProcessingOperation)
