"""Exceptions described for the application log without the values they carry.

An exception's message may quote what was being handled: SQLAlchemy's errors end with the
statement's parameters (report text, patient IDs, accession numbers, UIDs), a parser's
``ValueError`` quotes the field it could not read. The application log is read by more
people than the audit log and kept under other rules, so it gets only the exception's type,
the driver's error type and where it was raised; the audit event gets the detail.
"""

from __future__ import annotations

import traceback
from pathlib import Path

# Longest exception text an audit event keeps (a statement with a whole report is longer).
MAX_AUDIT_DETAIL_CHARS = 2000


def describe(exc: BaseException) -> str:
    """The exception's type, its cause's type and where it was raised, quoting nothing.

    Parameters
    ----------
    exc:
        A caught exception.

    Returns
    -------
    str
        E.g. ``"IntegrityError (sqlite3.IntegrityError) at reports.py:88 in store_report"``;
        an ``OSError`` adds its ``strerror`` ("No space left on device"), which is the
        system's text, not the input's.
    """
    text = type(exc).__name__
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError: the driver's exception
    if isinstance(orig, BaseException):
        text += f" ({type(orig).__module__}.{type(orig).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        text += f": {exc.strerror}"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        last = frames[-1]
        text += f" at {Path(last.filename).name}:{last.lineno} in {last.name}"
    return text


def audit_text(exc: BaseException) -> str:
    """The exception as the audit log keeps it: type and message, cut to a bounded length."""
    return f"{type(exc).__name__}: {exc}"[:MAX_AUDIT_DETAIL_CHARS]
