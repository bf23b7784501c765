"""The three identifiers that name a study wherever the node speaks of one.

A study row, a received instance's header, a parsed report and a claimed job each carry a
patient ID, an accession number and a Study Instance UID; the audit log stores all three with
every event about the study, so that an admin can find its events by any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Protocol


class HasStudyIds(Protocol):
    """Anything that names a study by the three identifiers (``Study``, ``InstanceHeader``,
    ``ParsedReport``, ``WorkItem``)."""

    @property
    def study_uid(self) -> str | None: ...

    @property
    def accession(self) -> str | None: ...

    @property
    def patient_id(self) -> str | None: ...


@dataclass(frozen=True)
class StudyIds:
    """A study's patient ID, accession number and Study Instance UID; None where unknown.

    It unpacks like the mapping of the audit columns it fills (``**ids`` gives
    ``study_uid=..., accession=..., patient_id=...``), so a call written for the keyword
    arguments of :func:`storage.audit.record` takes it unchanged.
    """

    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None

    @classmethod
    def of(cls, named: HasStudyIds) -> StudyIds:
        """The identifiers of a study row, header, report or job that carries all three."""
        return cls(
            study_uid=named.study_uid, accession=named.accession, patient_id=named.patient_id
        )

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in self.keys()}

    # The mapping protocol ``**`` and ``dict(...)`` read.
    def keys(self) -> tuple[str, ...]:
        return _NAMES

    def __getitem__(self, name: str) -> str | None:
        if name not in _NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_NAMES)


_NAMES = tuple(f.name for f in fields(StudyIds))
