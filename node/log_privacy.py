"""What libraries would log about a dataset's values, with the values taken out.

pydicom reports an invalid element value by quoting it, both to its logger and as a Python
warning ("Invalid value for VR UI: '1.2.3...'"): the quoted value is a Study UID, a patient's
name or ID. Identifiers belong in the audit log; the application log keeps the message and
withholds the value. Nothing here imports torch: builder processes call it too.
"""

from __future__ import annotations

import logging
import re
import warnings

import pydicom.config

# A Python repr of a str or bytes value, as pydicom's messages quote it.
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
WITHHELD = "<value withheld>"


class WithholdQuotedValues(logging.Filter):
    """Rewrite a record so that every quoted value in its message reads ``<value withheld>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        redacted = _QUOTED.sub(WITHHELD, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def withhold_dicom_values_from_the_log() -> None:
    """Keep pydicom's complaints about values out of the log, in three steps.

    pydicom's check of the values it reads is turned off: it would warn and log each bad value
    quoted ("Invalid value for VR UI: '<Study Instance UID>'"), while the node checks what it
    uses itself and says what is wrong without the value (e.g. the receiver's ``0xC006``). The
    setting is pydicom's and process-wide; reading is otherwise unchanged (pydicom only warns
    in its default mode, it never refuses a value read). Whatever pydicom still logs has its
    quoted values withheld by the filter (installed once), and its value warnings, whose text
    the logger already carries without the value, are silenced.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, WithholdQuotedValues) for f in logger.filters):
        logger.addFilter(WithholdQuotedValues())
    warnings.filterwarnings("ignore", message=r"(?s)Invalid value for VR ")
