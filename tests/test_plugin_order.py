"""Plugin order follows pluggy everywhere: ``tryfirst`` first, ``trylast``
last, among equals the plugin registered last first. One test per combining
rule written down in ``adyton.hookspecs`` ("In which order")."""

from __future__ import annotations

import types

import click
import pytest
from click.testing import CliRunner
from quart import Blueprint, Response, jsonify

from adyton import (
    AdytonError,
    Authenticator,
    Credentials,
    DefaultSampler,
    Limiter,
    LogitsProcessor,
    PluginError,
    Principal,
    RateLimited,
    Reservation,
    WireFormat,
    create_app,
    hookimpl,
)
from adyton.cli import add_plugin_commands
from adyton.plugins import build_plugin_manager, in_call_order
from adyton.testing import BackendPlugin, JsonTestWirePlugin, ScriptedBackend


def plugin(name: str, **hooks):
    """A plugin named ``name``: ``hooks`` maps a hook name to its function,
    or to (function, {"tryfirst": True} / {"trylast": True})."""
    obj = types.SimpleNamespace(__name__=name)
    for hook, impl in hooks.items():
        fn, opts = impl if isinstance(impl, tuple) else (impl, {})
        setattr(obj, hook, hookimpl(**opts)(fn))
    return obj


def app_with(tmp_path, *plugins, backends=None, settings=None):
    merged = {"home": str(tmp_path / "home")}
    merged.update(settings or {})
    return create_app(
        settings=merged,
        plugins=[JsonTestWirePlugin(), BackendPlugin(*(backends or [ScriptedBackend()])), *plugins],
        load_entrypoints=False,
    )


#: (registration order, hook options per plugin) -> the order pluggy calls them
ORDERS = [
    ([("a", {}), ("b", {})], ["b", "a"]),  # among equals: registered last, called first
    ([("a", {"tryfirst": True}), ("b", {})], ["a", "b"]),
    ([("a", {}), ("b", {"trylast": True})], ["a", "b"]),
    ([("a", {}), ("b", {"tryfirst": True}), ("c", {}), ("d", {"trylast": True})], ["b", "c", "a", "d"]),
]


@pytest.mark.parametrize(("registered", "expected"), ORDERS)
def test_in_call_order_is_the_order_pluggy_calls(registered, expected):
    called: list[str] = []

    def recorder(name):
        def startup(kernel):
            called.append(name)
        return startup

    pm = build_plugin_manager([plugin(n, startup=(recorder(n), opts)) for n, opts in registered],
                              load_entrypoints=False)
    assert [impl.plugin_name for impl in in_call_order(pm.hook.startup)] == expected
    pm.hook.startup(kernel=None)
    assert called == expected


def test_a_hook_wrapper_on_a_hook_the_kernel_calls_one_by_one_is_refused(tmp_path):
    def register_backends(register, kernel):
        yield

    with pytest.raises(PluginError, match="'wrapping' implements register_backends as a hook wrapper"):
        app_with(tmp_path, plugin("wrapping", register_backends=(register_backends, {"wrapper": True})))


# -- authenticators ----------------------------------------------------------------


class AcceptAll(Authenticator):
    def __init__(self, name):
        self.name = name

    async def authenticate(self, credentials):
        return Principal(id=self.name)

    async def authorize(self, credentials, access):
        return Principal(id=self.name)


def authenticating(name, **opts):
    def register_authenticators(register, kernel):
        register(AcceptAll(name))
    return plugin(name, register_authenticators=(register_authenticators, opts))


@pytest.mark.parametrize(("registered", "expected"), ORDERS)
async def test_the_authenticator_called_first_wins(tmp_path, registered, expected):
    kernel = app_with(tmp_path, *[authenticating(n, **opts) for n, opts in registered]).extensions["adyton"]
    credentials = Credentials(kind="api_key", secret="k", wire_format="testwire")
    assert [a.name for a in kernel.authenticators] == expected
    assert (await kernel.pipeline.authenticate(credentials)).id == expected[0]
    assert (await kernel.pipeline.authorize(credentials, "admin")).id == expected[0]


# -- limiters ---------------------------------------------------------------------


class Recording(Limiter):
    def __init__(self, name, log, refuse=False):
        self.name, self.log, self.refuse = name, log, refuse

    async def reserve(self, principal, cost):
        self.log.append(("reserve", self.name))
        if self.refuse:
            raise RateLimited(f"{self.name} refuses", headers={"x-who": self.name})
        return Reservation(principal, cost, headers={"x-who": self.name, f"x-{self.name}": "1"})

    async def settle(self, reservation, usage, outcome):
        self.log.append((f"settle:{outcome}", self.name))


def limiting(name, log, refuse=False, **opts):
    def register_limiters(register, kernel):
        register(Recording(name, log, refuse))
    return plugin(name, register_limiters=(register_limiters, opts))


async def test_limiters_reserve_and_settle_in_call_order_and_the_later_header_wins(tmp_path):
    log: list = []
    app = app_with(tmp_path, limiting("a", log, tryfirst=True), limiting("b", log))
    async with app.test_app():
        response = await app.test_client().post("/t/generate", json={"prompt": "hi"})
    assert response.status_code == 200
    assert log == [("reserve", "a"), ("reserve", "b"), ("settle:ok", "a"), ("settle:ok", "b")]
    assert response.headers["x-who"] == "b"
    assert response.headers["x-a"] == response.headers["x-b"] == "1"


async def test_a_refusing_limiter_releases_the_earlier_reservations_in_reverse(tmp_path):
    log: list = []
    app = app_with(tmp_path, limiting("c", log, refuse=True, trylast=True), limiting("a", log, tryfirst=True),
                   limiting("b", log))
    async with app.test_app():
        response = await app.test_client().post("/t/generate", json={"prompt": "hi"})
    assert response.status_code == 429
    assert log == [("reserve", "a"), ("reserve", "b"), ("reserve", "c"),
                   ("settle:rejected", "b"), ("settle:rejected", "a")]
    assert response.headers["x-who"] == "c"  # the refusal carries the refusing limiter's own


# -- backends ---------------------------------------------------------------------


def serving(name, **opts):
    backend = ScriptedBackend(name=name, models=("shared-model",))

    def register_backends(register, kernel):
        register(backend)
    return plugin(f"plugin-{name}", register_backends=(register_backends, opts))


@pytest.mark.parametrize(("registered", "expected"), ORDERS)
def test_for_a_model_two_backends_list_the_backend_called_first_serves_it(tmp_path, registered, expected):
    kernel = app_with(tmp_path, *[serving(n, **opts) for n, opts in registered],
                      backends=[ScriptedBackend(name="other", models=("other-model",))]).extensions["adyton"]
    assert [name for name in kernel.backends if name != "other"] == expected
    backend, _ = kernel.models.resolve("shared-model")
    assert backend.name == expected[0]
    default_backend, default_info = kernel.models.default_model()
    assert (default_backend.name, default_info.id) == (expected[0], "shared-model")


# -- wire formats -----------------------------------------------------------------


class Surface(WireFormat):
    url_prefixes = ("/same/",)

    def __init__(self, name):
        self.name = name
        self._bp = Blueprint(f"surface_{name}", __name__)
        self._bp.add_url_rule("/same/route", "route", self.route, methods=["GET"])

    @property
    def blueprint(self):
        return self._bp

    async def route(self):
        return jsonify({"served_by": self.name})

    def render_error(self, error: AdytonError) -> Response:
        response = jsonify({"rendered_by": self.name, "status": error.status})
        response.status_code = error.status
        return response


def surfacing(name, **opts):
    def register_wire_formats(register, kernel):
        register(Surface(name))
    return plugin(f"plugin-{name}", register_wire_formats=(register_wire_formats, opts))


@pytest.mark.parametrize(("registered", "expected"), ORDERS)
async def test_for_the_same_route_and_prefix_the_wire_format_called_first_serves_it(tmp_path, registered,
                                                                                      expected):
    app = app_with(tmp_path, *[surfacing(n, **opts) for n, opts in registered])
    client = app.test_client()
    served = await client.get("/same/route")
    assert (await served.get_json()) == {"served_by": expected[0]}
    missing = await client.get("/same/nowhere")
    assert missing.status_code == 404
    assert (await missing.get_json()) == {"rendered_by": expected[0], "status": 404}


# -- unique names: catalogs, settings sections, CLI commands ------------------------


def test_a_settings_section_registered_twice_is_refused_naming_both_plugins(tmp_path):
    from pydantic import BaseModel

    class Section(BaseModel):
        x: int = 1

    def register_settings(register):
        register("dup", Section)

    with pytest.raises(PluginError, match="section 'dup' is registered twice: by plugin 'second' and by plugin "
                                          "'first'"):
        app_with(tmp_path, plugin("first", register_settings=register_settings),
                 plugin("second", register_settings=register_settings))


def test_a_backend_name_registered_twice_is_refused_naming_both_plugins(tmp_path):
    with pytest.raises(PluginError, match="backend 'same' is registered twice: by plugin 'plugin-same' and by "
                                          "plugin 'test-backends'"):
        app_with(tmp_path, serving("same"), backends=[ScriptedBackend(name="same")])


def commanding(name, command, **opts):
    def register_commands(cli):
        @cli.command(command)
        def _run():
            click.echo(name)
    return plugin(name, register_commands=(register_commands, opts))


def test_a_command_two_plugins_add_is_refused_naming_both_and_the_first_stays():
    group = click.Group("adyton-test")
    pm = build_plugin_manager([commanding("a", "hello", tryfirst=True), commanding("b", "hello")],
                              load_entrypoints=False)
    with pytest.raises(PluginError, match="plugin 'b' adds the command 'hello', which is added by plugin 'a'"):
        add_plugin_commands(group, pm)
    assert CliRunner().invoke(group, ["hello"]).output == "a\n"


def test_a_plugin_cannot_replace_a_kernel_command_and_may_rebuild_its_own():
    group = click.Group("adyton-test")

    @group.command("serve")
    def serve():
        click.echo("kernel")

    pm = build_plugin_manager([commanding("p", "serve")], load_entrypoints=False)
    with pytest.raises(PluginError, match="plugin 'p' adds the command 'serve', which is the kernel's own"):
        add_plugin_commands(group, pm)
    assert CliRunner().invoke(group, ["serve"]).output == "kernel\n"

    own = build_plugin_manager([commanding("p", "mine")], load_entrypoints=False)
    add_plugin_commands(group, own)
    add_plugin_commands(group, own)  # the CLI built again in one process
    assert CliRunner().invoke(group, ["mine"]).output == "p\n"


# -- per-request hooks: prepare_request, logits processors, sampler ---------------


async def test_prepare_request_hooks_run_in_call_order(tmp_path):
    seen: list[tuple[str, list[str]]] = []

    def preparing(name, **opts):
        def prepare_request(request, principal, kernel):
            seen.append((name, list(request.stop)))
            request.stop = [*request.stop, name]
        return plugin(name, prepare_request=(prepare_request, opts))

    app = app_with(tmp_path, preparing("last", trylast=True), preparing("a"), preparing("b"),
                   preparing("first", tryfirst=True))
    async with app.test_app():
        response = await app.test_client().post("/t/generate", json={"prompt": "hi"})
    assert response.status_code == 200
    # a trylast hook sees what every other one did to the request
    assert seen == [("first", []), ("b", ["first"]), ("a", ["first", "b"]), ("last", ["first", "b", "a"])]


class Marking(LogitsProcessor):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def process(self, generated, logits):
        self.log.append(self.name)


class NamedSampler(DefaultSampler):
    def __init__(self, request, name, log):
        super().__init__(request)
        self.name, self.log = name, log

    def choose(self, logits):
        self.log.append(self.name)
        return super().choose(logits)


async def test_logits_processors_apply_in_call_order_and_the_first_sampler_wins(tmp_path):
    log: list[str] = []

    def processing(name, many=1, **opts):
        def logits_processors(request, model, vocabulary, kernel):
            return [Marking(f"{name}{i}", log) for i in range(many)] if many > 1 else Marking(name, log)
        return plugin(name, logits_processors=(logits_processors, opts))

    def sampling(name, **opts):
        def sampler(request, kernel):
            return NamedSampler(request, f"sampler-{name}", log)
        return plugin(f"s-{name}", sampler=(sampler, opts))

    app = app_with(tmp_path, processing("last", trylast=True), processing("a", many=2),
                   processing("first", tryfirst=True), sampling("x", tryfirst=True), sampling("y"),
                   backends=[ScriptedBackend(script=["Hi"])])
    async with app.test_app():
        response = await app.test_client().post("/t/generate", json={"prompt": "hi", "max_tokens": 1})
    assert response.status_code == 200
    assert log[:5] == ["first", "a0", "a1", "last", "sampler-x"]


# -- startup and shutdown ---------------------------------------------------------


async def test_startup_runs_in_call_order_and_shutdown_in_reverse(tmp_path):
    log: list[str] = []

    def lifecycle(name, **opts):
        def startup(kernel):
            log.append(f"start {name}")

        async def shutdown(kernel):
            log.append(f"stop {name}")
        return plugin(name, startup=(startup, opts), shutdown=(shutdown, opts))

    app = app_with(tmp_path, lifecycle("a"), lifecycle("last", trylast=True), lifecycle("b"),
                   lifecycle("first", tryfirst=True))
    async with app.test_app():
        assert log == ["start first", "start b", "start a", "start last"]
    assert log[4:] == ["stop last", "stop a", "stop b", "stop first"]


async def test_a_failing_startup_stops_the_later_ones(tmp_path):
    log: list[str] = []

    def failing(kernel):
        raise RuntimeError("no database")

    app = app_with(tmp_path, plugin("later", startup=(lambda kernel: log.append("later"), {"trylast": True})),
                   plugin("broken", startup=failing))
    with pytest.raises(PluginError, match="plugin 'broken' failed at startup: RuntimeError: no database"):
        await app.extensions["adyton"].startup()
    assert log == []
