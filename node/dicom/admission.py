"""Who may associate, from where, and whether the node can take more data right now."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node.disk import has_room

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE unknown
REJECT_UNKNOWN_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE unknown
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation provider, local limit exceeded


@dataclass(frozen=True)
class Refusal:
    reason: str
    reject: tuple[int, int, int]


class Admission:
    """The association policy.

    Parameters
    ----------
    ae_title:
        The node's own AE title: a request calling another is not meant for this node.
    allowed:
        Entries ``AE`` (from any address) or ``AE@address`` (only from that address, or a host
        name's addresses); several entries for one AE title allow each of their addresses.
    spool:
        Where received instances are written; its free space decides whether to take more.
    min_free_bytes:
        Below this much free space new associations are refused as "local limit exceeded"
        (transient: the sender retries later) instead of accepting what cannot be stored.
    also:
        Other folders the node writes to (results, database): their disks must have the
        reserve free too, or what is received could not be processed.
    """

    def __init__(
        self,
        ae_title: str,
        allowed: Iterable[str],
        spool: Path,
        min_free_bytes: int,
        also: Iterable[Path] = (),
    ) -> None:
        self.ae_title = ae_title.strip()
        self.spool = Path(spool)
        self.disks = (self.spool, *(Path(p) for p in also))
        self.min_free_bytes = min_free_bytes
        self._anywhere: set[str] = set()
        self._bound: dict[str, set[str]] = {}
        for entry in allowed:
            ae, _, address = entry.partition("@")
            if address:
                self._bound.setdefault(ae.strip(), set()).add(address.strip())
            else:
                self._anywhere.add(ae.strip())

    def check(self, calling_ae: str, address: str, called_ae: str) -> Refusal | None:
        """Return why an association request must be refused, or None to accept it."""
        if called_ae.strip() != self.ae_title:
            return Refusal("called AE title not recognised", REJECT_UNKNOWN_CALLED_AE)
        ae = calling_ae.strip()
        if ae not in self._anywhere and not self._bound_to(ae, address):
            reason = (
                f"calling AE title not allowed from {address}"
                if ae in self._bound
                else "calling AE title not allowed"
            )
            return Refusal(reason, REJECT_UNKNOWN_CALLING_AE)
        if not self.has_room():
            return Refusal("spool disk nearly full", REJECT_LOCAL_LIMIT)
        return None

    def _bound_to(self, ae: str, address: str) -> bool:
        """Whether ``ae`` is allowed from ``address``: one of its addresses, or an address its
        host names resolve to now (a PACS's address may change; its name stays)."""
        hosts = self._bound.get(ae, set())
        if address in hosts:
            return True
        return any(address in _resolve(host) for host in hosts if not _is_address(host))

    def has_room(self) -> bool:
        """Whether the spool's file system, and those of the other folders, have more than
        the reserve free."""
        return has_room(self.disks, self.min_free_bytes)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str) -> set[str]:
    """The addresses ``host`` names; none when it does not resolve."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return set()
