"""results say their band and operating point: flagged / indeterminate / not flagged, and
which thresholds decided (model card, site calibration, settings)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows before this revision were decided by CXR_THRESHOLD_* alone (0.5 by default).
    with op.batch_alter_table("study_results") as batch:
        batch.add_column(
            sa.Column("operating_point", sa.String(200), nullable=False, server_default="settings")
        )
        batch.add_column(sa.Column("band", sa.String(16), nullable=False, server_default=""))
    with op.batch_alter_table("image_results") as batch:
        batch.add_column(sa.Column("band", sa.String(16), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("image_results") as batch:
        batch.drop_column("band")
    with op.batch_alter_table("study_results") as batch:
        batch.drop_column("band")
        batch.drop_column("operating_point")
