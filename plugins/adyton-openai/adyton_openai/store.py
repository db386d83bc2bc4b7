"""Stored responses of the Responses API, in the kernel's database.

``POST /v1/responses`` keeps each response it is asked to store (``store``,
default true) for ``previous_response_id`` and ``GET`` / ``DELETE
/v1/responses/{id}``: one row of ``openai_responses`` (adyton-openai's
Alembic revisions, version table ``alembic_version_openai``). Every server
on one database sees every response, so a conversation may go on through
any of them, and a restart loses nothing.

Per account (the principal's id): at most ``capacity`` responses holding at
most ``max_chars`` characters together (the JSON of their turns and of the
response object; a conversation's turns are counted in every response of
it, so a long chain is evicted sooner), least recently used out first; one
bigger than ``max_chars`` is not kept. A response older than ``ttl_s`` is
gone (rows are purged as new ones are written). Another account's id is
"not found", like an unknown, evicted, expired or unstored one.

One SQLAlchemy Core code path for SQLite and PostgreSQL. Calls block: run
them off the event loop (``kernel.offload``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from adyton import ChatMessage, Database, NotFound

__all__ = ["MAX_STORED", "MAX_STORED_CHARS", "TTL_S", "ResponseStore", "Stored"]

#: responses kept per account (least recently used out first) ...
MAX_STORED = 1024
#: ... and the characters they may hold together
MAX_STORED_CHARS = 32 * 2**20
#: how long a response is kept (OpenAI keeps them 30 days)
TTL_S = 30 * 86400.0

#: ids deleted per statement (SQLite's bound-parameter limit is 999 on old builds)
_CHUNK = 500

_responses = sa.Table(
    "openai_responses", sa.MetaData(),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("used", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("history", sa.Text, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
)


@dataclass(slots=True)
class Stored:
    owner: str
    #: the conversation so far, instructions excluded (they are not carried over)
    history: list[ChatMessage]
    #: the response object as it was returned (GET /v1/responses/{id})
    response: dict[str, Any] | None = None


def _not_found(response_id: str, param: str) -> NotFound:
    if param == "previous_response_id":
        return NotFound(f"Previous response with id '{response_id}' not found.",
                        param=param, code="previous_response_not_found")
    return NotFound(f"Response with id '{response_id}' not found.", param=param)


class ResponseStore:
    """Responses kept for ``previous_response_id`` in ``db`` (table
    ``openai_responses``, which ``adyton db upgrade`` / startup create): see
    the module doc. ``ttl_s=None`` keeps them until evicted or deleted;
    ``clock`` gives unix seconds (tests pass their own)."""

    def __init__(self, db: Database, *, capacity: int = MAX_STORED, max_chars: int = MAX_STORED_CHARS,
                 ttl_s: float | None = TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.capacity = capacity
        self.max_chars = max_chars
        self.ttl_s = ttl_s
        self.clock = clock
        self._last_used = 0
        self._lock = threading.Lock()

    # -- time -------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int]:
        """(created seconds, a ``used`` stamp in nanoseconds that increases
        strictly within this process, so eviction order never ties here)."""
        now = self.clock()
        with self._lock:
            self._last_used = max(self._last_used + 1, int(now * 1e9))
            return int(now), self._last_used

    def _live(self, now: int) -> Any:
        """The condition of a row that has not expired."""
        if self.ttl_s is None:
            return sa.true()
        return _responses.c.created > now - int(self.ttl_s)

    # -- the calls --------------------------------------------------------------------

    def put(self, response_id: str, stored: Stored) -> bool:
        """Keep ``stored`` under ``response_id`` (replacing one of that id);
        False when it is too big to keep at all (continuing it is a 404, like
        an evicted one). Evicts the owner's least recently used ones beyond
        the bounds, and purges expired ones."""
        history = json.dumps([m.model_dump(exclude_defaults=True) for m in stored.history], ensure_ascii=False)
        response = json.dumps(stored.response, ensure_ascii=False)
        size = len(history) + len(response)
        created, used = self._stamp()
        with self.db.transaction() as conn:
            conn.execute(_responses.delete().where(_responses.c.id == response_id))
            if self.ttl_s is not None:
                conn.execute(_responses.delete().where(_responses.c.created <= created - int(self.ttl_s)))
            if size > self.max_chars:
                return False
            conn.execute(_responses.insert().values(id=response_id, owner=stored.owner, created=created,
                                                    used=used, size=size, history=history, response=response))
            self._evict(conn, stored.owner)
        return True

    def _evict(self, conn: sa.Connection, owner: str) -> None:
        count, total = _usage(conn, owner)
        if count <= self.capacity and total <= self.max_chars:
            return
        rows = conn.execute(sa.select(_responses.c.id, _responses.c.size).where(_responses.c.owner == owner)
                            .order_by(_responses.c.used.desc(), _responses.c.id.desc())).all()
        kept, chars = 0, 0
        drop: list[str] = []
        for response_id, size in rows:  # newest first: keep while the bounds allow, then drop the rest
            if not drop and kept < self.capacity and chars + size <= self.max_chars:
                kept, chars = kept + 1, chars + size
            else:
                drop.append(response_id)
        for i in range(0, len(drop), _CHUNK):
            conn.execute(_responses.delete().where(_responses.c.id.in_(drop[i:i + _CHUNK])))

    def get(self, response_id: str, owner: str, *, param: str = "previous_response_id") -> Stored:
        """The owner's response ``response_id`` (now its most recently used);
        ``NotFound`` naming ``param`` for another account's, an unknown, an
        evicted or an expired one."""
        created, used = self._stamp()
        where = (_responses.c.id == response_id, _responses.c.owner == owner, self._live(created))
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(_responses.c.history, _responses.c.response).where(*where)).first()
            if row is None:
                raise _not_found(response_id, param)
            conn.execute(_responses.update().where(_responses.c.id == response_id).values(used=used))
        history = [ChatMessage.model_validate(m) for m in json.loads(row[0])]
        return Stored(owner=owner, history=history, response=json.loads(row[1]))

    def delete(self, response_id: str, owner: str) -> None:
        """Forget the owner's response ``response_id``; ``NotFound`` as ``get``."""
        created, _ = self._stamp()
        with self.db.transaction() as conn:
            gone = conn.execute(_responses.delete().where(
                _responses.c.id == response_id, _responses.c.owner == owner, self._live(created))).rowcount
        if not gone:
            raise _not_found(response_id, "response_id")

    def usage(self, owner: str) -> tuple[int, int]:
        """(responses, characters) the owner has stored, expired ones included
        until purged."""
        with self.db.connect() as conn:
            return _usage(conn, owner)


def _usage(conn: sa.Connection, owner: str) -> tuple[int, int]:
    count, total = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_responses.c.size), 0))
                                .where(_responses.c.owner == owner)).one()
    return int(count), int(total)
