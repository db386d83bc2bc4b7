"""Plugin loading through real entry points, ADYTON_LOAD_PLUGINS, failure
messages, settings validation, and the kernel's own routes and CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from adyton import PluginError, SettingsError, create_app, hookimpl
from adyton.testing import BackendPlugin, ScriptedBackend


def make_distribution(root: Path, dist: str, version: str, module: str, source: str,
                      ep_name: str | None = None) -> None:
    """A real installed distribution: a module plus its .dist-info with an
    ``adyton`` entry point, on a directory we put on sys.path."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[adyton]\n{ep_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("ADYTON_LOAD_PLUGINS", raising=False)
    yield root
    importlib.invalidate_caches()
    for name in list(sys.modules):
        if name.startswith("adyton_testplug"):
            del sys.modules[name]


GOOD = """
from adyton import hookimpl
from adyton.testing import ScriptedBackend

@hookimpl
def register_backends(register, kernel):
    register(ScriptedBackend(name="fromentrypoint", models=["ep-model"]))
"""


def only_test_plugins(app):
    return [p for p in app.extensions["adyton"].pm.describe() if p["name"].startswith("testplug")]


def test_entry_point_plugin_is_discovered_and_listed(site, tmp_path):
    make_distribution(site, "adyton-testplug-good", "1.2.3", "adyton_testplug_good", GOOD, "testplug-good")
    os.environ["ADYTON_LOAD_PLUGINS"] = "testplug-good"
    try:
        app = create_app(settings={"home": str(tmp_path)})
    finally:
        del os.environ["ADYTON_LOAD_PLUGINS"]
    [record] = only_test_plugins(app)
    assert record["distribution"] == "adyton-testplug-good"
    assert record["version"] == "1.2.3"
    assert record["hooks"] == ["register_backends"]
    assert "fromentrypoint" in app.extensions["adyton"].backends


def test_load_plugins_env_empty_means_none(site, tmp_path, monkeypatch):
    make_distribution(site, "adyton-testplug-good", "1.0", "adyton_testplug_good", GOOD, "testplug-good")
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "")
    app = create_app(settings={"home": str(tmp_path)})
    names = [p["name"] for p in app.extensions["adyton"].pm.describe()]
    assert names == ["sampler", "kernel_routes"]


def test_load_plugins_env_naming_a_missing_plugin_fails(site, tmp_path, monkeypatch):
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "nosuchplugin")
    with pytest.raises(PluginError, match="nosuchplugin"):
        create_app(settings={"home": str(tmp_path)})


def test_plugin_that_fails_to_import_names_itself_and_its_distribution(site, tmp_path, monkeypatch):
    make_distribution(site, "adyton-testplug-broken", "0.9", "adyton_testplug_broken",
                      "raise ImportError('needs libfoo')\n", "testplug-broken")
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "testplug-broken")
    with pytest.raises(PluginError) as info:
        create_app(settings={"home": str(tmp_path)})
    message = str(info.value)
    assert "testplug-broken" in message and "adyton-testplug-broken 0.9" in message and "libfoo" in message


def test_plugin_with_a_misspelled_hook_is_refused(site, tmp_path, monkeypatch):
    make_distribution(site, "adyton-testplug-typo", "0.1", "adyton_testplug_typo",
                      "from adyton import hookimpl\n@hookimpl\ndef register_backend(register, kernel):\n    pass\n",
                      "testplug-typo")
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "testplug-typo")
    with pytest.raises(PluginError, match="unknown hooks: register_backend"):
        create_app(settings={"home": str(tmp_path)})


def test_plugin_with_wrong_hook_arguments_is_refused(tmp_path):
    class Bad:
        __name__ = "badargs"

        @hookimpl
        def register_backends(self, register, kernel, surprise):
            pass

    with pytest.raises(PluginError, match="badargs"):
        create_app(settings={"home": str(tmp_path)}, plugins=[Bad()], load_entrypoints=False)


def test_duplicate_backend_names_are_refused_naming_both_plugins(tmp_path):
    # (pluggy calls "two", registered last, first: it registered the name first)
    with pytest.raises(PluginError, match="by plugin 'two' and by plugin 'one'"):
        create_app(settings={"home": str(tmp_path)}, load_entrypoints=False, plugins=[
            BackendPlugin(ScriptedBackend(), name="one"), BackendPlugin(ScriptedBackend(), name="two")])


def test_registering_the_wrong_kind_of_object_is_refused(tmp_path):
    class Wrong:
        __name__ = "wrong"

        @hookimpl
        def register_backends(self, register, kernel):
            register(object())

    with pytest.raises(PluginError, match=r"wrong.*not a Backend"):
        create_app(settings={"home": str(tmp_path)}, plugins=[Wrong()], load_entrypoints=False)


class FeatureSettings(BaseModel):
    level: int = 3
    name: str = "x"


class FeaturePlugin:
    __name__ = "feature"

    @hookimpl
    def register_settings(self, register):
        register("feature", FeatureSettings)


def test_settings_from_toml_env_and_overrides(tmp_path, monkeypatch):
    config = tmp_path / "adyton.toml"
    config.write_text('[queue]\nmax_waiting = 3\nmax_wait_s = 9\n[feature]\nlevel = 5\nname = "toml"\n')
    monkeypatch.setenv("ADYTON_QUEUE__MAX_WAIT_S", "12.5")
    monkeypatch.setenv("ADYTON_FEATURE__NAME", "env")
    app = create_app(settings={"home": str(tmp_path), "server": {"port": 9999}}, plugins=[FeaturePlugin()],
                     load_entrypoints=False, config=config)
    s = app.extensions["adyton"].settings
    assert (s.queue.max_waiting, s.queue.max_wait_s, s.server.port) == (3, 12.5, 9999)
    assert (s.feature.level, s.feature.name) == (5, "env")


def test_invalid_settings_name_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ADYTON_QUEUE__MAX_WAITING", "lots")
    with pytest.raises(SettingsError) as info:
        create_app(settings={"home": str(tmp_path)}, load_entrypoints=False)
    assert "queue.max_waiting" in str(info.value) and "ADYTON_QUEUE__MAX_WAITING" in str(info.value)
    monkeypatch.delenv("ADYTON_QUEUE__MAX_WAITING")
    config = tmp_path / "bad.toml"
    config.write_text("[feature]\nlevel = 'high'\n[server]\nprot = 1\n")
    with pytest.raises(SettingsError) as info:
        create_app(settings={"home": str(tmp_path)}, plugins=[FeaturePlugin()], load_entrypoints=False, config=config)
    assert "feature.level" in str(info.value) and "server.prot" in str(info.value)
    config.write_text("not = [valid")
    with pytest.raises(SettingsError, match="not valid TOML"):
        create_app(settings={"home": str(tmp_path)}, load_entrypoints=False, config=config)


async def test_health_metrics_and_plugins_routes(tmp_path):
    backend = ScriptedBackend(load_s=0.3)
    app = create_app(settings={"home": str(tmp_path)}, plugins=[BackendPlugin(backend)], load_entrypoints=False)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.get("/health")
        assert r.status_code == 503 and (await r.get_json())["status"] == "loading"
        import asyncio
        for _ in range(100):
            r = await client.get("/health")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await r.get_json()) == {"status": "ok", "loaded_models": ["scripted-model"]}
        r = await client.get("/metrics")
        text = await r.get_data(as_text=True)
        assert "adyton_queue_waiting" in text and "adyton_rejections_total" in text
        r = await client.get("/-/plugins")
        names = [p["name"] for p in (await r.get_json())["plugins"]]
        assert names == ["test-backends", "sampler", "kernel_routes"]
        r = await client.get("/-/models")
        assert (await r.get_json())["models"][0]["id"] == "scripted-model"


def test_cli_plugins_and_models(tmp_path):
    env = {**os.environ, "ADYTON_HOME": str(tmp_path), "ADYTON_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-m", "adyton.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert [p["name"] for p in json.loads(out)] == ["sampler", "kernel_routes"]
    out = subprocess.run([sys.executable, "-m", "adyton.cli", "models"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "no models installed" in out
    bad = subprocess.run([sys.executable, "-m", "adyton.cli", "plugins"],
                         env={**env, "ADYTON_QUEUE__MAX_WAITING": "-1"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "queue.max_waiting" in bad.stderr
