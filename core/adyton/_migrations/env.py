"""Alembic environment of ``adyton.Database.upgrade``: runs one plugin's
revisions on the connection (and in the transaction) the caller opened,
recording them in that plugin's own version table."""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
