"""adyton-steer's Alembic revisions (version table ``alembic_version_steer``)
in the kernel's database."""

from pathlib import Path

VERSIONS = Path(__file__).parent
VERSION_TABLE = "alembic_version_steer"
