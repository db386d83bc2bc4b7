"""The plugin manager: one per app, loading plugins from the entry-point
group ``adyton`` and from ``create_app(plugins=...)``.

``ADYTON_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which
entry points load; set but empty, none do. Kernel fallbacks in
``default_plugins`` are always registered, ``trylast``.

Plugins are registered in this order: entry points, then the ``plugins``
given to ``create_app``, then the kernel fallbacks. Wherever the kernel
combines what several plugins give it, it takes them in pluggy's call order
(``in_call_order``; the rules are in ``hookspecs``).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "adyton"
DEFAULT_PLUGINS = ("adyton.default_plugins.sampler", "adyton.default_plugins.kernel_routes")


@dataclass
class PluginRecord:
    name: str
    distribution: str | None = None
    version: str | None = None
    default: bool = False
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "default": self.default,
            "hooks": self.hooks,
        }


def load_plugins_env() -> set[str] | None:
    value = os.environ.get("ADYTON_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class PluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}

    def register_plugin(self, plugin: Any, name: str, *, distribution: str | None = None,
                        version: str | None = None, default: bool = False) -> None:
        where = f"plugin '{name}'" + (f" (distribution {distribution} {version})" if distribution else "")
        if self.has_plugin(name):
            raise PluginError(f"{where}: a plugin named '{name}' is already registered")
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{where} is invalid: {exc}") from None
        unknown = [
            attr for attr in dir(plugin)
            if not attr.startswith("_")
            and self.parse_hookimpl_opts(plugin, attr) is not None
            and getattr(getattr(self.hook, attr, None), "spec", None) is None
        ]
        if unknown:
            self.unregister(plugin)
            raise PluginError(f"{where} implements unknown hooks: {', '.join(sorted(unknown))}")
        self.records[name] = PluginRecord(name, distribution, version, default)

    def load_entrypoints(self, only: set[str] | None) -> None:
        seen: set[str] = set()
        # in name order, so the order (and what it decides: the default model,
        # who serves a shared route) does not depend on how site-packages lists them
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            if only is not None and ep.name not in only:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:  # any import failure stops startup
                raise PluginError(
                    f"plugin '{ep.name}' (distribution {dist} {version}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register_plugin(plugin, ep.name, distribution=dist, version=version)
        if only is not None:
            missing = only - seen
            if missing:
                raise PluginError(
                    "ADYTON_LOAD_PLUGINS names plugins that are not installed: "
                    + ", ".join(sorted(missing))
                    + (f" (installed: {', '.join(sorted(seen))})" if seen else " (none installed)")
                )

    def load_defaults(self) -> None:
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self.register_plugin(module, module_name.rsplit(".", 1)[-1], default=True,
                                 distribution="adyton", version=_kernel_version())

    def finish(self) -> None:
        for record in self.records.values():
            plugin = self.get_plugin(record.name)
            record.hooks = sorted(caller.name for caller in self.get_hookcallers(plugin) or [])

    def describe(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records.values()]


def _kernel_version() -> str:
    try:
        return md.version("adyton")
    except md.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def build_plugin_manager(plugins: Iterable[Any] = (), load_entrypoints: bool = True) -> PluginManager:
    pm = PluginManager()
    if load_entrypoints:
        pm.load_entrypoints(load_plugins_env())
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or getattr(plugin, "name", None) or type(plugin).__name__
        pm.register_plugin(plugin, str(name))
    pm.load_defaults()
    pm.finish()
    return pm


def in_call_order(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
    """``hook``'s implementations in the order pluggy calls them: ``tryfirst``
    ones first, ``trylast`` ones last, and among equals the plugin registered
    last first. The kernel takes plugins in this order wherever it calls
    implementations one by one (the catalog hooks, ``register_settings``,
    ``register_commands``, ``startup``; ``shutdown`` in reverse), so that they
    agree with the hooks it calls through pluggy (``prepare_request``,
    ``logits_processors``, ``sampler``). Raises ``PluginError`` for a hook
    wrapper: such a hook's implementations are called one by one, not
    through pluggy's wrapper machinery."""
    impls = hook.get_hookimpls()
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(f"plugin '{impl.plugin_name}' implements {hook.name} as a hook wrapper, "
                              f"which adyton does not support for that hook: declare a plain @hookimpl")
    return impls[::-1]


async def resolve_all(results: Sequence[Any]) -> list[Any]:
    """Await the awaitables among collect-all hook results."""
    out = []
    for result in results:
        if inspect.isawaitable(result):
            result = await result
        out.append(result)
    return out
