"""The worked examples in docs/plugin-authors.md run: each python block that
defines a plugin is executed as a module, and an app built from them serves a
request through the documented wire format, backend, auth, limiter and
logits processor."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from adyton import create_app

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin-authors.md"


def doc_modules():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    modules = {}
    for block in blocks:
        for name in ("LookupBackend", "EchoWire", "KeyFile", "NoDigits"):
            if f"class {name}" in block:
                module = types.ModuleType(f"doc_{name.lower()}")
                exec(compile(block, f"{DOC.name}:{name}", "exec"), module.__dict__)
                modules[name] = module
    assert set(modules) == {"LookupBackend", "EchoWire", "KeyFile", "NoDigits"}
    return modules


@pytest.fixture
def app(tmp_path):
    m = doc_modules()
    return create_app(settings={"home": str(tmp_path)}, load_entrypoints=False,
                      plugins=[m["LookupBackend"], m["EchoWire"], m["KeyFile"], m["NoDigits"]])


async def test_documented_plugins_work_together(app):
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/echo/say", json={"text": "hi"}, headers={"Authorization": "Bearer secret-1"})
        assert r.status_code == 200, await r.get_data()
        body = await r.get_json()
        assert body["reply"] == "Hello, world!"
        assert r.headers["x-one-at-a-time"] == "ok"
        r = await client.post("/echo/say", json={"text": "hi"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and (await r.get_json())["problem"] == "unknown API key"
        r = await client.post("/echo/say", json={"text": 3}, headers={"Authorization": "Bearer secret-1"})
        assert r.status_code == 400 and "'text'" in (await r.get_json())["problem"]
        r = await client.get("/echo/nothing-here")
        assert r.status_code == 404 and "problem" in await r.get_json()
