"""Stored Responses API responses (``previous_response_id``, GET/DELETE
/v1/responses/{id}), one row each, shared by every server on the database.

Revision ID: o0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "o0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "openai_responses",
        sa.Column("id", sa.String(200), primary_key=True),  # "resp_..."
        sa.Column("owner", sa.Text, nullable=False),  # the principal's id
        sa.Column("created", sa.BigInteger, nullable=False),  # unix seconds (expiry)
        sa.Column("used", sa.BigInteger, nullable=False),  # unix nanoseconds of the last use (eviction)
        sa.Column("size", sa.BigInteger, nullable=False),  # characters of history + response
        sa.Column("history", sa.Text, nullable=False),  # the conversation's turns, JSON
        sa.Column("response", sa.Text, nullable=False),  # the response object as returned, JSON
    )
    op.create_index("openai_responses_owner_used", "openai_responses", ["owner", "used"])
    op.create_index("openai_responses_created", "openai_responses", ["created"])


def downgrade() -> None:
    op.drop_table("openai_responses")
