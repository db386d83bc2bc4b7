"""``Kernel``: everything one app's plugins share, handed to most hooks —
settings, the plugin manager, the registered catalog objects (backends, wire
formats, authenticators, limiters) and their engine queues, the model
registry (``models.py``), the pipeline (``pipeline.py``) and metrics
(``metrics.py``); the app's startup and shutdown. What plugins may use of it
is ``KernelAPI`` (``kernel_api.py``, docs/kernel.md).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quart import Quart, current_app

from .database import Database
from .errors import AdytonError, PluginError
from .hookspecs import Authenticator, Backend, Limiter, WireFormat
from .kernel_api import KernelAPI
from .metrics import Metrics
from .models import ModelRegistry
from .openapi import complete_openapi
from .pipeline import Pipeline
from .plugins import PluginManager, in_call_order, resolve_all
from .queue import EngineJob, EngineQueue
from .settings import Settings

log = logging.getLogger("adyton")


class Kernel(KernelAPI):
    """Everything one app's plugins share. Handed to most hooks; plugins use
    only its ``KernelAPI`` part (docs/kernel.md)."""

    def __init__(self, settings: Settings, pm: PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.home = Path(settings.home).expanduser()
        self.app: Quart | None = None
        self.backends: dict[str, Backend] = {}
        self.wire_formats: dict[str, WireFormat] = {}
        self.authenticators: list[Authenticator] = []
        self.limiters: list[Limiter] = []
        self.queues: dict[str, EngineQueue] = {}
        self.models = ModelRegistry(self)
        self.metrics = Metrics(self)
        self.pipeline = Pipeline(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: ThreadPoolExecutor | None = None
        self._owners: dict[int, str] = {}  #: id(registered object) -> the plugin that registered it
        self._state: dict[Any, Any] = {}  #: kernel.state slots
        self._services: dict[str, Any] = {}  #: kernel.provide / kernel.service
        self._database: Database | None = None

    async def offload(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the kernel's worker threads, so blocking
        per-request CPU work (tokenizing a big prompt, parsing a big body,
        compiling a constraint) does not stall the event loop — ``/health``
        and every other client keep being answered. A fixed pool of
        ``server.worker_threads`` threads: a flood of requests waits for one
        instead of creating threads. Exceptions propagate to the caller."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=self.settings.server.worker_threads,
                                               thread_name_prefix="adyton-worker")
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._workers, call)

    # -- catalogs ---------------------------------------------------------------

    def _collect(self, hook_name: str, kind: type, store: Callable[[str, Any], None]) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in in_call_order(hook):
            owner = impl.plugin_name

            def register(obj: Any, _owner: str = owner) -> None:
                if not isinstance(obj, kind):
                    raise PluginError(f"plugin '{_owner}' registered {obj!r}, which is not a {kind.__name__}")
                name = getattr(obj, "name", "")
                if not name:
                    raise PluginError(f"plugin '{_owner}' registered a {kind.__name__} without a name")
                declared = getattr(obj, "exposed_headers", ())
                if isinstance(declared, str) or not all(isinstance(h, str) for h in declared):
                    raise PluginError(f"plugin '{_owner}' registered {kind.__name__} '{name}' whose "
                                      "exposed_headers is not a sequence of header names")
                self._owners[id(obj)] = _owner
                store(name, obj)

            try:
                impl.function(**{arg: {"register": register, "kernel": self}[arg] for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin '{owner}' failed in {hook_name}: {type(exc).__name__}: {exc}") from exc

    def _store_unique(self, catalog: dict[str, Any], what: str) -> Callable[[str, Any], None]:
        def store(name: str, obj: Any) -> None:
            if name in catalog:
                raise PluginError(
                    f"{what} '{name}' is registered twice: by plugin '{self.owner_of(catalog[name])}' "
                    f"and by plugin '{self.owner_of(obj)}'"
                )
            catalog[name] = obj
        return store

    def owner_of(self, obj: Any) -> str:
        """The plugin that registered ``obj`` ("?" if none did)."""
        return self._owners.get(id(obj), "?")

    def collect_catalogs(self) -> None:
        self._collect("register_backends", Backend, self._store_unique(self.backends, "backend"))
        self._collect("register_wire_formats", WireFormat, self._store_unique(self.wire_formats, "wire format"))
        auth: dict[str, Authenticator] = {}
        self._collect("register_authenticators", Authenticator, self._store_unique(auth, "authenticator"))
        self.authenticators = list(auth.values())
        limiters: dict[str, Limiter] = {}
        self._collect("register_limiters", Limiter, self._store_unique(limiters, "limiter"))
        self.limiters = list(limiters.values())
        for name, backend in self.backends.items():
            self.queues[name] = EngineQueue(
                name,
                concurrency=max(1, int(backend.max_concurrency)),
                max_waiting=self.settings.queue.max_waiting,
                max_wait_s=self.settings.queue.max_wait_s,
                inline=bool(backend.runs_inline),
            )

    def wire_format_for(self, path: str) -> WireFormat | None:
        """The surface whose ``url_prefixes`` match ``path`` longest (its
        slashes merged), else the kernel's own routes: the one that renders
        errors for that path."""
        path = re.sub("/{2,}", "/", path)
        best: WireFormat | None = None
        best_len = -1
        for wire in self.wire_formats.values():
            for prefix in wire.url_prefixes:
                if path.startswith(prefix) and len(prefix) > best_len:
                    best, best_len = wire, len(prefix)
        return best if best is not None else self.wire_formats.get("kernel")

    def complete_openapi(self, document: dict[str, Any]) -> dict[str, Any]:
        """Fill in what an OpenAPI ``document`` leaves out: every operation
        gets what the surface that owns its path declares for it
        (``WireFormat.openapi_operations``: request body, responses), that
        surface's error statuses (``WireFormat.error_statuses``, with its
        ``error_schema``), and a ``2XX`` success if it documents none. Whichever plugin serves the
        document calls this, so clients see every status a route answers.
        (``adyton.openapi.complete_openapi``.)"""
        return complete_openapi(self, document)

    def queue_for(self, backend: Backend) -> EngineQueue:
        return self.queues[backend.name]

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the SQL database ---------------------------------------------------------

    def migrations(self) -> list[tuple[str, Path, str, Database]]:
        """(plugin, versions directory, version table, database) of every
        plugin's tables, as ``register_migrations`` declares them."""
        found: list[tuple[str, Path, str, Database]] = []
        for impl in in_call_order(self.pm.hook.register_migrations):
            owner = impl.plugin_name

            def register(versions: Any, version_table: str, database: Database | None = None,
                         _owner: str = owner) -> None:
                if not Path(versions).is_dir():
                    raise PluginError(f"plugin '{_owner}' registered migrations in {versions}, "
                                      "which is not a directory")
                if any(table == version_table for _, _, table, _ in found):
                    raise PluginError(f"version table '{version_table}' is registered twice (plugin '{_owner}')")
                found.append((_owner, Path(versions), version_table, database or self.database))

            try:
                impl.function(**{arg: {"register": register, "kernel": self}[arg] for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin '{owner}' failed in register_migrations: {type(exc).__name__}: {exc}") from exc
        return found

    def upgrade_databases(self) -> list[tuple[str, str, str | None]]:
        """Bring every plugin's tables to their newest revision (blocking:
        startup runs it on a worker thread); (plugin, version table, revision)
        of each. A failure names the plugin and the database."""
        done = []
        for owner, versions, table, database in self.migrations():
            try:
                revision = database.upgrade(versions, table)
            except Exception as exc:
                raise PluginError(f"plugin '{owner}': migrating its tables ({table}) in {database.display_url} "
                                  f"failed: {type(exc).__name__}: {exc}") from exc
            done.append((owner, table, revision))
        return done

    # -- lifecycle ----------------------------------------------------------------

    async def startup(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.authenticators and not _is_loopback(self.settings.server.host):
            log.warning(
                "no auth plugin is installed and the server binds %s: anyone who can reach it "
                "may use it (install adyton-limits, or bind 127.0.0.1)",
                self.settings.server.host,
            )
        # every plugin's tables are current before any plugin starts
        await self.offload(self.upgrade_databases)
        for impl in in_call_order(self.pm.hook.startup):
            try:
                await resolve_all([impl.function(kernel=self)])
            except Exception as exc:
                raise PluginError(f"plugin '{impl.plugin_name}' failed at startup: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if self.settings.models.load_at_start:
            self._start_default_load()
        # everything built so far (modules, plugins, settings, routes) lives as
        # long as the server: keep it out of the cyclic collector's full
        # passes, which otherwise stall every request in flight for tens of
        # ms (shutdown gives it back, so a process that serves several apps in
        # turn, as the tests do, can still collect a finished one)
        gc.collect()
        gc.freeze()

    def _start_default_load(self) -> None:
        try:
            found = self.models.default_model()
        except AdytonError as exc:
            self.models.load_error = exc.message
            log.error("default model: %s", exc.message)
            return
        if found is None:
            return
        backend, info = found
        if backend.loaded_model() == info.id:
            return
        self.models.loading = info.id

        async def load() -> None:
            # a job like any other, so requests queue behind the load
            job = EngineJob(lambda: self.models.load_blocking(backend, info.id))
            queue = self.queue_for(backend)
            try:
                queue.submit(job)
                await job.wait_done()
                log.info("model %s is loaded", info.id)
            except AdytonError as exc:
                self.models.load_error = exc.message
                log.error("could not load the default model: %s", exc.message)
            finally:
                self.models.loading = None

        task = asyncio.get_running_loop().create_task(load(), name="adyton-load-default")
        self.track(task)

    async def shutdown(self) -> None:
        grace = self.settings.server.shutdown_grace_s
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        # the reverse of startup: the plugin that started first stops last
        for impl in reversed(in_call_order(self.pm.hook.shutdown)):
            try:
                await resolve_all([impl.function(kernel=self)])
            except Exception:
                log.exception("plugin '%s' failed at shutdown", impl.plugin_name)
        for backend in self.backends.values():
            try:
                backend.close()
            except Exception:
                log.exception("backend '%s' failed to close", backend.name)
        for queue in self.queues.values():
            await asyncio.get_running_loop().run_in_executor(None, queue.close)
        gc.unfreeze()
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None
        if self._database is not None:
            self._database.dispose()


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def current_kernel() -> Kernel:
    """The kernel of the app handling the current request."""
    return current_app.extensions["adyton"]
