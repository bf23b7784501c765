"""How the storage SCP takes connections: no peer may hold the door or every slot.

pynetdicom's server runs the TLS handshake in its accept loop on a socket without a timeout,
and its acceptor sockets have no timeout either: one silent TCP connection to a TLS port froze
the listener, and ten connections that sent half an A-ASSOCIATE-RQ held all ten association
slots for good. Here each accepted connection goes through ``ConnectionGuard`` first, on the
connection's own thread:

- a peer address with ``max_per_peer`` connections open (handshaking or associated) is refused:
  plain DICOM gets an A-ASSOCIATE-RJ "local limit exceeded" (transient), a TLS connection is
  closed before its handshake;
- the TLS handshake must finish within ``handshake_timeout_s``;
- every read waits at most ``network_timeout_s``, and the A-ASSOCIATE-RQ must be complete
  within ``acse_timeout_s`` of the connection (PS3.8 ARTIM), however slowly its bytes trickle;
- every PDU, before and after association, must be complete within ``pdu_timeout_s`` of its
  first byte: a P-DATA-TF trickled a byte per network timeout held its slot for hours;
- a PDU whose header declares more than the node accepts (``max_pdu_bytes``, the maximum
  length the node announces, for a P-DATA-TF; ``ASSOCIATION_PDU_MAX_BYTES`` for any other) is
  answered A-ABORT before its body is read: pynetdicom reads what a header declares, up to
  4 GiB, into memory;
- every DIMSE message must be complete within ``message_timeout_s`` of its first fragment:
  small complete PDUs carrying fragments that never end held a slot as long as they came
  within the network timeout of each other.

Refusals, failed handshakes, overdue PDUs and messages and oversized PDUs are audited against
the peer, once per peer and window (``RefusalAudit``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node.dicom.admission import REJECT_LOCAL_LIMIT
from node.refusals import RefusalAudit
from storage.actions import Action

log = logging.getLogger(__name__)

_DRAIN_S = 2.0  # how long a refused peer gets to read the A-ASSOCIATE-RJ and close
_DRAIN_BYTES = 64 * 1024
_REAPER_TICK_S = 0.1
# Discarded deadlines stay in the heap until due; past this many more than the live ones, the
# heap is rebuilt (one entry is pushed per PDU read).
_COMPACT_SLACK = 1024
# The largest PDU other than a P-DATA-TF the node reads (an A-ASSOCIATE-RQ: 128 presentation
# contexts of a dozen transfer syntaxes each, user identity included, fit several times over).
ASSOCIATION_PDU_MAX_BYTES = 256 * 1024
P_DATA_TF = 0x04
_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
# A-ABORT from the service provider (2), "invalid PDU parameter value" (6): PS3.8 9.3.8.
_ABORT_SOURCE, _ABORT_INVALID_PARAMETER = 0x02, 0x06


class ConnectionGuard:
    """The connection policy of one storage SCP.

    Parameters
    ----------
    refusals:
        Where refused connections and failed handshakes are audited.
    max_per_peer:
        Connections one address may hold at once.
    acse_timeout_s, dimse_timeout_s, network_timeout_s:
        pynetdicom's timeouts; ``acse_timeout_s`` also bounds the time from connection to a
        complete A-ASSOCIATE-RQ, ``network_timeout_s`` every read on the socket.
    ssl_context:
        TLS for every connection, or None.
    handshake_timeout_s:
        How long a TLS handshake may take.
    pdu_timeout_s:
        How long a PDU may take from its first byte to its last.
    max_pdu_bytes:
        The largest P-DATA-TF variable field (the PDU length) the node reads: what it announces
        as its maximum length received.
    message_timeout_s:
        How long a DIMSE message may take from its first fragment to its last.
    """

    def __init__(
        self,
        refusals: RefusalAudit,
        *,
        max_per_peer: int,
        acse_timeout_s: float,
        dimse_timeout_s: float,
        network_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 10.0,
        pdu_timeout_s: float = 120.0,
        max_pdu_bytes: int = 4 * 1024 * 1024,
        message_timeout_s: float = 600.0,
    ) -> None:
        self.refusals = refusals
        self.max_per_peer = max_per_peer
        self.acse_timeout_s = acse_timeout_s
        self.dimse_timeout_s = dimse_timeout_s
        self.network_timeout_s = network_timeout_s
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.pdu_timeout_s = pdu_timeout_s
        self.max_pdu_bytes = max_pdu_bytes
        self.message_timeout_s = message_timeout_s
        self._opening: Counter[str] = Counter()  # connections not yet handed to pynetdicom
        self._lock = threading.Lock()
        self._deadlines = _Deadlines()
        self.server: ThreadedAssociationServer | None = None

    def start_server(
        self, ae: AE, address: tuple[str, int], handlers: list[Any]
    ) -> ThreadedAssociationServer:
        """Start ``ae``'s server on ``address`` in a thread, as ``AE.start_server`` does but
        with this guard in front of every connection (and pynetdicom's own TLS wrapping off)."""
        ae.acse_timeout = self.acse_timeout_s
        ae.dimse_timeout = self.dimse_timeout_s
        ae.network_timeout = self.network_timeout_s
        ae.maximum_pdu_size = self.max_pdu_bytes  # announced; larger P-DATA-TFs are refused
        guard = self

        class GuardedRequestHandler(RequestHandler):
            def handle(self) -> None:
                guard.handle(self)

        handlers = [
            *handlers,
            (evt.EVT_REQUESTED, self._requested),
            (evt.EVT_CONN_CLOSE, self._closed),
        ]
        server = ae.make_server(
            address,
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=GuardedRequestHandler,
        )
        # AE.start_server keeps its servers there; AssociationServer.shutdown removes itself.
        ae._servers.append(server)
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        thread = threading.Thread(
            target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True
        )
        thread.start()
        self._deadlines.start()
        self.server = server
        return server

    def stop(self) -> None:
        self._deadlines.stop()

    # Per connection, on its own thread ----------------------------------------------------

    def handle(self, handler: RequestHandler) -> None:
        """Admit, handshake and hand one accepted connection to pynetdicom."""
        address = str(handler.client_address[0])
        sock: socket.socket = handler.request
        held = self._enter(address)
        if held is not None:
            self._refuse(sock, address, held)
            return
        try:
            sock = self._handshake(sock, address)
            if sock is None:
                return
            sock.settimeout(self.network_timeout_s)  # no read waits forever
            handler.request = sock
            assoc = handler._create_association()
            self._time_pdus(assoc, sock, address)
            self._bound_pdu_sizes(assoc, sock, address)
            self._time_messages(assoc, sock)
            # ARTIM: the A-ASSOCIATE-RQ must be complete in time, or the socket is shut.
            self._deadlines.add(assoc, time.monotonic() + self.acse_timeout_s, sock)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": handler.client_address})
            assoc.start()
        finally:
            self._leave(address)

    def _enter(self, address: str) -> int | None:
        """Count a new connection of ``address``; None, or how many it already holds when it
        is at its cap."""
        with self._lock:
            held = self._opening[address] + self._associated(address)
            if held >= self.max_per_peer:
                return held
            self._opening[address] += 1
            return None

    def _leave(self, address: str) -> None:
        # After assoc.start(): the association is counted by its thread from now on.
        with self._lock:
            self._opening[address] -= 1
            if self._opening[address] <= 0:
                del self._opening[address]

    def _associated(self, address: str) -> int:
        if self.server is None:
            return 0
        return sum(
            1
            for assoc in self.server.active_associations
            if assoc.is_alive() and _peer_address(assoc) == address
        )

    def _handshake(self, sock: socket.socket, address: str) -> socket.socket | None:
        if self.ssl_context is None:
            return sock
        token = object()
        # settimeout bounds each read; the deadline bounds the whole handshake.
        sock.settimeout(self.handshake_timeout_s)
        self._deadlines.add(token, time.monotonic() + self.handshake_timeout_s, sock)
        try:
            return self.ssl_context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError) or self._deadlines.expired(token)
            reason = (
                f"no TLS handshake within {self.handshake_timeout_s:g} s"
                if timed_out
                else f"TLS handshake failed: {exc}"[:200]
            )
            log.warning("DICOM connection from %s: %s", address, reason)
            self.refusals.record(Action.ASSOCIATION_TLS_FAILED, address, {"reason": reason})
            _close(sock)
            return None
        finally:
            self._deadlines.discard(token)

    def _time_pdus(self, assoc: Any, sock: socket.socket, address: str) -> None:
        """Bound each PDU read of ``assoc`` by ``pdu_timeout_s``, from its first byte.

        pynetdicom's reactor calls ``dul._read_pdu_data`` once the socket is readable (the
        PDU's first byte is there) and it reads the whole PDU in that call, each ``recv``
        bounded only by the network timeout. The deadline shuts the socket when the PDU is
        overdue; the read then fails as for a closed connection, and the slot is freed.
        """
        dul = assoc.dul
        read_pdu = dul._read_pdu_data

        def read_pdu_in_time() -> None:
            self._deadlines.add(dul, time.monotonic() + self.pdu_timeout_s, sock)
            try:
                read_pdu()
            finally:
                overdue = self._deadlines.expired(dul)
                self._deadlines.discard(dul)
            if overdue:
                self._audit_overdue_pdu(dul.assoc, address)

        dul._read_pdu_data = read_pdu_in_time

    def _audit_overdue_pdu(self, assoc: Any, address: str) -> None:
        reason = f"PDU not complete within {self.pdu_timeout_s:g} s of its first byte"
        detail = {"reason": reason, "limit_s": self.pdu_timeout_s}
        self._audit_closed(Action.ASSOCIATION_PDU_TIMEOUT, assoc, address, detail)

    def _audit_closed(self, action: Action, assoc: Any, address: str, detail: dict) -> None:
        """Audit a connection the guard closed, once per peer and window."""
        if self.refusals.record(action, address, detail, actor_ae=_calling_ae(assoc)):
            log.warning("DICOM connection from %s closed: %s", address, detail["reason"])

    def pdu_limit(self, pdu_type: int) -> int:
        """The largest PDU length (the header's, without its 6 bytes) read of ``pdu_type``."""
        return self.max_pdu_bytes if pdu_type == P_DATA_TF else ASSOCIATION_PDU_MAX_BYTES

    def _bound_pdu_sizes(self, assoc: Any, sock: socket.socket, address: str) -> None:
        """Refuse a PDU whose header declares more than ``pdu_limit`` before its body is read.

        pynetdicom's ``dul._read_pdu_data`` reads a PDU as two ``recv`` calls on the
        association socket, the 6-byte header then the length it declares, and keeps all of
        it. The first ``recv`` of each PDU read is checked here; an oversized PDU is audited
        and answered A-ABORT, its socket shut, and pynetdicom is handed an empty header,
        which it takes for a closed connection (the association ends, its slot is freed).
        """
        dul = assoc.dul
        read_pdu = dul._read_pdu_data
        recv = dul.socket.recv
        header_next = False

        def recv_checked(nr_bytes: int) -> bytearray:
            nonlocal header_next
            data = recv(nr_bytes)
            if header_next:
                header_next = False
                if len(data) == 6:
                    pdu_type, length = data[0], int.from_bytes(data[2:6], "big")
                    if pdu_type in _PDU_NAMES and length > self.pdu_limit(pdu_type):
                        self._refuse_pdu(dul.assoc, sock, address, pdu_type, length)
                        return bytearray()
            return data

        def read_pdu_checked() -> None:
            nonlocal header_next
            header_next = True
            try:
                read_pdu()
            finally:
                header_next = False

        dul.socket.recv = recv_checked
        dul._read_pdu_data = read_pdu_checked

    def _refuse_pdu(
        self, assoc: Any, sock: socket.socket, address: str, pdu_type: int, length: int
    ) -> None:
        name, limit = _PDU_NAMES[pdu_type], self.pdu_limit(pdu_type)
        detail = {
            "reason": f"{name} of {length} bytes declared, more than the {limit} accepted",
            "pdu_type": name,
            "declared_bytes": length,
            "limit_bytes": limit,
        }
        # Audit first: once the peer reads the A-ABORT, the event must already be there.
        self._audit_closed(Action.ASSOCIATION_PDU_TOO_LARGE, assoc, address, detail)
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = _ABORT_SOURCE, _ABORT_INVALID_PARAMETER
        with contextlib.suppress(OSError):
            sock.sendall(abort.encode())
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the reaper's way, TLS or not

    def _time_messages(self, assoc: Any, sock: socket.socket) -> None:
        """Bound each DIMSE message of ``assoc`` by ``message_timeout_s``, from its first
        fragment to its last.

        pynetdicom's ``dimse.receive_primitive`` takes each P-DATA (one or more fragments) and
        keeps the message it assembles in ``dimse.message`` until its last fragment; each PDU
        is bounded by the PDU deadline and the time between them by the network timeout, but
        nothing bounded the message. The deadline shuts the socket; ``_closed`` audits it.
        """
        dimse = assoc.dimse
        receive = dimse.receive_primitive

        def receive_in_time(primitive: Any) -> None:
            started = dimse.message is None
            receive(primitive)
            if dimse.message is None:  # complete
                if not self._deadlines.expired(dimse):  # else audited when the socket closes
                    self._deadlines.discard(dimse)
            elif started:
                self._deadlines.add(dimse, time.monotonic() + self.message_timeout_s, sock)

        dimse.receive_primitive = receive_in_time

    def _refuse(self, sock: socket.socket, address: str, held: int) -> None:
        reason = f"peer holds {held} connections, the per-peer limit"
        log.warning("DICOM connection from %s refused: %s", address, reason)
        detail = {"reason": reason, "limit": self.max_per_peer}
        self.refusals.record(Action.ASSOCIATION_REJECTED, address, detail)
        if self.ssl_context is None:
            _send_local_limit_reject(sock)
        _close(sock)

    def _requested(self, event: evt.Event) -> None:
        self._deadlines.discard(event.assoc)  # its ARTIM deadline no longer applies

    def _closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        self._deadlines.discard(assoc)
        if self._deadlines.expired(assoc.dimse):
            reason = (
                f"DIMSE message not complete within {self.message_timeout_s:g} s "
                "of its first fragment"
            )
            detail = {"reason": reason, "limit_s": self.message_timeout_s}
            self._audit_closed(
                Action.ASSOCIATION_MESSAGE_TIMEOUT, assoc, _peer_address(assoc), detail
            )
        self._deadlines.discard(assoc.dimse)


class _Deadlines:
    """Shuts the sockets of connections that missed their deadline, from one thread.

    A blocked ``recv`` (pynetdicom's reactor, an SSL handshake) returns once its socket is
    shut down, and the connection ends through its ordinary error path. Only the socket is
    kept until the deadline, never the association: a finished one is not held in memory.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int]] = []  # (deadline, ticket)
        self._entries: dict[int, tuple[int, socket.socket]] = {}  # ticket: (key id, socket)
        self._tickets: dict[int, int] = {}  # key id: its pending ticket
        self._expired: set[int] = set()  # key ids whose deadline passed
        self._next_ticket = itertools.count()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="dicom-deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def add(self, key: object, deadline: float, sock: socket.socket) -> None:
        """Shut ``sock`` at ``deadline`` unless ``key`` is discarded first."""
        with self._lock:
            ticket = next(self._next_ticket)
            self._tickets[id(key)] = ticket
            self._expired.discard(id(key))  # an earlier object with the same id is gone
            self._entries[ticket] = (id(key), sock)
            heapq.heappush(self._due, (deadline, ticket))

    def discard(self, key: object) -> None:
        with self._lock:
            ticket = self._tickets.pop(id(key), None)
            if ticket is not None:
                self._entries.pop(ticket, None)
            self._expired.discard(id(key))
            if len(self._due) > 2 * len(self._entries) + _COMPACT_SLACK:
                self._due = [(due, t) for due, t in self._due if t in self._entries]
                heapq.heapify(self._due)

    def expired(self, key: object) -> bool:
        """Whether ``key``'s deadline passed (and its socket was shut)."""
        with self._lock:
            return id(key) in self._expired

    def _run(self) -> None:
        while not self._stopped.wait(_REAPER_TICK_S):
            for sock in self._take_due(time.monotonic()):
                # socket.socket.shutdown, not SSLSocket's: that one drops the TLS state that
                # the reading thread is still using.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _take_due(self, now: float) -> list[socket.socket]:
        due = []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, ticket = heapq.heappop(self._due)
                entry = self._entries.pop(ticket, None)
                if entry is None:  # discarded in time
                    continue
                key_id, sock = entry
                if self._tickets.get(key_id) == ticket:
                    del self._tickets[key_id]
                    self._expired.add(key_id)
                due.append(sock)
        return due


def _calling_ae(assoc: Any) -> str | None:
    try:
        return str(assoc.requestor.ae_title).strip() or None
    except (AttributeError, TypeError, ValueError):  # before the A-ASSOCIATE-RQ was read
        return None


def _peer_address(assoc: Any) -> str | None:
    try:
        return str(assoc.requestor.address)
    except ValueError:  # no address information yet
        return None


def _send_local_limit_reject(sock: socket.socket) -> None:
    """A-ASSOCIATE-RJ (transient, local limit exceeded), then wait for the peer to close: a
    socket closed with its request unread is reset, and the reset can overtake the reject."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = REJECT_LOCAL_LIMIT
    deadline = time.monotonic() + _DRAIN_S
    try:
        sock.settimeout(_DRAIN_S)
        sock.sendall(pdu.encode())
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < _DRAIN_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
