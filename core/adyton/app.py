"""``create_app``: one Quart app, one plugin manager, one kernel.

Builds the plugin manager, the settings (with every plugin's section), the
``Kernel`` (``kernel.py``) and its catalogs, mounts each wire format's
blueprint, installs the error handlers (``http_errors.py``) and CORS
(``cors.py``), and ties the kernel's startup and shutdown to the server's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from quart import Quart

from .cors import install_cors
from .errors import PluginError
from .generation import close_orphans
from .hookspecs import WireFormat
from .http_errors import install_error_handlers, install_wire_error_handlers
from .kernel import Kernel
from .plugins import PluginManager, build_plugin_manager, in_call_order
from .settings import Settings, load_settings


def _settings_sections(pm: PluginManager) -> dict[str, type[BaseModel]]:
    """Every plugin's settings section, taken in pluggy's call order; a name
    registered twice is refused, naming both plugins."""
    sections: dict[str, type[BaseModel]] = {}
    owners: dict[str, str] = {}
    for impl in in_call_order(pm.hook.register_settings):
        def register(name: str, model: type, _owner: str = impl.plugin_name) -> None:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise PluginError(f"plugin '{_owner}' registered settings '{name}' that are not a pydantic model")
            if name in sections:
                raise PluginError(f"settings section '{name}' is registered twice: by plugin "
                                  f"'{owners[name]}' and by plugin '{_owner}'")
            sections[name] = model
            owners[name] = _owner
        impl.function(register=register)
    return sections


def create_app(
    settings: dict[str, Any] | Settings | None = None,
    plugins: Iterable[Any] = (),
    load_entrypoints: bool = True,
    config: str | os.PathLike | None = None,
) -> Quart:
    """Build an app with its own plugin manager.

    ``settings``: overrides (a dict like ``{"queue": {"max_waiting": 2}}``).
    ``plugins``: plugin objects/modules registered in addition to (or, with
    ``load_entrypoints=False``, instead of) the installed ones.
    Raises ``PluginError`` / ``SettingsError`` naming what is wrong.
    """
    pm = build_plugin_manager(plugins, load_entrypoints=load_entrypoints)
    sections = _settings_sections(pm)
    if isinstance(settings, Settings):
        resolved = settings
    else:
        resolved = load_settings(sections, overrides=settings or {}, config=config)
    kernel = Kernel(resolved, pm)
    kernel.collect_catalogs()

    app = Quart("adyton")
    app.config["MAX_CONTENT_LENGTH"] = resolved.server.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # "//v1/models" is no route: a JSON 404 in the surface's shape, not
    # werkzeug's HTML 308 redirect to the merged path
    app.url_map.merge_slashes = False
    app.extensions["adyton"] = kernel
    kernel.app = app
    # nothing keeps generating for a request the server is done with
    app.asgi_app = close_orphans(app.asgi_app)  # type: ignore[method-assign]

    for wire in kernel.wire_formats.values():
        _mount(app, wire)

    install_error_handlers(app, kernel)
    install_cors(app, resolved.server.cors_origins, kernel.exposed_headers())

    @app.before_serving
    async def _startup() -> None:
        await kernel.startup()

    @app.after_serving
    async def _shutdown() -> None:
        await kernel.shutdown()

    return app


def _mount(app: Quart, wire: WireFormat) -> None:
    install_wire_error_handlers(wire)
    app.register_blueprint(wire.blueprint)
    wire.init_app(app)
