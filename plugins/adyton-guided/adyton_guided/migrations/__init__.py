"""adyton-guided's Alembic revisions (version table ``alembic_version_guided``)
in the kernel's database."""

from pathlib import Path

VERSIONS = Path(__file__).parent
VERSION_TABLE = "alembic_version_guided"
