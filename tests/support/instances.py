"""Instance headers as the SCP records them, for tests that build studies without the SCP."""

from __future__ import annotations

from storage.studies import InstanceHeader

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def frontal_cr(study_uid: str, sop_uid: str | None = None, **fields) -> InstanceHeader:
    """A processable frontal CR of ``study_uid`` (SOP Instance UID ``<study>.1`` unless given);
    ``fields`` override any other header value."""
    values = {
        "sop_uid": sop_uid or f"{study_uid}.1",
        "sop_class_uid": CR_IMAGE_STORAGE,
        "study_uid": study_uid,
        "series_uid": f"{study_uid}.0",
        "modality": "CR",
        "patient_id": "P1",
        "accession": None,
        "transfer_syntax": EXPLICIT_VR_LITTLE_ENDIAN,
        "view": "frontal",
        "processable": True,
        "skip_reason": None,
    }
    return InstanceHeader(**{**values, **fields})
