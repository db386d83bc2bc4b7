import pytest

from adyton.testing import ScriptedBackend


async def test_generate_non_streaming(make_app):
    app = make_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/t/generate", json={"messages": [{"role": "user", "content": "hi there"}], "temperature": 0})
        assert r.status_code == 200, await r.get_data()
        body = await r.get_json()
        assert body["choices"][0]["text"] == "Hello, world!"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == 4
