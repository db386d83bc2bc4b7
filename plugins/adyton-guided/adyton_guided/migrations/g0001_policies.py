"""Saved Axionic policies (``POST /policies``), one row each.

Revision ID: g0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "g0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guided_policies",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("policy", sa.Text, nullable=False),  # the policy as JSON
    )
    op.create_index("guided_policies_owner", "guided_policies", ["owner", "created"])


def downgrade() -> None:
    op.drop_table("guided_policies")
