"""The deployment of docs/deploy.md, "Several machines", started on loopback
from the files in deploy/: PostgreSQL (Debian's, a throw-away cluster:
adyton.testing.postgres), Redis (``redis-server``), adyton servers started
from ``deploy/systemd/adyton@.service`` (each with its environment file,
all reading one settings file rendered from ``deploy/adyton.toml``), nginx
(Debian's) running ``deploy/nginx/adyton.conf`` in front, and the engines
adyton-upstream forwards to: llama-cpp-python's own OpenAI server
(``python -m llama_cpp.server``, a real third-party engine serving the
default GGUF, started with the flags docs/deploy.md gives), or, where
llama-cpp-python's ``[server]`` extra is not installed, adyton serving the
default model with adyton-llama (issue #16's "else a second adyton"; under
``make test``, ADYTON_REQUIRE_MODEL, a missing llama_cpp.server is an
error instead).

The deploy files are used as they are; only the addresses are this
machine's: the settings file's database URL, Redis URI, admin key file and
engine replicas, nginx's ``listen`` port and upstream ``server`` lines, and
the install prefixes (/opt/adyton/venv → this venv, /etc/adyton and
/var/lib/adyton → a temporary directory).

Every process is started with its output in ``<root>/logs``, every wait is
bounded, and ``Stack.close()`` (or leaving the ``with`` block) kills what
is left. Used by tests/deploy/test_deploy.py and tests/bench/two_servers.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy_units import service_command, systemd_verify  # beside this file (tests/deploy)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "adyton@.service"
VENV = Path(sys.prefix)
#: what systemd gives a service: a minimal environment, not the caller's
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


#: the engines' name for the default model (deploy/adyton.toml's upstream_model)
ENGINE_MODEL = "smollm2-135m-instruct"


class StackError(RuntimeError):
    """A part of the deployment could not be started (the message says which, and its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
    """One request: (status, headers, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode("utf-8", "replace")


class Proc:
    """A started process, its log file, and a bounded stop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None, log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - the process writes to it until stop()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would (the test's "kill -9")."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log_file.close()


@functools.cache
def llama_cpp_server_missing() -> str:
    """Why llama-cpp-python's server cannot run in this venv ("" if it can):
    its app imported in a child process (it loads llama.cpp and fastapi)."""
    result = subprocess.run([str(VENV / "bin" / "python"), "-c", "import llama_cpp.server.app"],
                            capture_output=True, text=True, timeout=120)
    return "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]


def wait_until(check, timeout: float, what: str, proc: Proc | None = None, interval: float = 0.1) -> Any:
    """Call ``check()`` until it returns something truthy; StackError after
    ``timeout`` seconds or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, urllib.error.URLError, ValueError):
            value = None
        if value:
            return value
        if proc is not None and not proc.alive():
            raise StackError(f"{what}: {proc.name} exited with {proc.popen.returncode}\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready within {timeout:.0f}s" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(interval)


def set_toml_value(text: str, section: str, key: str, value: Any) -> str:
    """``text`` with ``key = ...`` of ``[section]`` set to ``value`` (a JSON
    value is a TOML value for strings, numbers and lists of them)."""
    lines = text.splitlines(keepends=True)
    current = None
    for i, line in enumerate(lines):
        header = re.match(r"^\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
            continue
        m = re.match(rf"^({re.escape(key)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", line.rstrip("\n"))
        if current == section and m:
            lines[i] = m.group(1) + json.dumps(value) + m.group(3) + "\n"
            return "".join(lines)
    raise StackError(f"deploy/adyton.toml: no key {key} in [{section}]")


def nginx_site(conf: str, listen_port: int, servers: list[int]) -> str:
    """deploy/nginx/adyton.conf with this machine's ports: its ``listen`` and
    the ``server`` lines of ``upstream adyton`` (their parameters kept)."""
    conf, n = re.subn(r"^(\s*)listen\s+\d+;", rf"\g<1>listen 127.0.0.1:{listen_port};", conf, count=1,
                      flags=re.MULTILINE)
    if n != 1:
        raise StackError("deploy/nginx/adyton.conf: no listen line")
    block = re.search(r"upstream adyton \{.*?\n\}", conf, re.DOTALL)
    if block is None:
        raise StackError("deploy/nginx/adyton.conf: no 'upstream adyton' block")
    server_line = re.compile(r"^(\s*)server\s+\S+?(\s[^;]*)?;\n", re.MULTILINE)
    first = server_line.search(block.group(0))
    if first is None:
        raise StackError("deploy/nginx/adyton.conf: no server line in the upstream block")
    indent, params = first.group(1), first.group(2) or ""
    ours = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in servers)
    # ours where the file's first server line is, the file's others removed
    body = server_line.sub(lambda m: ours if m.start() == first.start() else "", block.group(0))
    return conf.replace(block.group(0), body)


class Stack:
    """The parts of one deployment, under ``root`` (a temporary directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.etc = self.root / "etc" / "adyton"
        self.var = self.root / "var" / "lib" / "adyton"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.var.mkdir(parents=True, exist_ok=True)
        self.relocate = {"/opt/adyton/venv": str(VENV), "/etc/adyton": str(self.etc), "/var/lib/adyton": str(self.var)}
        self.procs: list[Proc] = []
        self.servers: dict[str, Proc] = {}
        self.server_ports: dict[str, int] = {}
        self.postgres = None
        self.admin_key = ""

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):  # teardown: stop the rest anyway
                proc.stop(timeout=10)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def _start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, argv, env, cwd, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    # -- Redis and PostgreSQL ----------------------------------------------------

    def start_redis(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError("redis-server is not installed (make redis)")
        port = free_port()
        proc = self._start("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], BASE_ENV)

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until(pong, 15, "redis-server", proc)
        return f"redis://127.0.0.1:{port}/0"

    def start_postgres(self) -> str:
        """A throw-away PostgreSQL cluster and a fresh database in it: its URL."""
        from adyton.testing.postgres import start_postgres

        self.postgres = start_postgres()
        return self.postgres.create_database("adyton")

    # -- engines (what adyton-upstream forwards to) ------------------------------

    def start_engine(self, name: str, models_dir: Path) -> str:
        """An OpenAI-compatible engine serving the default model (the one
        GGUF file in ``models_dir``) on a free port: its base URL.

        llama-cpp-python's own server (``python -m llama_cpp.server``, the
        ``[server]`` extra adyton-llamacpp's tests install) when it can be
        imported; else adyton serving the model with adyton-llama (issue #16:
        "else a second adyton"), but not under ``make test``
        (ADYTON_REQUIRE_MODEL): there a missing llama_cpp.server is a
        StackError, never a silent stand-in."""
        missing = llama_cpp_server_missing()
        if missing:
            if os.environ.get("ADYTON_REQUIRE_MODEL"):
                raise StackError(f"llama-cpp-python's server cannot be imported ({missing}): "
                                 "make install-test installs it (adyton-llamacpp's [test] extra)")
            return self.start_adyton_engine(name, models_dir)
        return self.start_llama_cpp_engine(name, models_dir)

    def start_llama_cpp_engine(self, name: str, models_dir: Path) -> str:
        """``python -m llama_cpp.server`` on the GGUF file in ``models_dir``,
        as docs/deploy.md starts it. The chat template is the GGUF's own
        (``tokenizer.chat_template``: no ``--chat_format``, llama-cpp-python
        uses the file's template when it names none); one request at a time,
        and ``--interrupt_requests false``: by default a request arriving
        while another streams (a health check's ``GET /v1/models`` too) ends
        that stream early with ``[DONE]``. Ready once ``GET /v1/models``
        answers (the model is loaded before the server listens)."""
        ggufs = sorted(Path(models_dir).glob("*.gguf"))
        if len(ggufs) != 1:
            raise StackError(f"engine {name}: expected one .gguf file in {models_dir}, found {len(ggufs)}")
        port = free_port()
        argv = [str(VENV / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(ggufs[0]),
                "--model_alias", ENGINE_MODEL, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "8192", "--n_threads", "1", "--n_threads_batch", "1",
                "--interrupt_requests", "false"]
        proc = self._start(name, argv, {**BASE_ENV, "HOME": str(self.root)})
        self.servers[name] = proc
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", url + "/v1/models", timeout=2)[0] == 200, 120, f"engine {name}", proc)
        return url

    def start_adyton_engine(self, name: str, models_dir: Path) -> str:
        """adyton serving the default model (openai, llama, guided): an
        OpenAI-compatible engine on a free port. Its base URL."""
        port = free_port()
        env = {**BASE_ENV, "HOME": str(self.root), "ADYTON_HOME": str(self.root / name),
               "ADYTON_LOAD_PLUGINS": "openai,llama,guided", "ADYTON_SERVER__PORT": str(port),
               "ADYTON_LLAMA__MODELS_DIR": str(models_dir), "ADYTON_QUEUE__MAX_WAITING": "256",
               "ADYTON_LOG_LEVEL": "warning"}
        proc = self._start(name, [str(VENV / "bin" / "adyton"), "serve"], env)
        self.servers[name] = proc
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", url + "/health", timeout=2)[0] == 200, 120, f"engine {name}", proc)
        return url

    # -- adyton servers from the unit file -------------------------------------

    def install_settings(self, values: dict[tuple[str, str], Any], extra: str = "") -> Path:
        """/etc/adyton/adyton.toml: deploy/adyton.toml with ``values`` set
        (``{("limits", "db_url"): url, ...}``) and ``extra`` TOML appended;
        /etc/adyton/admin.key: one admin key for every server."""
        text = (DEPLOY / "adyton.toml").read_text()
        for (section, key), value in values.items():
            text = set_toml_value(text, section, key, value)
        text += extra
        tomllib.loads(text)  # a rendering mistake fails here, not in a server
        path = self.etc / "adyton.toml"
        path.write_text(text)
        self.admin_key = "adm-" + secrets.token_urlsafe(32)
        key_file = self.etc / "admin.key"
        key_file.write_text(self.admin_key + "\n")
        key_file.chmod(0o600)
        return path

    def install_instance(self, instance: str, port: int, env: dict[str, str] | None = None) -> None:
        """/etc/adyton/<instance>.env: deploy/instance.env with this port."""
        text = (DEPLOY / "instance.env").read_text()
        text, n = re.subn(r"^ADYTON_SERVER__PORT=.*$", f"ADYTON_SERVER__PORT={port}", text, flags=re.MULTILINE)
        if n != 1:
            raise StackError("deploy/instance.env: no ADYTON_SERVER__PORT line")
        text += "".join(f"{k}={v}\n" for k, v in (env or {}).items())
        (self.etc / f"{instance}.env").write_text(text)

    def verify_unit(self) -> str | None:
        return systemd_verify(UNIT, "a", self.relocate, self.root / "units")

    def start_server(self, instance: str, port: int | None = None, argv: list[str] | None = None,
                     env: dict[str, str] | None = None, wait: bool = True) -> str:
        """``adyton@<instance>.service`` as systemd would start it (after
        writing its environment file). ``argv`` replaces the unit's command
        (the benchmark's scripted backend), environment kept. Its base URL."""
        port = port or free_port()
        self.install_instance(instance, port, env)
        cmd = service_command(UNIT, instance, self.relocate)
        for directory in cmd.state_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        proc = self._start(f"adyton@{instance}", argv or cmd.argv,
                           {**BASE_ENV, "HOME": str(cmd.cwd or self.root), **cmd.env}, cmd.cwd)
        self.servers[instance] = proc
        self.server_ports[instance] = port
        url = f"http://127.0.0.1:{port}"
        if wait:
            self.wait_healthy(instance)
        return url

    def wait_healthy(self, instance: str, timeout: float = 90) -> None:
        url = f"http://127.0.0.1:{self.server_ports[instance]}/health"
        wait_until(lambda: http("GET", url, timeout=2)[0] == 200, timeout, f"adyton@{instance}",
                   self.servers[instance])

    # -- nginx -----------------------------------------------------------------

    def start_nginx(self, instances: list[str], workers: str = "1", name: str = "nginx") -> str:
        """Debian's nginx with deploy/nginx/adyton.conf (this machine's ports,
        the upstream block listing ``instances``) inside a minimal main
        config, as a foreground process (``self.servers[name]``). Its base URL."""
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if exe is None:
            raise StackError("nginx is not installed (make nginx)")
        port = free_port()
        ngx = self.root / name
        for sub in ("conf", "tmp", "logs"):
            (ngx / sub).mkdir(parents=True, exist_ok=True)
        site = nginx_site((DEPLOY / "nginx" / "adyton.conf").read_text(), port,
                          [self.server_ports[i] for i in instances])
        (ngx / "conf" / "adyton.conf").write_text(site)
        user = f"user {os.environ.get('USER') or 'root'};\n" if os.geteuid() == 0 else ""
        main = (f"{user}daemon off;\nworker_processes {workers};\npid {ngx}/nginx.pid;\n"
                f"error_log {ngx}/logs/error.log warn;\n"
                "events { worker_connections 4096; }\n"
                "http {\n  access_log off;\n"
                + "".join(f"  {kind}_temp_path {ngx}/tmp/{kind};\n"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
                + f"  include {ngx}/conf/adyton.conf;\n}}\n")
        (ngx / "conf" / "nginx.conf").write_text(main)
        test = subprocess.run([exe, "-t", "-p", str(ngx), "-c", str(ngx / "conf" / "nginx.conf"),
                               "-e", str(ngx / "logs" / "error.log")], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise StackError(f"nginx -t refused the configuration:\n{test.stderr}")
        proc = self._start(name, [exe, "-p", str(ngx), "-c", str(ngx / "conf" / "nginx.conf"),
                                     "-e", str(ngx / "logs" / "error.log")], BASE_ENV)
        self.servers[name] = proc
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", url + "/health", timeout=2)[0] == 200, 30, name, proc)
        return url
