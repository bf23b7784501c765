"""MLLP (HL7 minimal lower layer protocol) server: frames in, ACK frames out.

A frame is ``<VT> payload <FS><CR>`` (0x0B ... 0x1C 0x0D). The server knows framing and
sockets only; what a frame means and what to answer is the handler's (``HL7Feed``), the way
pynetdicom leaves C-STORE to its event handlers. One thread per connection; a connection
survives bad messages, and a frame larger than ``max_frame_bytes`` is drained and answered
without being held in memory. At most ``max_connections`` connections are served at once
(each may buffer up to one frame), and at most ``max_connections_per_peer`` from one address:
a connection beyond them is closed at once, so memory stays bounded and one peer cannot take
every slot.

Two clocks close a connection, and neither is reset by a trickle of bytes: a frame must end
within ``frame_timeout_s`` of its first byte, and a connection that completes no frame for
``idle_timeout_s`` (bytes between frames do not count) is idle. What the server refuses at the
connection level (over a cap, a failed TLS handshake, an unterminated frame) goes to the
``on_refused`` callback, e.g. ``RefusalAudit.record``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from storage.actions import Action

log = logging.getLogger(__name__)

SB = b"\x0b"  # start block (VT)
EB = b"\x1c"  # end block (FS)
CR = b"\x0d"
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 32
# Peer addresses named in a "connection limit reached" event (the largest holders).
MAX_NAMED_HOLDERS = 10
_HEAD_BYTES = 4096  # kept of an oversized frame, enough for its MSH

Peer = tuple[str, int]
# (action, peer address, detail) of a refused connection or frame.
RefusalCallback = Callable[[str, str, dict[str, Any]], Any]


class FrameHandler(Protocol):
    """What the server calls; both methods return the ACK payload and must not raise."""

    def handle_frame(self, payload: bytes, peer: Peer) -> bytes: ...

    def handle_oversized(self, head: bytes, size: int, peer: Peer) -> bytes: ...


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class OversizedFrame:
    head: bytes  # the first bytes, for the ACK's MSH echo
    size: int


class FrameReader:
    """Cuts a byte stream into frames; bytes outside frames (stray CR/LF) are ignored.

    Parameters
    ----------
    max_frame_bytes:
        Payloads longer than this are not buffered; they come out as ``OversizedFrame``.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._size = 0
        self._head = b""
        self.abandoned = 0  # frames restarted by a new start block before they ended
        self.started = 0  # frames begun (start blocks seen), ended or not

    @property
    def partial(self) -> int:
        """Bytes of an unfinished frame."""
        return self._size if self._in_frame else 0

    @property
    def in_frame(self) -> bool:
        """Whether a frame has begun and not ended."""
        return self._in_frame

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Add received bytes; return the frames they complete."""
        frames: list[Frame | OversizedFrame] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(SB, pos)
                if start < 0:
                    break
                self._start()
                pos = start + 1
                continue
            end = data.find(EB, pos)
            stop = len(data) if end < 0 else end
            restart = data.rfind(SB, pos, stop)
            if restart >= 0:
                # A sender that gives up on a frame and starts over: its first attempt is
                # not a message, and it will not wait for an ACK to it.
                self.abandoned += 1
                log.warning("MLLP frame of %d bytes abandoned by the sender", self._size)
                self._start()
                pos = restart + 1
                continue
            self._append(data[pos:stop])
            if end < 0:
                break
            frames.append(self._finish())
            pos = end + 1
        return frames

    def _start(self) -> None:
        self.started += 1
        self._in_frame = True
        self._buffer.clear()
        self._size = 0
        self._head = b""

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.max_frame_bytes:
            self._buffer += chunk
            return
        if not self._head:
            self._head = bytes((self._buffer + chunk)[:_HEAD_BYTES])
            self._buffer.clear()

    def _finish(self) -> Frame | OversizedFrame:
        self._in_frame = False
        if self._size > self.max_frame_bytes:
            return OversizedFrame(self._head, self._size)
        frame = Frame(bytes(self._buffer))
        self._buffer.clear()
        return frame


class MllpServer:
    """A threaded MLLP listener.

    Parameters
    ----------
    handler:
        Gets each frame and returns the ACK (e.g. ``HL7Feed``).
    host, port:
        Where to listen; port 0 picks a free port (see ``address``).
    max_frame_bytes:
        Largest message accepted (default 16 MiB).
    idle_timeout_s:
        A connection that completes no frame for this long is closed.
    frame_timeout_s:
        A frame not ended this long after its first byte is dropped (no ACK) with its
        connection.
    max_connections:
        Connections served at once; one more is closed as soon as it is accepted.
    max_connections_per_peer:
        Connections served at once from one address (default: ``max_connections``).
    ssl_context:
        When given, every connection is TLS (MLLP over TLS); the handshake happens on the
        connection's own thread, so a slow or failing peer never blocks the listener.
    handshake_timeout_s:
        How long a TLS handshake may take.
    on_refused:
        Called with (action, address, detail) for ``hl7.connection_refused`` (over a cap),
        ``hl7.tls_failed`` and ``hl7.frame_unterminated``; must not raise.
    """

    def __init__(
        self,
        handler: FrameHandler,
        host: str = "0.0.0.0",
        port: int = 2575,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout_s: float = 300.0,
        frame_timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_peer: int | None = None,
        on_refused: RefusalCallback | None = None,
    ) -> None:
        per_peer = max_connections if max_connections_per_peer is None else max_connections_per_peer
        if not 1 <= per_peer <= max_connections:
            raise ValueError("need 1 <= max_connections_per_peer <= max_connections")
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_peer = per_peer
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.on_refused = on_refused or (lambda action, address, detail: None)
        self._server = _ThreadingServer((host, port), _Connection, self)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how soon stop() is noticed
            name="mllp-listener",
            daemon=True,
        )
        self._thread.start()
        log.info("MLLP listening on %s:%d", *self.address)

    def stop(self) -> None:
        """Stop accepting, let each connection finish the message in hand, close everything."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()  # joins the connection threads

    def __enter__(self) -> MllpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ThreadingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False  # stop() joins them: no message is cut off mid-transaction
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler_class: type, owner: MllpServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._active = 0  # connections accepted and not yet finished
        self._per_peer: Counter[str] = Counter()
        super().__init__(address, handler_class)

    def process_request(self, request, client_address) -> None:
        address = str(client_address[0])
        with self._lock:
            refusal = self._refusal(address)
            if refusal is None:
                self._active += 1
                self._per_peer[address] += 1
        if refusal is not None:
            log.warning("MLLP connection from %s refused: %s", address, refusal["reason"])
            self.shutdown_request(request)
            self.owner.on_refused(Action.HL7_CONNECTION_REFUSED, address, refusal)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._finished(address)
            raise

    def _refusal(self, address: str) -> dict[str, Any] | None:
        owner = self.owner
        if self._active >= owner.max_connections:
            return {
                "reason": "connection limit reached",
                "limit": owner.max_connections,
                "holders": self._holders(),
            }
        if self._per_peer[address] >= owner.max_connections_per_peer:
            return {
                "reason": "per-peer connection limit reached",
                "limit": owner.max_connections_per_peer,
            }
        return None

    def _holders(self) -> list[dict[str, Any]]:
        """Who holds the connections (under the lock): each peer address with its open
        connections, the largest first, at most ``MAX_NAMED_HOLDERS`` of them."""
        return [
            {"address": address, "connections": count}
            for address, count in self._per_peer.most_common(MAX_NAMED_HOLDERS)
        ]

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._finished(str(client_address[0]))

    def _finished(self, address: str) -> None:
        with self._lock:
            self._active -= 1
            self._per_peer[address] -= 1
            if self._per_peer[address] <= 0:
                del self._per_peer[address]

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(sock)

    def close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            # Reading side only: a connection busy with a message still sends its ACK.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)


class _Connection(socketserver.BaseRequestHandler):
    server: _ThreadingServer

    def handle(self) -> None:
        owner = self.server.owner
        sock: socket.socket = self.request
        peer: Peer = (str(self.client_address[0]), int(self.client_address[1]))
        reader = FrameReader(owner.max_frame_bytes)
        if owner.ssl_context is not None:
            sock.settimeout(owner.handshake_timeout_s)
            try:
                sock = owner.ssl_context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.warning("TLS handshake with %s failed: %s", peer[0], exc)
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)[:200]
                owner.on_refused(Action.HL7_TLS_FAILED, peer[0], {"reason": reason})
                return
        self.server.track(sock, True)
        log.debug("MLLP connection from %s:%d", *peer)
        try:
            self._serve(sock, peer, reader)
        finally:
            self.server.track(sock, False)
            if reader.partial:
                log.warning(
                    "connection from %s closed inside a frame (%d bytes)", peer[0], reader.partial
                )

    def _serve(self, sock: socket.socket, peer: Peer, reader: FrameReader) -> None:
        owner = self.server.owner
        clock = _Deadlines(owner.idle_timeout_s, owner.frame_timeout_s)
        while True:
            timeout = clock.remaining(reader.in_frame)
            if timeout <= 0:
                self._give_up(peer, reader, clock)
                return
            sock.settimeout(timeout)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue  # the loop decides which deadline passed
            except OSError:
                return
            if not data:
                if reader.in_frame:
                    self._unterminated(peer, reader, "connection closed inside the frame")
                return
            started = reader.started
            frames = reader.feed(data)
            clock.fed(frames_ended=len(frames), frame_begun=reader.started != started)
            for frame in frames:
                if not self._answer(sock, peer, frame, owner.handler):
                    return

    def _give_up(self, peer: Peer, reader: FrameReader, clock: _Deadlines) -> None:
        if reader.in_frame:
            reason = f"frame not ended within {clock.frame_timeout_s:g} s of its first byte"
            self._unterminated(peer, reader, reason)
        else:
            log.info("closing idle MLLP connection from %s:%d", *peer)

    def _unterminated(self, peer: Peer, reader: FrameReader, reason: str) -> None:
        log.warning("MLLP frame from %s dropped: %s (%d bytes)", peer[0], reason, reader.partial)
        detail = {"reason": reason, "bytes": reader.partial, "peer_port": peer[1]}
        self.server.owner.on_refused(Action.HL7_FRAME_UNTERMINATED, peer[0], detail)

    @staticmethod
    def _answer(
        sock: socket.socket, peer: Peer, frame: Frame | OversizedFrame, handler: FrameHandler
    ) -> bool:
        """Hand a frame to the handler and send its ACK; False when the peer is gone."""
        if isinstance(frame, Frame):
            ack = handler.handle_frame(frame.payload, peer)
        else:
            ack = handler.handle_oversized(frame.head, frame.size, peer)
        try:
            sock.sendall(SB + ack + EB + CR)
        except OSError as exc:
            log.warning("could not send ACK to %s: %s", peer[0], exc)
            return False
        return True


class _Deadlines:
    """The two clocks of a connection: since the last completed frame (idle), and since the
    first byte of the frame in progress. Bytes that end nothing move neither."""

    def __init__(self, idle_timeout_s: float, frame_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self._last_frame = self._frame_began = time.monotonic()

    def fed(self, frames_ended: int, frame_begun: bool) -> None:
        now = time.monotonic()
        if frames_ended:
            self._last_frame = now
        if frame_begun:
            self._frame_began = now

    def remaining(self, in_frame: bool) -> float:
        """Seconds until the connection must be closed."""
        if in_frame:
            deadline = self._frame_began + self.frame_timeout_s
        else:
            deadline = self._last_frame + self.idle_timeout_s
        return deadline - time.monotonic()
