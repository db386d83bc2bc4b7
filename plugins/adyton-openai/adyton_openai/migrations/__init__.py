"""adyton-openai's Alembic revisions (version table ``alembic_version_openai``)
in the kernel's database, run at startup and by ``adyton db upgrade``."""

from pathlib import Path

VERSIONS = Path(__file__).parent
VERSION_TABLE = "alembic_version_openai"
