"""The ``adyton`` command. Plugins add commands with ``register_commands``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import weakref
from typing import Any

import click

from .errors import PluginError, SettingsError


class CliState:
    """Handed to commands as ``click.pass_obj``: builds the app lazily."""

    def __init__(self, config: str | None) -> None:
        self.config = config
        self._app: Any = None

    def app(self):
        if self._app is None:
            from .app import create_app

            self._app = create_app(config=self.config)
        return self._app

    def kernel(self):
        return self.app().extensions["adyton"]


def _fail(exc: Exception) -> None:
    click.echo(f"adyton: {exc}", err=True)
    sys.exit(2)


@click.group()
@click.option("--config", envvar="ADYTON_CONFIG", type=click.Path(dir_okay=False), default=None,
              help="Settings file (TOML). Default: ./adyton.toml if present.")
@click.version_option(package_name="adyton")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """adyton: a self-hosted LLM inference server."""
    ctx.obj = CliState(config)


@cli.command()
@click.option("--host", default=None, help="Bind address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from settings: 8756).")
@click.pass_obj
def serve(state: CliState, host: str | None, port: int | None) -> None:
    """Serve the API with hypercorn."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    try:
        kernel = state.kernel()
    except (PluginError, SettingsError) as exc:
        _fail(exc)
    settings = kernel.settings
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    config = Config()
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    config.accesslog = None
    config.graceful_timeout = settings.server.shutdown_grace_s
    base = f"http://{settings.server.host}:{settings.server.port}"
    click.echo(f"adyton listening on {base}")
    click.echo(f"  data: {kernel.home}")
    click.echo(f"  plugins: {', '.join(r['name'] for r in kernel.pm.describe() if not r['default']) or 'none'}")
    for wire in kernel.wire_formats.values():
        example = wire.example_request(base)
        if example:
            click.echo(f"  try ({wire.name}):\n{example}")
    click.echo(f"  health: curl {base}/health")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # pragma: no cover (no signals: Windows)
                loop.add_signal_handler(sig, stop.set)
        await hypercorn_serve(state.app(), config, shutdown_trigger=stop.wait)

    try:
        asyncio.run(run())
    except PluginError as exc:
        _fail(exc)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def plugins(state: CliState, as_json: bool) -> None:
    """List the loaded plugins, their versions and the hooks they implement."""
    try:
        kernel = state.kernel()
    except (PluginError, SettingsError) as exc:
        _fail(exc)
    rows = kernel.pm.describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        origin = f"{row['distribution']} {row['version']}" if row["distribution"] else "(in-process)"
        default = " [kernel default]" if row["default"] else ""
        click.echo(f"{row['name']}{default}  {origin}")
        click.echo(f"    hooks: {', '.join(row['hooks'])}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def models(state: CliState, as_json: bool) -> None:
    """List the models the installed backends can serve."""
    try:
        kernel = state.kernel()
    except (PluginError, SettingsError) as exc:
        _fail(exc)
    infos = [info for _, info in kernel.list_models()]
    if as_json:
        click.echo(json.dumps([i.model_dump() for i in infos], indent=2))
        return
    if not infos:
        click.echo("no models installed (try: adyton pull smollm2)")
    for info in infos:
        size = f"{info.size_bytes / 1e6:.0f} MB" if info.size_bytes else "?"
        extra = f"  aliases: {', '.join(info.aliases)}" if info.aliases else ""
        click.echo(f"{info.id}  [{info.backend}]  ctx={info.context_length}  {info.quantization or ''}  {size}{extra}")


@cli.command("settings")
@click.option("--markdown", is_flag=True, help="Print the reference of every setting (docs/configuration.md).")
@click.pass_obj
def settings_command(state: CliState, markdown: bool) -> None:
    """Show the effective settings (or, with --markdown, their reference)."""
    from .settings import settings_markdown

    try:
        kernel = state.kernel()
    except (PluginError, SettingsError) as exc:
        _fail(exc)
    if markdown:
        click.echo(settings_markdown(type(kernel.settings)), nl=False)
    else:
        click.echo(json.dumps(kernel.settings.model_dump(mode="json"), indent=2))


@cli.group()
def db() -> None:
    """The SQL database ([database] url) and each plugin's tables in it."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(state: CliState) -> None:
    """Bring every plugin's tables to their newest revision (what serve does
    at startup), e.g. before starting several servers on one new database."""
    try:
        kernel = state.kernel()
        done = kernel.upgrade_databases()
    except (PluginError, SettingsError) as exc:
        _fail(exc)
    finally:
        if state._app is not None:
            state.kernel().database.dispose()
    for owner, table, revision in done:
        click.echo(f"{owner}: {table} at {revision}")
    if not done:
        click.echo("no installed plugin keeps tables in a database")


#: per group, which plugin added each of its commands ("adyton": the kernel's own)
_COMMAND_OWNERS: weakref.WeakKeyDictionary[click.Group, dict[str, str]] = weakref.WeakKeyDictionary()


def add_plugin_commands(group: click.Group, pm: Any) -> None:
    """Let every plugin add its commands to ``group`` (``register_commands``),
    in pluggy's call order. A command name that another plugin, or the
    kernel, already added is refused naming both (``PluginError``; the
    first one stays): nothing is silently replaced."""
    from .plugins import in_call_order

    owners = _COMMAND_OWNERS.setdefault(group, {})
    for name in group.commands:
        owners.setdefault(name, "adyton")
    for impl in in_call_order(pm.hook.register_commands):
        before = dict(group.commands)
        try:
            impl.function(**{arg: {"cli": group}[arg] for arg in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{impl.plugin_name}' failed in register_commands: "
                              f"{type(exc).__name__}: {exc}") from exc
        for name, command in list(group.commands.items()):
            if before.get(name) is command:
                continue
            owner = owners.get(name)
            if name in before and owner is not None and owner != impl.plugin_name:
                group.commands[name] = before[name]
                what = "the kernel's own" if owner == "adyton" else f"added by plugin '{owner}'"
                raise PluginError(f"plugin '{impl.plugin_name}' adds the command '{name}', which is {what}")
            owners[name] = impl.plugin_name


def build_cli() -> click.Group:
    """The CLI with plugin commands added (plugins from entry points)."""
    from .plugins import build_plugin_manager

    try:
        pm = build_plugin_manager()
        add_plugin_commands(cli, pm)
    except PluginError as exc:
        _fail(exc)
    return cli


def main() -> None:
    build_cli()(prog_name="adyton")


if __name__ == "__main__":  # pragma: no cover
    main()
