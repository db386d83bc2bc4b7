"""adyton-limits' Alembic revisions (version table ``alembic_version_limits``),
run by ``Database.upgrade`` at startup and by ``adyton db upgrade``."""

from pathlib import Path

VERSIONS = Path(__file__).parent
VERSION_TABLE = "alembic_version_limits"
