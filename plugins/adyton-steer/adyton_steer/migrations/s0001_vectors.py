"""Steering vectors: metadata and the llama.cpp control-vector GGUF itself.

Revision ID: s0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "steer_vectors",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("shared", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("details", sa.Text, nullable=False, server_default="{}"),  # JSON
        sa.Column("gguf", sa.LargeBinary, nullable=False),  # the control-vector file, byte for byte
    )
    op.create_index("steer_vectors_owner", "steer_vectors", ["owner", "created"])


def downgrade() -> None:
    op.drop_table("steer_vectors")
