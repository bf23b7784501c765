"""Jobs record when they may be claimed again (a run deferred for a full disk) and when their
result files were purged (retention of results).

Revision ID: 0005_job_retry_and_result_purge
Revises: 0004_study_patient_identity
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_retry_and_result_purge"
down_revision = "0004_study_patient_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("results_purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_purged_at")
        batch.drop_column("not_before")
