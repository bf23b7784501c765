"""The whole WashU RIS log corpus (900 generated radiology ORUs plus its deliberate junk)
through ``mllp_send`` on one connection.

The expected ACK of each message is derived from its bytes, independently of the parser:
no MSH at the start -> AR; an ORU without any OBX -> AE (no report text); a control id seen
before -> AA, not stored again; anything else -> AA, stored.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from storage.schema import Report


def expected_ack(payload: bytes, seen: set[bytes]) -> str:
    if not payload.startswith(b"MSH|"):
        return "AR"
    if b"\rOBX|" not in payload:
        return "AE"
    control_id = payload.split(b"\r", 1)[0].split(b"|")[9]
    if control_id in seen:
        return "AA (duplicate)"
    seen.add(control_id)
    return "AA"


def test_washu_corpus_acks_rows_and_audit(hl7_server, mllp_send, washu_logs, db, audited, capsys):
    payloads = [m for _, messages in washu_logs for m in messages]
    frameless = [p.name for p, messages in washu_logs if not messages]
    seen: set[bytes] = set()
    expected = [expected_ack(p, seen) for p in payloads]

    acks = mllp_send(hl7_server, payloads)  # one connection for all 903 frames

    assert len(acks) == len(payloads), "the connection did not survive the bad messages"
    assert [a.code for a in acks] == [e.split()[0] for e in expected]
    counts = Counter(expected)
    # 780 log files; 20240102.log holds only "Bad file" and no frame at all.
    assert (len(washu_logs), frameless, len(payloads)) == (780, ["20240102.log"], 903)
    assert counts == {"AA": 849, "AA (duplicate)": 1, "AE": 50, "AR": 3}

    with db.transaction() as session:
        stored = session.scalars(select(Report)).all()
        accepted = {a.acked_id for a in acks if a.code == "AA"}
        assert {r.message_id for r in stored} == accepted and len(stored) == 849
        latin = [r for r in stored if "±60%÷" in r.text]
        assert len(latin) == 2  # extraction/20250814.log and postgres/2010/20101010.log
    actions = Counter(e["action"] for e in audited())
    assert actions == {
        "hl7.received": 849,
        "hl7.duplicate": 1,
        "hl7.unusable": 50,
        "hl7.rejected": 3,
    }
    reasons = Counter(
        e["detail"]["reason"] for e in audited() if e["action"] in ("hl7.unusable", "hl7.rejected")
    )
    with capsys.disabled():
        print(
            f"\nWashU RIS corpus: {len(washu_logs)} log files, {len(payloads)} frames "
            f"(+{len(frameless)} file without any frame: {', '.join(frameless)})\n"
            f"  AA stored      {counts['AA']}\n"
            f"  AA duplicate   {counts['AA (duplicate)']}  (same MSH-10 twice in 20071021.log)\n"
            f"  AE unusable    {counts['AE']}\n"
            f"  AR rejected    {counts['AR']}"
        )
        for reason, n in reasons.most_common():
            print(f"    {n:4d} x {reason}")
