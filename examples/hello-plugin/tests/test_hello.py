"""The plugin tested the way any plugin is: an app built with exactly the
plugins the test wants (create_app(plugins=[...])), a scripted backend, and
the kernel's JSON test wire format."""

import adyton_hello
from adyton import create_app
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend


def make_app(tmp_path, banned):
    backend = ScriptedBackend(["Hello", " world", "!"], extra_vocab=[" there"])
    return create_app(
        settings={"home": str(tmp_path), "hello": {"banned_words": banned}},
        plugins=[adyton_hello, JsonTestWirePlugin(), BackendPlugin(backend)],
        load_entrypoints=False,
    )


async def generate(app):
    async with app.test_app() as test_app:
        r = await test_app.test_client().post(
            "/t/generate", json={"prompt": "hi", "temperature": 0, "max_tokens": 3})
        return (await r.get_json())["choices"][0]["text"]


async def test_banned_word_is_never_written(tmp_path):
    assert await generate(make_app(tmp_path, [])) == "Hello world!"
    text = await generate(make_app(tmp_path, ["WORLD"]))
    assert "world" not in text.lower()
    assert text.startswith("Hello")


def test_token_matching():
    ids = adyton_hello.banned_token_ids([b"Hello", b" world", b"worldly", b" World"], ["world"])
    assert ids.tolist() == [1, 3]
