"""DICOM UID syntax (PS3.5 §9.1), checked wherever the node takes a UID from outside."""

from __future__ import annotations

import re

UID_MAX = 64
_COMPONENT = re.compile(r"^(0|[1-9][0-9]*)$")


def uid_problem(value: str) -> str | None:
    """What makes ``value`` not a DICOM UID, or None when it is one.

    A UID is at least two components of digits separated by dots, at most 64 characters, with
    no empty component and no leading zero in a component of several digits.
    """
    if not value:
        return "empty"
    if len(value) > UID_MAX:
        return f"over {UID_MAX} characters"
    if not set(value) <= set("0123456789."):
        return "not only digits and dots"
    components = value.split(".")
    if len(components) < 2 or "" in components:
        return "an empty component" if "" in components else "a single component"
    if not all(_COMPONENT.match(c) for c in components):
        return "a leading zero"
    return None


def is_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID."""
    return uid_problem(value) is None
