"""Studies keep the patient's name, issuer of the Patient ID and birth date of their first
instance stating each, so an instance of another patient under the same Study UID is refused.

Revision ID: 0004_study_patient_identity
Revises: 0003_study_completed_at
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_study_patient_identity"
down_revision = "0003_study_completed_at"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("patient_name", 200),
    ("issuer_of_patient_id", 64),
    ("patient_birth_date", 16),
)


def upgrade() -> None:
    for name, length in _COLUMNS:
        op.add_column("studies", sa.Column(name, sa.String(length), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for name, _ in _COLUMNS:
            batch.drop_column(name)
