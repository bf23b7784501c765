"""Times an admin types: ISO (UTC unless an offset is given), ``today``, ``yesterday``, or an
age such as ``90m``, ``24h``, ``7d`` (that long before now)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """Turn an admin's time into an aware UTC datetime.

    Raises
    ------
    ValueError
        When ``text`` is none of the accepted forms (the message lists them), or names a time
        outside years 1 to 9999.
    """
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return midnight
    if value == "yesterday":
        return midnight - timedelta(days=1)
    try:
        age = _AGE.match(value)
        if age:
            return now - timedelta(**{_UNITS[age[2]]: float(age[1])})
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {text!r} is out of range (years 1 to 9999)") from None
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO like 2026-05-01 or 2026-05-01T08:00+02:00, "
            "'today', 'yesterday', or an age like 90m, 24h, 7d)"
        ) from None
