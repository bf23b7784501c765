"""Coded concepts the result writers use, in one place, each with the reason it was chosen.

The findings' own codes come from the model's label vocabulary (``Finding``); these are the
concepts that frame them.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

# TID 1500 row 1, document title (CID 7021).
REPORT_TITLE = CodedConcept(*codes.cid7021.ImagingMeasurementReport)

# TID 1500 row 4, "Procedure reported" (CID 100, extensible). SNOMED CT 399208008 says "plain
# chest X-ray" without a number of views; LOINC 36643-5 "XR Chest 2V" would claim two views for
# the usual single PA/AP study, and SNOMED keeps the SR in the same terminology as the findings.
PROCEDURE_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")

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

# Purpose of reference of the overlay's Source Image Sequence (CID 7202).
SOURCE_FOR_IMAGE_PROCESSING = CodedConcept(*codes.DCM.SourceImageForImageProcessingOperation)
