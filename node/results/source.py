"""The source instance's header as the result writers hand it to highdicom.

Sources come from many modalities and decades: ACR-NEMA files without file meta, dates written
``1995.07.20``, Type 2 attributes left out. highdicom reads patient and study attributes
unconditionally and validates their values, so the writers give it a cleaned copy of the header,
never the received dataset itself (which also keeps the caller's object untouched).
"""

from __future__ import annotations

from copy import deepcopy

from pydicom import Dataset, config
from pydicom.valuerep import DA, DT, TM, format_number_as_ds, validate_value

# Patient and General Study module attributes of Type 2 (or 2-like for our purpose) that the
# derived objects must carry; present but empty when the source does not know them.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_SEX = {"M", "F", "O"}
# Only values whose form can be rewritten without changing their meaning are touched. Names,
# IDs and UIDs are copied verbatim even when non-conformant: the results must match the source's
# patient and study in the PACS exactly. Patient's Age too: an RSNA "32" rewritten "032Y" made
# the study disagree with itself (dcentvfy), and highdicom does not check AS values.
_REWRITABLE_VRS = {"DA", "DS", "DT", "IS", "TM"}


def reference_header(source: Dataset) -> Dataset:
    """Return a cleaned, pixel-free copy of the source header.

    Dates, times and numbers that do not conform to their VR are rewritten in DICOM form where
    the meaning is clear (ACR-NEMA dates, ``HH:MM:SS`` times, over-long decimals) and emptied
    otherwise; Patient's Age is copied as it is; a Patient's Sex outside M/F/O is emptied;
    missing Type 2 patient/study attributes are added empty. Everything else is verbatim.

    Parameters
    ----------
    source : pydicom.Dataset
        The instance as received.

    Returns
    -------
    pydicom.Dataset
        A new dataset without pixel data, group lengths or private elements.
    """
    header = Dataset()
    for element in source:
        if element.tag.group == 0x7FE0 or element.tag.element == 0 or element.tag.is_private:
            continue
        header.add(deepcopy(element))
    for element in header:
        if element.VR in _REWRITABLE_VRS and element.VM > 0:
            values = element.value if element.VM > 1 else [element.value]
            if not all(_conforms(element.VR, value) for value in values):
                repaired = [_repaired(element.VR, value) for value in values]
                element.value = repaired if element.VM > 1 else repaired[0]
    if header.get("PatientSex", "") not in _PATIENT_SEX:
        header.PatientSex = ""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _conforms(vr: str, value: object) -> bool:
    try:
        validate_value(vr, value if isinstance(value, (str, bytes)) else str(value), config.RAISE)
    except ValueError:
        return False
    return True


def _repaired(vr: str, value: object) -> str:
    """The value rewritten in DICOM form where its meaning is clear, otherwise ""."""
    text = str(value).strip()
    try:
        if vr == "DA":
            # DA reads the ACR-NEMA form 1995.07.20; re-emit it as YYYYMMDD.
            return DA(text).strftime("%Y%m%d")
        if vr == "TM":
            return str(TM(text.replace(":", "")))
        if vr == "DT":
            return str(DT(text))
    except (ValueError, TypeError, AttributeError):
        return ""
    try:
        if vr == "DS":
            # Over-long decimals such as 0.14300000000000002 (a float printed in full).
            return format_number_as_ds(float(text))
        if vr == "IS" and float(text).is_integer():
            return str(int(float(text)))
    except (ValueError, OverflowError):
        return ""
    return ""
