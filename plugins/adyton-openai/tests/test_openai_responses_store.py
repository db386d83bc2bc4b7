"""Stored /v1/responses in the kernel's database (issue #16: many servers,
one front door): the store's bounds, expiry and owners on SQLite and on a
real PostgreSQL; a conversation started on one server and continued,
fetched and deleted through another sharing the database; a restart that
keeps it; ``adyton db upgrade`` creating the table on a fresh database; a
database that refuses work is a 503 in OpenAI's shape."""

from __future__ import annotations

import httpx
import openai
import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from openai_helpers import Accounts

from adyton import ChatMessage, Database, NotFound
from adyton.testing import ScriptedBackend
from adyton_openai.migrations import VERSION_TABLE, VERSIONS
from adyton_openai.store import ResponseStore, Stored

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or one on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared/adyton.sqlite3"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.upgrade(VERSIONS, VERSION_TABLE)
    yield database
    database.dispose()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _stored(owner="a", text="", response=None):
    return Stored(owner=owner, history=[ChatMessage(role="user", content=text)] if text else [],
                  response=response)


def _size(stored: Stored) -> int:
    """What the store counts for ``stored``: its JSON, turns and response."""
    import json

    return (len(json.dumps([m.model_dump(exclude_defaults=True) for m in stored.history], ensure_ascii=False))
            + len(json.dumps(stored.response, ensure_ascii=False)))


# -- the store ---------------------------------------------------------------------------


def test_store_round_trip_keeps_turns_and_response(db):
    store = ResponseStore(db)
    history = [ChatMessage(role="developer", content="Answer in English, ça va ?"),
               ChatMessage(role="assistant", content="", tool_calls=[
                   {"id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]),
               ChatMessage(role="tool", content="sunny", tool_call_id="call_1", name="get_weather")]
    response = {"id": "resp_1", "output": [{"type": "message", "content": [{"text": "日本"}]}], "metadata": {}}
    assert store.put("resp_1", Stored(owner="a", history=history, response=response))
    got = store.get("resp_1", "a")
    assert got.history == history and got.response == response and got.owner == "a"
    # another account's id is not found, in the parameter's own words
    with pytest.raises(NotFound) as err:
        store.get("resp_1", "b")
    assert err.value.code == "previous_response_not_found" and err.value.param == "previous_response_id"
    with pytest.raises(NotFound) as err:
        store.get("resp_1", "b", param="response_id")
    assert err.value.param == "response_id" and err.value.code == "not_found"
    with pytest.raises(NotFound):
        store.delete("resp_1", "b")
    store.get("resp_1", "a")  # still there
    store.delete("resp_1", "a")
    with pytest.raises(NotFound):
        store.get("resp_1", "a")
    with pytest.raises(NotFound):
        store.delete("resp_1", "a")


def test_store_is_bounded_per_account_least_recently_used_out(db):
    store = ResponseStore(db, capacity=2)
    for i in range(3):
        store.put(f"r{i}", _stored())
    assert store.usage("a")[0] == 2
    with pytest.raises(NotFound):
        store.get("r0", "a")
    store.get("r1", "a")  # r1 is now the most recent
    store.put("r3", _stored())
    store.get("r1", "a")
    with pytest.raises(NotFound):
        store.get("r2", "a")
    # another account's responses neither count nor get evicted
    for i in range(2):
        store.put(f"b{i}", _stored(owner="b"))
    assert store.usage("a")[0] == 2 and store.usage("b")[0] == 2
    store.get("r1", "a") and store.get("r3", "a") and store.get("b0", "b")


def test_store_is_bounded_in_characters(db):
    unit = _size(_stored(text="x" * 300))
    store = ResponseStore(db, capacity=100, max_chars=3 * unit + 10)
    assert not store.put("big", _stored(text="x" * (3 * unit + 10)))  # never kept
    assert store.usage("a") == (0, 0)
    for i in range(4):
        store.put(f"r{i}", _stored(text="x" * 300))
    assert store.usage("a") == (3, 3 * unit)  # r0 went to make room
    with pytest.raises(NotFound):
        store.get("r0", "a")
    small = _stored(text="x" * 100)
    store.put("r1", small)  # replacing an entry counts once
    assert store.usage("a") == (3, 2 * unit + _size(small))
    store.delete("r2", "a")
    assert store.usage("a") == (2, unit + _size(small))
    # too big to keep: also forgets what was stored under that id
    assert not store.put("r3", _stored(text="x" * (3 * unit + 10)))
    assert store.usage("a") == (1, _size(small))


def test_store_expires_responses(db):
    clock = Clock()
    store = ResponseStore(db, ttl_s=100, clock=clock)
    store.put("old", _stored())
    clock.now += 60
    store.put("newer", _stored())
    clock.now += 50  # "old" is 110 s old: gone, though not purged yet
    with pytest.raises(NotFound):
        store.get("old", "a")
    with pytest.raises(NotFound):
        store.delete("old", "a")
    store.get("newer", "a")
    assert store.usage("a")[0] == 2
    store.put("newest", _stored())  # writing purges what expired
    assert store.usage("a")[0] == 2
    clock.now += 1000
    with pytest.raises(NotFound):
        store.get("newer", "a")
    # without a ttl nothing expires
    keeper = ResponseStore(db, ttl_s=None, clock=clock)
    clock.now += 10**9
    assert keeper.get("newest", "a").owner == "a"


def test_two_stores_on_one_database_see_each_other(db_url):
    """Two servers' stores: separate engines and pools on one database."""
    one, two = Database(db_url), Database(db_url)
    try:
        one.upgrade(VERSIONS, VERSION_TABLE)
        a, b = ResponseStore(one, capacity=2), ResponseStore(two, capacity=2)
        a.put("r0", _stored(text="first"))
        assert b.get("r0", "a").history[0].content == "first"
        b.put("r1", _stored())
        b.put("r2", _stored())  # b's write evicts a's response: one bound per account, whichever server
        with pytest.raises(NotFound):
            a.get("r0", "a")
        b.delete("r1", "a")
        with pytest.raises(NotFound):
            a.get("r1", "a")
    finally:
        one.dispose()
        two.dispose()


# -- through servers sharing the database ------------------------------------------------


@pytest.fixture
def accounts():
    return Accounts()


def _serve(serve, backend, accounts, db_url, **openai_settings):
    return serve(backend, plugins=[accounts],
                 settings={"database": {"url": db_url}, "openai": openai_settings})


def test_conversation_goes_on_through_another_server(serve, sdk, accounts, db_url):
    backend_a, backend_b = ScriptedBackend(), ScriptedBackend(["Bonjour", "!"])
    server_a = _serve(serve, backend_a, accounts, db_url)
    server_b = _serve(serve, backend_b, accounts, db_url)
    on_a, on_b = sdk(server_a, api_key="sk-a"), sdk(server_b, api_key="sk-a")
    first = on_a.responses.create(model="scripted-model", input="first question", instructions="Be brief.")
    second = on_b.responses.create(model="scripted-model", input="second question",
                                   previous_response_id=first.id)
    assert second.output_text == "Bonjour!" and second.previous_response_id == first.id
    assert backend_b.prompts[-1] == ("<user>first question\n<assistant>Hello, world!\n"
                                     "<user>second question\n<assistant>")
    # streamed on b, continued on a
    events = list(on_b.responses.create(model="scripted-model", input="third", stream=True,
                                        previous_response_id=second.id))
    assert events[-1].type == "response.completed"
    on_a.responses.create(model="scripted-model", input="fourth", previous_response_id=events[-1].response.id)
    assert backend_a.prompts[-1].endswith("<user>third\n<assistant>Bonjour!\n<user>fourth\n<assistant>")
    # fetched through the other server, as it was returned
    got = on_b.responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump()
    # another account: not found on either server
    for server in (server_a, server_b):
        with pytest.raises(openai.NotFoundError) as err:
            sdk(server, api_key="sk-b").responses.create(model="scripted-model", input="x",
                                                         previous_response_id=first.id)
        assert err.value.body["code"] == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):
            sdk(server, api_key="sk-b").responses.retrieve(first.id)
    # deleted on b: gone on a
    on_b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        on_a.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as err:
        on_a.responses.create(model="scripted-model", input="x", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"
    # store: false is on neither
    unstored = on_a.responses.create(model="scripted-model", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        on_b.responses.retrieve(unstored.id)


def test_settings_bound_the_store_of_every_server(serve, sdk, accounts, db_url):
    server_a = _serve(serve, ScriptedBackend(), accounts, db_url, responses_max_stored=2)
    server_b = _serve(serve, ScriptedBackend(), accounts, db_url, responses_max_stored=2)
    ids = [sdk(server, api_key="sk-a").responses.create(model="scripted-model", input="hi").id
           for server in (server_a, server_b, server_a)]
    on_b = sdk(server_b, api_key="sk-a")
    with pytest.raises(openai.NotFoundError):
        on_b.responses.retrieve(ids[0])  # the account's oldest went, whichever server made it
    assert [on_b.responses.retrieve(i).id for i in ids[1:]] == ids[1:]


def test_a_restart_keeps_the_conversation(serve, sdk, accounts, db_url):
    server = _serve(serve, ScriptedBackend(), accounts, db_url)
    first = sdk(server, api_key="sk-a").responses.create(model="scripted-model", input="before the restart")
    server.stop()
    backend = ScriptedBackend()
    again = _serve(serve, backend, accounts, db_url)
    client = sdk(again, api_key="sk-a")
    client.responses.create(model="scripted-model", input="after", previous_response_id=first.id)
    assert backend.prompts[-1] == "<user>before the restart\n<assistant>Hello, world!\n<user>after\n<assistant>"
    assert client.responses.retrieve(first.id).output_text == "Hello, world!"


# -- migrations and failures -------------------------------------------------------------


def test_cli_db_upgrade_creates_the_table_on_a_fresh_database(tmp_path, monkeypatch, db_url):
    monkeypatch.setenv("ADYTON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADYTON_DATABASE__URL", db_url)
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "openai")
    monkeypatch.delenv("ADYTON_CONFIG", raising=False)
    from adyton.cli import build_cli

    for _ in range(2):  # the second run has nothing to do
        result = CliRunner().invoke(build_cli(), ["db", "upgrade"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "openai: alembic_version_openai at o0001" in result.output
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert {c["name"] for c in inspector.get_columns("openai_responses")} == {
                "id", "owner", "created", "used", "size", "history", "response"}
            assert {i["name"] for i in inspector.get_indexes("openai_responses")} == {
                "openai_responses_owner_used", "openai_responses_created"}
    finally:
        engine.dispose()
    # a store works on what the command made
    database = Database(db_url)
    try:
        store = ResponseStore(database)
        store.put("resp_x", _stored(text="hi"))
        assert store.get("resp_x", "a").history[0].content == "hi"
    finally:
        database.dispose()


def test_a_database_that_refuses_work_is_a_503(serve, sdk, accounts, postgres_server):
    url = postgres_server.create_database()
    name = url.rsplit("/", 1)[1]
    server = _serve(serve, ScriptedBackend(), accounts, url)
    client = sdk(server, api_key="sk-a")
    first = client.responses.create(model="scripted-model", input="hi")
    def admin():
        return psycopg.connect(host=postgres_server.host, port=postgres_server.port, user=postgres_server.user,
                               dbname="postgres", autocommit=True, connect_timeout=10)

    with admin() as conn:  # no connections to it any more, and those open are cut
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        for call in (lambda: client.responses.retrieve(first.id),
                     lambda: client.responses.create(model="scripted-model", input="x",
                                                     previous_response_id=first.id),
                     lambda: client.responses.create(model="scripted-model", input="x")):
            with pytest.raises(openai.InternalServerError) as err:
                call()
            assert err.value.status_code == 503
            assert err.value.body["code"] == "response_store_unavailable", err.value.body
            assert err.value.response.headers["Retry-After"] == "10"
        # a stream already under way ends with an error event and response.failed
        raw = httpx.post(server.base_url + "/v1/responses", json={"input": "x", "stream": True},
                         headers={"Authorization": "Bearer sk-a"}, timeout=60)
        kinds = [line[7:] for line in raw.text.splitlines() if line.startswith("event: ")]
        assert kinds[-2:] == ["error", "response.failed"], kinds
        # store: false needs no database
        assert client.responses.create(model="scripted-model", input="x", store=False).status == "completed"
    finally:
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert client.responses.retrieve(first.id).id == first.id  # back once the database is
