


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


def test_credentials_from_werkzeug_headers():
    """Quart's request.headers are read in one pass: case-insensitive, the
    first of a repeated header wins (as Headers.get answers)."""
    from werkzeug.datastructures import Headers

    from adyton import Credentials

    def found(*pairs):
        headers = Headers(list(pairs))
        c = Credentials.from_headers(headers, wire_format="w")
        plain = Credentials.from_headers({"x-api-key": headers.get("x-api-key"),
                                          "Authorization": headers.get("Authorization")}, wire_format="w")
        assert (c.kind, c.secret) == (plain.kind, plain.secret)
        return c.kind, c.secret

    assert found(("AUTHORIZATION", "Bearer sk-1")) == ("bearer", "sk-1")
    assert found(("X-Api-Key", "a"), ("x-api-key", "b"), ("Authorization", "Bearer dummy")) == ("api_key", "a")
    assert found(("authorization", "Bearer t1"), ("Authorization", "Bearer t2")) == ("bearer", "t1")
    assert found(("x-api-key", "  "), ("Authorization", "Bearer t")) == ("bearer", "t")
    assert found(("Content-Type", "application/json")) == ("none", "")
    assert found() == ("none", "")
