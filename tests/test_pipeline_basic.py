


async def test_generate_non_streaming(make_app):
    app = make_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/t/generate",
                              json={"messages": [{"role": "user", "content": "hi there"}], "temperature": 0})
        assert r.status_code == 200, await r.get_data()
        body = await r.get_json()
        assert body["choices"][0]["text"] == "Hello, world!"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == 4


def test_credentials_from_headers():
    from adyton import Credentials

    def found(**headers):
        c = Credentials.from_headers({k.replace("_", "-"): v for k, v in headers.items()},
                                     wire_format="w", client_address="10.0.0.1")
        return c.kind, c.secret

    assert found(Authorization="Bearer sk-1") == ("bearer", "sk-1")
    assert found(Authorization="bearer  sk-1 ") == ("bearer", "sk-1")
    assert found(x_api_key=" k ") == ("api_key", "k")
    # x-api-key is only sent on purpose; SDKs send a (dummy) Bearer anyway
    assert found(x_api_key="k", Authorization="Bearer dummy") == ("api_key", "k")
    assert found(Authorization="Basic dXNlcg==") == ("none", "")
    assert found(Authorization="Bearer ") == ("none", "")
    assert found() == ("none", "")
    c = Credentials.from_headers({"x-api-key": "k"}, wire_format="w", client_address="10.0.0.1")
    assert c.wire_format == "w" and c.client_address == "10.0.0.1"
