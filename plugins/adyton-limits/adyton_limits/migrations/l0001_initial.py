"""adyton-limits' tables as the raw-sqlite3 releases made them.

A database those releases wrote (``$ADYTON_HOME/limits/accounts.sqlite3``)
already has them: each table and index is created only when it is missing,
so that file is adopted as it is — nothing copied, nothing lost — and this
revision is recorded in ``alembic_version_limits``.

Revision ID: l0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "l0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = set(inspector.get_table_names())
    if "accounts" not in have:
        op.create_table(
            "accounts",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, nullable=False, server_default=""),
            sa.Column("number_hash", sa.Text, nullable=False, unique=True),
            sa.Column("number_last4", sa.Text, nullable=False),
            sa.Column("tier", sa.Integer, nullable=False),
            sa.Column("enabled", sa.Integer, nullable=False, server_default="1"),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("tier_changed_at", sa.Float, nullable=False),
        )
    if "api_keys" not in have:
        op.create_table(
            "api_keys",
            sa.Column("hash", sa.Text, primary_key=True),
            sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("prefix", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("revoked_at", sa.Float, nullable=True),
        )
        op.create_index("api_keys_account", "api_keys", ["account_id"])
    if "ledger" not in have:
        op.create_table(
            "ledger",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("account_id", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
            sa.Column("completion_tokens", sa.BigInteger, nullable=False),
            sa.Column("reserved_tokens", sa.BigInteger, nullable=False),
            sa.Column("outcome", sa.Text, nullable=False),
            sa.Column("wire_format", sa.Text, nullable=False, server_default=""),
            sa.Column("started_at", sa.Float, nullable=False),
            sa.Column("finished_at", sa.Float, nullable=False),
            sa.Column("day", sa.Text, nullable=False),
            sqlite_autoincrement=True,
        )
        op.create_index("ledger_account_time", "ledger", ["account_id", "finished_at"])
    if "usage_daily" not in have:
        op.create_table(
            "usage_daily",
            sa.Column("account_id", sa.Text, primary_key=True),
            sa.Column("day", sa.Text, primary_key=True),
            sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        )
    if "tier_changes" not in have:
        op.create_table(
            "tier_changes",
            sa.Column("account_id", sa.Text, nullable=False),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("old_tier", sa.Integer, nullable=False),
            sa.Column("new_tier", sa.Integer, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
        )


def downgrade() -> None:
    for table in ("tier_changes", "usage_daily", "ledger", "api_keys", "accounts"):
        op.drop_table(table)
