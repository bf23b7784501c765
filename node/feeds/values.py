"""Field values both feeds normalise the same way: report status and times (DICOM UIDs are
checked by ``node.uids``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

# HL7 table 0123 (result status) codes, and the words RIS and CSV exports write instead.
STATUS_CODES = {"O", "I", "S", "A", "P", "C", "R", "F", "X", "Y", "Z", "D"}
_STATUS_WORDS = {
    "FINAL": "F",
    "FINALIZED": "F",
    "SIGNED": "F",
    "PRELIM": "P",
    "PRELIMINARY": "P",
    # A wet read is the radiologist's first, unsigned read: preliminary by definition.
    "WET READ": "P",
    "WETREAD": "P",
    "CORRECTED": "C",
    "AMENDED": "C",
    "ADDENDUM": "C",
    "CANCELLED": "X",
    "CANCELED": "X",
}

_DTM = re.compile(r"^(?P<digits>\d{4}(?:\d{2}){0,5})(?:\.(?P<frac>\d{1,6}))?(?P<tz>[+-]\d{4})?$")


def normalise_status(value: str) -> str | None:
    """Return the HL7 status code (F, P, C, X...) for a code or a word, None when empty.

    Unknown values are kept, upper-cased and cut to 8 characters, so nothing a sender says
    about the status is lost without trace.
    """
    text = " ".join(value.split()).upper()
    if not text:
        return None
    if text in STATUS_CODES:
        return text
    return _STATUS_WORDS.get(text, text[:8])


def parse_hl7_datetime(value: str) -> datetime | None:
    """Parse an HL7 DTM/TS (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``), None when empty or bad.

    A time with an offset is converted to UTC; one without is kept as the sender's wall-clock
    time (HL7 says it is the sender's local time, which the node cannot know). The result is
    naive either way, as SQLite stores it. An offset that is no offset (24 hours or more, or 60
    minutes or more) makes the value bad, as does one that moves it out of years 1-9999.
    """
    match = _DTM.match(value.strip())
    if not match:
        return None
    digits = match["digits"]
    numbers = [int(digits[0:4])] + [int(digits[i : i + 2]) for i in range(4, len(digits), 2)]
    # Missing month and day default to 1, missing hour, minute and second to 0.
    numbers += [1, 1, 0, 0, 0][len(numbers) - 1 :]
    micro = int((match["frac"] or "0").ljust(6, "0"))
    try:
        moment = datetime(*numbers, microsecond=micro)
    except ValueError:
        return None
    if match["tz"]:
        return _in_utc(moment, match["tz"])
    return moment


def _in_utc(moment: datetime, tz: str) -> datetime | None:
    """``moment`` at offset ``tz`` (``+HHMM``/``-HHMM``) as naive UTC; None for an offset that
    cannot be one or a result outside what ``datetime`` holds."""
    hours, minutes = int(tz[1:3]), int(tz[3:5])
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
    try:
        return moment.replace(tzinfo=timezone(offset)).astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        return None


def parse_datetime_text(value: str) -> datetime | None:
    """Parse a time from a CSV cell: ISO 8601 or HL7 DTM; None when empty.

    Raises
    ------
    ValueError
        The cell holds something that is not a time.
    """
    value = value.strip()
    if not value:
        return None
    if value.isdigit() or _DTM.match(value):
        moment = parse_hl7_datetime(value)
        if moment is None:
            raise ValueError(f"{value!r} is not a date/time")
        return moment
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date/time") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
