"""Audit hash chain (seq, previous hash, row hash, chain head), admin user actor, job claimer.

Events already in the log are sealed here, oldest first, so an upgraded node's chain covers its
whole history.

Revision ID: 0002_audit_chain
Revises: 0001_initial
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.audit_chain import GENESIS, HEAD_ID, SEALED_FIELDS, row_hash
from storage.schema import utcnow

revision = "0002_audit_chain"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

_events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer),
    sa.column("time", sa.DateTime(timezone=True)),
    sa.column("detail", sa.JSON),
    sa.column("chain_seq", sa.BigInteger),
    sa.column("prev_hash", sa.String),
    sa.column("row_hash", sa.String),
    *(sa.column(name, sa.String) for name in SEALED_FIELDS if name not in ("time", "detail")),
)


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("actor_user", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("chain_seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("row_hash", sa.String(length=64), nullable=True))
    op.create_index("ux_audit_chain_seq", "audit_events", ["chain_seq"], unique=True)
    op.create_index("ix_audit_events_patient_id", "audit_events", ["patient_id"])
    op.add_column("jobs", sa.Column("claimed_by", sa.String(length=64), nullable=True))
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    seq, prev = _seal_existing_events(op.get_bind())
    op.bulk_insert(
        head, [{"id": HEAD_ID, "last_seq": seq, "last_hash": prev, "updated_at": utcnow()}]
    )


def _seal_existing_events(bind) -> tuple[int, str]:
    seq, prev = 0, GENESIS
    rows = bind.execute(sa.select(_events).order_by(_events.c.id)).mappings().all()
    for row in rows:
        seq += 1
        digest = row_hash(row, seq, prev)
        bind.execute(
            _events.update()
            .where(_events.c.id == row["id"])
            .values(chain_seq=seq, prev_hash=prev, row_hash=digest)
        )
        prev = digest
    return seq, prev


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_by")
    op.drop_index("ix_audit_events_patient_id", table_name="audit_events")
    op.drop_index("ux_audit_chain_seq", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        for name in ("row_hash", "prev_hash", "chain_seq", "actor_user"):
            batch.drop_column(name)
