"""Report messages for end-to-end tests, built around real IU X-ray report text.

The pairing of an IU X-ray report with an RSNA/NIH image is artificial: no staged dataset has
images and reports of the same study. Tests that use these say so.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest


def iu_reports(shared_data: Path, n: int = 5) -> list[dict[str, str]]:
    """The first ``n`` IU X-ray reports that have both findings and impression."""
    path = shared_data / "iu-xray-openi-reports" / "indiana_reports.csv"
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["findings"].strip() and row["impression"].strip():
                rows.append(row)
            if len(rows) == n:
                break
    return rows


def oru(
    *,
    control_id: str,
    patient_id: str,
    accession: str,
    findings: str,
    impression: str,
    status: str = "F",
) -> bytes:
    """An HL7 v2.5.1 ORU^R01 radiology report, one OBX per section, CR segment ends."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|RIS|HOSP|CXRNODE|HOSP|{now}||ORU^R01|{control_id}|P|2.5.1||||||UNICODE UTF-8",
        f"PID|1||{patient_id}^^^HOSP^MR||TEST^PATIENT",
        _segment(
            "OBR",
            {
                1: "1",
                3: accession,
                4: "71046^XR CHEST 2 VIEWS^CPT",
                7: now,
                18: accession,
                22: now,
                24: "CR",
                25: status,
            },
        ),
        f"OBX|1|TX|FINDINGS^Findings||{_escape(findings)}||||||{status}",
        f"OBX|2|TX|IMPRESSION^Impression||{_escape(impression)}||||||{status}",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from its fields by number (HL7 field numbers start at 1 after the name)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def mllp_send(message: bytes, port: int, workdir: Path) -> str:
    """Send one message with the ``mllp_send`` client of the ``hl7`` package; return the ACK
    code (MSA-1) it printed."""
    client = shutil.which("mllp_send") or str(Path(sys.executable).parent / "mllp_send")
    if not Path(client).exists():
        pytest.skip("mllp_send (from the hl7 package) not installed")
    path = workdir / "message.hl7"
    path.write_bytes(b"\x0b" + message + b"\x1c\r")  # MLLP framing, as the client expects
    out = subprocess.run(
        [client, "--port", str(port), "--file", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    for segment in out.stdout.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment.split(b"|")[1].decode()
    raise AssertionError(f"no MSA in the ACK: {out.stdout!r}")
