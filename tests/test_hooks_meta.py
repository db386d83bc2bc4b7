"""Every hook in hookspecs.py is documented for plugin authors, and exercised:
a plugin implementing all of them is run through a real request and the CLI,
and each hook must have been called."""

from __future__ import annotations

import inspect

import click
from click.testing import CliRunner

from adyton import DefaultSampler, create_app, hookimpl, hookspecs
from adyton.testing import JsonTestWire, ScriptedBackend

HOOKS = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "adyton_spec")
)


def test_every_hook_is_documented():
    assert len(HOOKS) >= 11
    for name in HOOKS:
        doc = " ".join((inspect.getdoc(getattr(hookspecs, name)) or "").split())
        assert len(doc) > 80, f"hook {name} needs a real docstring"
        assert any(w in doc for w in ("Catalog hook", "Collect-all", "Pick-one")), \
            f"hook {name}: say how results combine"
        assert any(w in doc for w in ("synchronous", "async")), f"hook {name}: say sync or async"


class Everything:
    """A plugin implementing every hook, recording calls."""

    __name__ = "everything"

    def __init__(self):
        self.called = set()
        self.backend = ScriptedBackend(["ok"])

    @hookimpl
    def register_settings(self, register):
        self.called.add("register_settings")

    @hookimpl
    def register_backends(self, register, kernel):
        self.called.add("register_backends")
        register(self.backend)

    @hookimpl
    def register_wire_formats(self, register, kernel):
        self.called.add("register_wire_formats")
        register(JsonTestWire())

    @hookimpl
    def register_authenticators(self, register, kernel):
        self.called.add("register_authenticators")

    @hookimpl
    def register_limiters(self, register, kernel):
        self.called.add("register_limiters")

    @hookimpl
    async def prepare_request(self, request, principal, kernel):
        self.called.add("prepare_request")
        request.max_tokens = 1

    @hookimpl
    async def logits_processors(self, request, model, vocabulary, kernel):
        self.called.add("logits_processors")
        assert vocabulary.size == 2
        return None

    @hookimpl
    def sampler(self, request, kernel):
        self.called.add("sampler")
        return DefaultSampler(request)

    @hookimpl
    def register_migrations(self, register, kernel):
        self.called.add("register_migrations")  # registers none: tests/test_database.py registers tables

    @hookimpl
    def register_commands(self, cli):
        self.called.add("register_commands")

        @cli.command("everything")
        def everything():
            click.echo("hello from a plugin command")

    @hookimpl
    async def startup(self, kernel):
        self.called.add("startup")

    @hookimpl
    def shutdown(self, kernel):
        self.called.add("shutdown")


async def test_every_hook_is_exercised(tmp_path):
    plugin = Everything()
    app = create_app(settings={"home": str(tmp_path)}, plugins=[plugin], load_entrypoints=False)
    async with app.test_app() as test_app:
        r = await test_app.test_client().post("/t/generate", json={"prompt": "x", "temperature": 0})
        assert r.status_code == 200
        assert (await r.get_json())["usage"]["completion_tokens"] == 1

    group = click.Group("adyton")
    app.extensions["adyton"].pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["everything"])
    assert result.output == "hello from a plugin command\n"
    assert plugin.called == set(HOOKS)
