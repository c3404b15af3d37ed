"""image check: image_results.refusal (why an image was not classified)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refusal", sa.Text(), nullable=True))
    # Model 2.0 renamed the third class: viral_pneumonia is now part of "pneumonia".
    op.execute("UPDATE image_results SET label = 'pneumonia' WHERE label = 'viral_pneumonia'")
    op.execute("UPDATE study_results SET label = 'pneumonia' WHERE label = 'viral_pneumonia'")


def downgrade() -> None:
    with op.batch_alter_table("image_results", schema=None) as batch_op:
        batch_op.drop_column("refusal")
