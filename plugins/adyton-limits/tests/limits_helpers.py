"""Helpers shared by the adyton-limits tests (a uniquely named module, so
it never collides with another test directory's conftest)."""

from __future__ import annotations

from datetime import UTC, datetime

from adyton_limits import service_for

#: ``@pytest.mark.parametrize("db_url", DATABASES, indirect=True)``: the
#: test runs on the default (SQLite) database and on a real PostgreSQL one
DATABASES = ["default", "postgresql"]

BIG = {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000, "requests_per_day": 1_000_000,
       "tokens_per_day": 1_000_000_000, "concurrent_requests": 1000}


def tier(**over):
    return {**BIG, **over}


class FakeClock:
    """Injectable clock: starts at a fixed UTC time; ``advance(s)``, ``set(...)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = (start or datetime(2025, 3, 10, 12, 0, 5, tzinfo=UTC)).timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, when: datetime) -> None:
        self.t = when.timestamp()


def service(app):
    return service_for(app.extensions["adyton"])


def new_account(app, tier_n=1, name=""):
    """Create an account through the app's store (works before or after start)."""
    svc = service(app)
    svc.open_store()
    return svc.store.create_account(tier_n, name)


def body(text="hi there", **kw):
    return {"messages": [{"role": "user", "content": text}], **kw}


