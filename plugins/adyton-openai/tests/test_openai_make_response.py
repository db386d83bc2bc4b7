"""adyton-openai sets up quart-schema for the app and lets a route's
``Response`` past quart-schema's conversion of return values
(``wire._pass_responses_through``); what a route returns otherwise (a
pydantic model, a dict, a tuple with a status) is still converted."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Response

import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend


class Thing(BaseModel):
    name: str
    size: int


def make(tmp_path):
    app = create_app(settings={"home": str(tmp_path)}, load_entrypoints=False,
                     plugins=[adyton_openai, BackendPlugin(ScriptedBackend())])

    @app.get("/x/model")
    async def model() -> Thing:
        return Thing(name="a", size=1)

    @app.get("/x/tuple")
    async def created() -> tuple[Thing, int]:
        return Thing(name="b", size=2), 201

    @app.get("/x/response")
    async def response() -> Response:
        return Response("plain", status=202, content_type="text/plain")

    return app


async def test_responses_pass_and_models_are_still_converted(tmp_path):
    app = make(tmp_path)
    # the fast path is installed (it silently is not if quart-schema stops
    # wrapping make_response with functools.wraps)
    assert app.make_response.__name__ == "make_response"
    assert app.make_response.__qualname__.startswith("_pass_responses_through")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.get("/x/model")
        assert r.status_code == 200 and await r.get_json() == {"name": "a", "size": 1}
        r = await client.get("/x/tuple")
        assert r.status_code == 201 and await r.get_json() == {"name": "b", "size": 2}
        r = await client.get("/x/response")
        assert r.status_code == 202 and await r.get_data(as_text=True) == "plain"
        r = await client.post("/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
        assert r.status_code == 200
        assert (await r.get_json())["choices"][0]["message"]["content"] == "Hello, world!"
        r = await client.post("/v1/chat/completions", json={"messages": []})
        assert r.status_code == 400 and (await r.get_json())["error"]["param"] == "messages"
