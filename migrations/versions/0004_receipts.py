"""receipts: every arrival of an instance, not only the last

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("association_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["association_id"],
            ["associations.id"],
            name=op.f("fk_receipts_association_id_associations"),
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_receipts_instance_id_instances")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipts")),
    )
    op.create_index(op.f("ix_receipts_instance_id"), "receipts", ["instance_id"])
    op.create_index(op.f("ix_receipts_association_id"), "receipts", ["association_id"])
    # What was known so far: one (the last) arrival per instance.
    op.execute(
        "INSERT INTO receipts (instance_id, association_id, received_at, size_bytes, duplicate) "
        "SELECT id, association_id, received_at, size_bytes, false FROM instances"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_receipts_association_id"), table_name="receipts")
    op.drop_index(op.f("ix_receipts_instance_id"), table_name="receipts")
    op.drop_table("receipts")
