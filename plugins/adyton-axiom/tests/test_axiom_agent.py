"""examples/axiom_agent.py against a real server (hypercorn socket): a
scripted model that behaves, one that talks garbage, one that tries to
write outside the working directory, and (when adyton-llama and the model
file are there) the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from axiom_helpers import ACCOUNT, RoutedBackend

from adyton.testing import ScriptedBackend

REPO = Path(__file__).resolve().parents[3]
AGENT = REPO / "examples" / "axiom_agent.py"
DEV = "You are a Developer Agent"
CRITIC = "You are a Senior Code Reviewer"

CREATE = json.dumps({"action": "create_file", "path": "hello.py", "content": "print('hello')\n"})
PASS = json.dumps({"status": "PASS"})
FAIL = json.dumps({"status": "FAIL", "feedback": "print a newline too"})


def run_agent(server, workdir: Path, *args: str, env_account: bool = False, timeout: float = 120,
              model: str = "scripted-model") -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("ADYTON_URL", "AXIOM_ACCOUNT_NUMBER", "AXIOM_MODEL")}
    cmd = [sys.executable, str(AGENT), "--task", "write hello.py", "--workdir", str(workdir),
           "--timeout", "60", "--retries", "1", *args]
    if env_account:
        env["ADYTON_URL"] = server.base_url
        env["AXIOM_ACCOUNT_NUMBER"] = ACCOUNT
        env["AXIOM_MODEL"] = model
    else:
        cmd += ["--url", server.base_url, "--account-number", ACCOUNT, "--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, (proc.returncode, proc.stdout, proc.stderr)
    return proc, json.loads(results[-1][len("RESULT "):])


def test_agent_creates_file_and_critic_passes(serve, tmp_path):
    backend = RoutedBackend([(CRITIC, [PASS]), (DEV, [CREATE])])
    server = serve(backend)
    workdir = tmp_path / "work"
    proc, result = run_agent(server, workdir, "--max-steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert result["status"] == "pass"
    assert result["files"] == ["hello.py"]
    assert (workdir / "hello.py").read_text() == "print('hello')\n"
    assert backend.calls == {DEV: 1, CRITIC: 1}
    # the critic saw the task and the file, under its own system prompt
    critic_prompt = next(p for p in backend.prompts if CRITIC in p)
    assert "<system>" + CRITIC in critic_prompt and "print('hello')" in critic_prompt


def test_agent_takes_url_and_account_from_env(serve, tmp_path):
    server = serve(RoutedBackend([(CRITIC, [PASS]), (DEV, [CREATE])]),
                   settings={"models": {"aliases": {"qwen3_4b": "scripted-model"}}})
    proc, result = run_agent(server, tmp_path / "w", env_account=True, model="qwen3_4b")
    assert proc.returncode == 0, proc.stderr
    assert result["status"] == "pass"


def test_agent_feedback_loop(serve, tmp_path):
    backend = RoutedBackend([(CRITIC, [FAIL, PASS]), (DEV, [CREATE])])
    server = serve(backend)
    proc, result = run_agent(server, tmp_path / "w", "--max-steps", "4")
    assert proc.returncode == 0, proc.stderr
    assert result["status"] == "pass" and result["reviews"] == ["FAIL", "PASS"]
    # the second developer call carried the critic's feedback
    dev_prompts = [p for p in backend.prompts if DEV in p]
    assert "CRITIC FEEDBACK: print a newline too" in dev_prompts[1]


def test_agent_recovers_from_garbage(serve, tmp_path):
    backend = RoutedBackend([(CRITIC, ["lgtm I guess"]), (DEV, ["Sure! Here is some code: def f(: {oops"])])
    server = serve(backend)
    workdir = tmp_path / "w"
    proc, result = run_agent(server, workdir, "--max-steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert result["status"] == "max_steps"
    assert result["steps"] == 3 and result["invalid_replies"] == 3
    assert backend.calls == {DEV: 3}
    assert list(workdir.iterdir()) == []
    # it asked for JSON again, showing the model its own reply
    assert "not a valid JSON object" in backend.prompts[-1]


def test_agent_recovers_from_garbage_critic(serve, tmp_path):
    backend = RoutedBackend([(CRITIC, ["looks fine to me"]), (DEV, ["```json\n" + CREATE + "\n```"])])
    server = serve(backend)
    proc, result = run_agent(server, tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert result["status"] == "pass" and result["reviews"] == ["invalid"]
    assert backend.calls == {DEV: 1, CRITIC: 2}  # asked once more, then accepted


@pytest.mark.parametrize("path", ["../escape.py", "/tmp/adyton-axiom-escape.py", "a/../../escape.py",
                                  "..\\escape.py", "~/escape.py", "", "link/escape.py"])
def test_agent_never_writes_outside_workdir(serve, tmp_path, path):
    evil = json.dumps({"action": "create_file", "path": path, "content": "pwned"})
    backend = RoutedBackend([(CRITIC, [PASS]), (DEV, [evil])])
    server = serve(backend)
    workdir = tmp_path / "box" / "work"
    workdir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (workdir / "link").symlink_to(outside)
    before = set(tmp_path.rglob("*"))
    proc, result = run_agent(server, workdir, "--max-steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert result["refused_paths"] == 2 and result["files"] == []
    assert set(tmp_path.rglob("*")) == before
    assert not Path("/tmp/adyton-axiom-escape.py").exists()


def test_agent_stops_on_401(serve, tmp_path):
    from adyton import Authenticator, Unauthorized, hookimpl

    class NoOne(Authenticator):
        name = "no-one"

        async def authenticate(self, credentials):
            raise Unauthorized("unknown account number", code="invalid_account_number")

    class Plugin:
        __name__ = "no-one"

        @hookimpl
        def register_authenticators(self, register, kernel):
            register(NoOne())

    server = serve(ScriptedBackend(), plugins=[Plugin()])
    proc, result = run_agent(server, tmp_path / "w")
    assert proc.returncode == 1
    assert result["status"] == "error" and result["http_status"] == 401
    assert "unknown account number" in proc.stderr


def test_agent_stops_on_unknown_model_listing_names(serve, tmp_path):
    server = serve(ScriptedBackend())
    proc, result = run_agent(server, tmp_path / "w", model="qwen3_4b")
    assert proc.returncode == 1
    assert result["http_status"] == 404
    assert "scripted-model" in proc.stderr


def test_agent_refuses_bad_account_number(tmp_path):
    proc = subprocess.run([sys.executable, str(AGENT), "--task", "x", "--account-number", "123",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "AXIOM_ACCOUNT_NUMBER"})
    assert proc.returncode == 2
    assert "64-digit account number" in proc.stderr


def test_extract_json_variants():
    sys.path.insert(0, str(AGENT.parent))
    try:
        import axiom_agent
    finally:
        sys.path.remove(str(AGENT.parent))
    ej = axiom_agent.extract_json
    assert ej('{"a": 1}') == {"a": 1}
    assert ej('Here: {"action": "complete"} and {"b": 2}') == {"action": "complete"}
    assert ej("```json\n{\"status\": \"PASS\"}\n```") == {"status": "PASS"}
    assert ej("{broken {\"ok\": true}") == {"ok": True}
    assert ej("no json here") is None
    assert ej("[1, 2]") is None
    assert ej("{" * 5000) is None


# -- the real default model (when adyton-llama has landed) ----------------------------

@pytest.mark.slow
def test_agent_with_the_real_default_model(tmp_path, monkeypatch):
    """The issue's end-to-end check: the real tiny model for a bounded number
    of steps; it may never produce valid JSON, so the recovery path must
    carry the run to its end without errors."""
    pytest.importorskip("adyton_llama", reason="adyton-llama is not installed (needed for ADYTON_TEST_MODEL)")
    import adyton_axiom
    from adyton import create_app
    from adyton.testing import ServerThread, link_model

    # adyton-llama serves the *.gguf files of its [llama] models_dir
    models = link_model(tmp_path / "models")
    # the installed llama backend (entry point), this wire format as an object
    monkeypatch.setenv("ADYTON_LOAD_PLUGINS", "llama")
    app = create_app(settings={"home": str(tmp_path / "home"), "llama": {"models_dir": str(models)},
                               "axiom": {"max_tokens": 48}}, plugins=[adyton_axiom])
    kernel = app.extensions["adyton"]
    names = [info.id for _, info in kernel.list_models()]
    assert names == ["smollm2-135m-instruct"], names
    with ServerThread(app) as server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the default model loads at start
            if httpx.get(server.base_url + "/health", timeout=10).status_code == 200:
                break
            time.sleep(0.2)
        proc, result = run_agent(server, tmp_path / "work", "--max-steps", "2", "--timeout", "120",
                                 model=names[0], timeout=300)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert result["status"] in ("pass", "complete", "max_steps"), result
    assert 1 <= result["steps"] <= 2, result
    # the model really answered: at least one developer call per step
    assert result["calls"] >= result["steps"], result
    for name in result["files"]:  # whatever it wrote stayed inside the workdir
        assert (tmp_path / "work" / name).resolve().is_relative_to((tmp_path / "work").resolve())


# -- examples/axiom_curl.sh -------------------------------------------------------------

CURL = REPO / "examples" / "axiom_curl.sh"


def _curl_env(server, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("AXIOM_ACCOUNT_NUMBER", "AXIOM_MODEL")}
    env.update({"ADYTON_URL": server.base_url, **extra})
    return env


@pytest.mark.skipif(not __import__("shutil").which("curl"), reason="curl is not installed")
def test_curl_example(serve):
    backend = ScriptedBackend()
    server = serve(backend, settings={"models": {"aliases": {"qwen3_4b": "scripted-model"}}})
    proc = subprocess.run(["sh", str(CURL), 'say "hi" \\ please'], capture_output=True, text=True, timeout=60,
                          env=_curl_env(server, AXIOM_ACCOUNT_NUMBER=ACCOUNT))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"message": "Hello, world!"}
    assert "You are a helpful programming assistant" in backend.prompts[-1]
    assert 'say "hi" \\ please' in backend.prompts[-1]


def test_curl_example_needs_an_account_number(serve):
    server = serve()
    proc = subprocess.run(["sh", str(CURL)], capture_output=True, text=True, timeout=60,
                          env=_curl_env(server, AXIOM_ACCOUNT_NUMBER="123"))
    assert proc.returncode == 2 and "64 digits" in proc.stderr
