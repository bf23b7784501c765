"""Each processed image's embedding, per run, for finding similar earlier cases.

Revision ID: 0006_embeddings
Revises: 0005_job_retry_and_result_purge
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_embeddings"
down_revision = "0005_job_retry_and_result_purge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "sop_uid"),
    )
    op.create_index("ix_embeddings_model_id", "embeddings", ["model_id"])
    op.create_index("ix_embeddings_study_id", "embeddings", ["study_id"])


def downgrade() -> None:
    op.drop_table("embeddings")
