"""confidence: each image's distance to the model's training data, and whether an image's
or a study's result is low confidence (models.familiarity)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image_results") as batch:
        batch.add_column(sa.Column("novelty", sa.Float(), nullable=True))
        batch.add_column(sa.Column("low_confidence", sa.Boolean(), nullable=True))
    with op.batch_alter_table("study_results") as batch:
        batch.add_column(sa.Column("low_confidence", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study_results") as batch:
        batch.drop_column("low_confidence")
    with op.batch_alter_table("image_results") as batch:
        batch.drop_column("low_confidence")
        batch.drop_column("novelty")
