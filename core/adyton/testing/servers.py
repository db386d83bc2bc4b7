"""Servers on loopback for tests over a real socket: ``ServerThread`` /
``serve_in_thread`` (an app on hypercorn in a background thread),
``LoopbackServers`` (a fixture's worth of apps made of fixed plugins and
scripted backends), ``ServerProcess`` (an app in its own process, to kill),
``RedisServer`` (a real redis-server), ``free_port``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from ..hookspecs import Backend
from .model import unavailable
from .scripted import BackendPlugin, ScriptedBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An app served by hypercorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> ServerThread:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 2.0
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            stop = self._stop = asyncio.Event()

            async def main() -> None:
                started.set()
                await serve(self.app, config, shutdown_trigger=stop.wait)

            try:
                loop.run_until_complete(main())
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which re-raises it
                self._error = exc
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"adyton-test-server-{self.port}", daemon=True)
        self._thread.start()
        started.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"server failed to start: {self._error!r}") from self._error
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.02)
        raise RuntimeError("server did not start listening in time")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[ServerThread]:
    with ServerThread(app) as server:
        yield server


class LoopbackServers:
    """Start apps made of some fixed plugins (a wire format, say) and scripted
    backends, each on its own loopback port; ``stop_all()`` stops them. A
    test fixture for a wire format::

        @pytest.fixture
        def serve(tmp_path):
            servers = LoopbackServers(tmp_path / "home", my_wire_plugin)
            yield servers          # serve(ScriptedBackend([...]), settings={...})
            servers.stop_all()
    """

    def __init__(self, home: str | os.PathLike[str], *plugins: Any) -> None:
        self.home = os.fspath(home)
        self.plugins = plugins
        self.servers: list[ServerThread] = []

    def __call__(self, *backends: Backend, plugins: Sequence[Any] = (),
                 settings: dict[str, Any] | None = None) -> ServerThread:
        """Serve the fixed plugins, ``plugins`` and ``backends`` (default: one
        ``ScriptedBackend()``), with ``settings`` over ``{"home": home}``."""
        from ..app import create_app

        app = create_app(
            settings={"home": self.home, **(settings or {})},
            plugins=[*self.plugins, BackendPlugin(*(backends or (ScriptedBackend(),))), *plugins],
            load_entrypoints=False,
        )
        server = ServerThread(app).start()
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()


class RedisServer:
    """A real ``redis-server`` (Debian's, ``make redis``) on a free loopback
    port, without persistence: ``start()``, ``url``, ``command(...)`` (needs the
    ``redis`` client package), ``stop()`` (a kill: tests may also pause, kill
    and restart it). A missing ``redis-server`` is ``unavailable`` (skipped, or
    failed under ``ADYTON_REQUIRE_MODEL``)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server is not installed (make redis, or apt-get install redis-server)")
        self.exe = exe
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def command(self, *args: str) -> Any:
        import redis

        with contextlib.closing(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)) as client:
            return client.execute_command(*args)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServerProcess:
    """An app served by hypercorn in its own process on 127.0.0.1, for tests
    that ``kill -9`` the server: ``factory`` ("module:function", importable
    from ``path``) is called with ``kwargs`` (JSON-able) and returns the app
    (``python -m adyton.testing.serve``). ``start()`` waits until ``/health``
    answers 200; ``proc`` is the ``subprocess.Popen``."""

    def __init__(self, factory: str, kwargs: dict[str, Any] | None = None, *, port: int | None = None,
                 path: str | os.PathLike[str] | None = None) -> None:
        self.factory = factory
        self.kwargs = kwargs or {}
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.path is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (os.fspath(self.path), env.get("PYTHONPATH")) if p)
        self.proc = proc = subprocess.Popen(
            [sys.executable, "-m", "adyton.testing.serve", str(self.port), self.factory, json.dumps(self.kwargs)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server ({self.factory}) exited with {proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                if r.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server ({self.factory}) did not answer /health within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
