"""Fixtures for the feed tests: a real SQLite file, a real MLLP server on loopback, and two
real clients: the ``mllp_send`` command of the ``hl7`` package and a raw socket."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.feeds.hl7feed import HL7Feed
from node.feeds.mllp import CR, EB, SB, MllpServer
from storage import audit
from storage.database import Database
from tests.support.model_input import ris_log_messages

MLLP_SEND = Path(sys.executable).parent / "mllp_send"
TEST_MAX_FRAME = 256 * 1024  # small, so the oversize test sends little


@dataclass(frozen=True)
class Ack:
    """An ACK as the sender sees it."""

    raw: bytes
    code: str  # MSA-1
    acked_id: str  # MSA-2
    msh: list[str]
    msa: list[str]
    err: list[str] | None

    @classmethod
    def parse(cls, raw: bytes) -> Ack:
        segments = {s[:3]: s.split("|") for s in raw.decode("latin-1").split("\r") if s}
        msa = segments["MSA"]
        acked_id = msa[2] if len(msa) > 2 else ""
        return cls(raw, msa[1], acked_id, segments["MSH"], msa, segments.get("ERR"))

    @property
    def error_code(self) -> str | None:
        """ERR-3 (v2.5+), or the code inside ERR-1 (segment^seq^field^code&text, v2.3/2.4)."""
        if not self.err:
            return None
        if len(self.err) > 3:
            return self.err[3].split("^")[0]
        return self.err[1].split("^")[3].split("&")[0]

    @property
    def user_message(self) -> str:
        """ERR-8 (v2.5+) or MSA-3."""
        if self.err and len(self.err) > 8:
            return self.err[8]
        return self.msa[3] if len(self.msa) > 3 else ""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def hl7_server(db: Database) -> Iterator[MllpServer]:
    server = MllpServer(
        HL7Feed(db), "127.0.0.1", 0, max_frame_bytes=TEST_MAX_FRAME, idle_timeout_s=30
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mllp_send(tmp_path: Path):
    """Send payloads with the ``mllp_send`` command line client, one connection for all.

    The payloads are written MLLP-framed to a file, byte for byte, so what the server gets is
    exactly the bytes of the source file (BOM, LF or CRLF included).
    """
    if not MLLP_SEND.exists():
        pytest.skip(f"{MLLP_SEND} not installed (pip install hl7)")
    batches = iter(range(1_000_000))

    def send(server: MllpServer, payloads: list[bytes], loose: bool = False) -> list[Ack]:
        path = tmp_path / f"batch{next(batches)}.{'hl7' if loose else 'mllp'}"
        if loose:
            path.write_bytes(b"".join(payloads))
        else:
            path.write_bytes(b"".join(SB + p + EB + CR for p in payloads))
        command = [str(MLLP_SEND), "--port", str(server.address[1]), "--file", str(path)]
        done = subprocess.run(
            [*command, *(["--loose"] if loose else []), "127.0.0.1"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return [Ack.parse(a) for a in re.findall(rb"\x0b(.*?)\x1c\r", done.stdout, re.S)]

    return send


class RawClient:
    """A hand-written MLLP peer, for what ``mllp_send`` cannot send (partial frames, junk)."""

    def __init__(self, server: MllpServer) -> None:
        self.sock = socket.create_connection(server.address, timeout=30)
        self._pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> Ack:
        while EB + CR not in self._pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._pending += chunk
        frame, _, self._pending = self._pending.partition(EB + CR)
        assert frame.startswith(SB)
        return Ack.parse(frame[1:])

    def exchange(self, payload: bytes) -> Ack:
        self.send(SB + payload + EB + CR)
        return self.read_ack()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator:
    """Open raw connections to a server; they are closed at teardown."""
    clients: list[RawClient] = []

    def open_client(server: MllpServer) -> RawClient:
        clients.append(RawClient(server))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def raw_client(hl7_server: MllpServer, connect) -> RawClient:
    return connect(hl7_server)


def audit_actions(db: Database) -> list[dict]:
    with db.transaction() as session:
        events = audit.query(session, audit.AuditFilter(limit=None))
        return [audit.as_dict(e) for e in events]


@pytest.fixture
def audited(db: Database):
    """The audit log so far, as dicts, oldest first."""
    return lambda: audit_actions(db)


@pytest.fixture(scope="session")
def washu_logs(shared_data: Path) -> list[tuple[Path, list[bytes]]]:
    root = shared_data / "hl7-washu-scout-ris-logs"
    return [(p, ris_log_messages(p.read_bytes())) for p in sorted(root.rglob("*.log"))]
