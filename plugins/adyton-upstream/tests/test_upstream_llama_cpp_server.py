"""adyton in front of llama-cpp-python's own OpenAI server (``python -m
llama_cpp.server``, the ``[server]`` extra adyton-llamacpp's tests install)
serving the real default model: the differences from vLLM / llama-server
that adyton-upstream must get right with a real engine.

* Its streams carry no usage (``stream_options`` is ignored): the usage is
  the chunks counted, exactly the tokens of a plain-text answer, never the
  empty last chunk of a choice cut at its length.
* It runs one request at a time and answers ``GET /v1/models`` only between
  them: a long generation must not get its replica taken out by a health
  check that waits for it.
* With its defaults (``interrupt_requests``) a request arriving while one
  streams — a health check too — ends that stream with ``[DONE]`` and no
  finish_reason: the client must get an error, not a short answer.
* A prompt past its context, streamed, gets an empty 200 stream (its 400
  comes only without streaming): the engine's refusal must reach the
  client, and no replica be taken out for the caller's mistake.
* It refuses OpenAI's ``{"type": "json_schema"}`` response_format (with a
  500): dialect "llama-cpp-python" sends llama.cpp's ``{"type":
  "json_object", "schema": ...}``.

A missing llama_cpp.server skips this module for a developer and fails it
under ``make test`` (ADYTON_REQUIRE_MODEL).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from upstream_helpers import metric

from adyton.testing import free_port, require_model, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]

ALIAS = "smollm2-135m-instruct"
USER = [{"role": "user", "content": "Name three colours."}]


def _server_importable() -> None:
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        unavailable("llama-cpp-python's server cannot be imported "
                    f"({(probe.stderr.strip().splitlines() or ['?'])[-1]}): make install-test installs it")


@contextlib.contextmanager
def _engine(log: Path, *flags: str):
    """``python -m llama_cpp.server`` on the default model, one thread: its base URL."""
    model = require_model()
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                 "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
                                 "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", *flags],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "llama_cpp.server did not start within 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    _server_importable()
    with _engine(tmp_path_factory.mktemp("engine") / "engine.log", "--interrupt_requests", "false") as url:
        yield url


def _models(url: str) -> dict:
    return {"smol": {"replicas": [url], "upstream_model": ALIAS, "dialect": "llama-cpp-python"}}


def _stream(base_url: str, max_tokens: int) -> tuple[list[str], list[dict]]:
    """A streamed chat through ``base_url``: its content deltas and all its events."""
    body = {"model": "smol", "messages": USER, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[len("data: "):]))
    deltas = [c["delta"]["content"] for e in events for c in e.get("choices") or () if c["delta"].get("content")]
    return deltas, events


def test_its_streams_carry_no_usage_and_the_chunks_are_counted(engine, front):
    raw = httpx.post(engine + "/v1/chat/completions", timeout=60, json={
        "model": ALIAS, "messages": USER, "max_tokens": 8, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}}).text
    assert '"usage"' not in raw and "data: [DONE]" in raw  # (what the engine does: the reason for the count)
    proxy = front(_models(engine))
    deltas, events = _stream(proxy.base_url, 8)
    usage = events[-1]["usage"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    # 8 tokens, 8 chunks, 8 counted (not 9: the engine's empty last chunk is no token)
    assert len(deltas) == usage["completion_tokens"] == 8, (deltas, usage)
    r = httpx.post(proxy.base_url + "/v1/chat/completions", timeout=60, json={
        "model": "smol", "messages": USER, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8 and r.json()["choices"][0]["finish_reason"] == "length"
    # (its logprobs: one entry per chunk, each a token)
    tokens = r.json()["choices"][0]["logprobs"]["content"]
    assert len(tokens) == 8 and "".join(t["token"] for t in tokens) == r.json()["choices"][0]["message"]["content"]
    # the engine's own count of a non-streamed answer agrees
    direct = httpx.post(engine + "/v1/chat/completions", timeout=60,
                        json={"model": ALIAS, "messages": USER, "max_tokens": 8, "temperature": 0}).json()
    assert direct["usage"]["completion_tokens"] == 8


def test_a_long_generation_keeps_its_replica_in_service(engine, front):
    """The engine answers the health check's GET /v1/models only once the
    generation is over (seconds): that wait is no failure."""
    proxy = front(_models(engine), health_interval_s=0.2, connect_timeout_s=0.5, backoff_s=30)
    up, last = [], ""
    with httpx.stream("POST", proxy.base_url + "/v1/chat/completions", timeout=120, json={
            "model": "smol", "messages": [{"role": "user", "content": "Write a long story about a ship."}],
            "max_tokens": 200, "temperature": 0, "stream": True}) as response:
        assert response.status_code == 200
        for n, line in enumerate(response.iter_lines()):
            if n % 40 == 0:
                up.append(metric(proxy.base_url, "adyton_upstream_replica_up", replica=engine))
            if line.startswith("data: {"):
                last = line
    started = time.monotonic()
    assert httpx.get(engine + "/v1/models", timeout=30).status_code == 200
    assert time.monotonic() - started < 5  # (idle again: it answers at once)
    assert len(up) >= 3 and set(up) == {1.0}, up
    assert json.loads(last[len("data: "):])["choices"][0]["finish_reason"] == "length", last
    assert metric(proxy.base_url, "adyton_upstream_errors_total") == 0


def test_a_stream_it_interrupts_is_an_error_not_a_short_answer(front, tmp_path):
    """llama-cpp-python's default: a request arriving while one streams
    (here the GET /v1/models a health check sends, once the first token is
    through) ends that stream with [DONE] and no finish_reason."""
    import threading

    _server_importable()
    with _engine(tmp_path / "engine.log") as url:
        proxy = front(_models(url), health_interval_s=60)
        time.sleep(0.5)  # (the proxy's first health check, at its start, is over)
        body = {"model": "smol", "messages": USER, "max_tokens": 400, "temperature": 0, "stream": True}
        events, poke = [], threading.Thread(target=lambda: httpx.get(url + "/v1/models", timeout=60))
        with httpx.stream("POST", proxy.base_url + "/v1/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[len("data: "):]))
                    if poke.ident is None and any(c["delta"].get("content") for c in events[-1].get("choices") or ()):
                        poke.start()
        poke.join(60)
        deltas = [c["delta"]["content"] for e in events for c in e.get("choices") or () if c["delta"].get("content")]
        assert 0 < len(deltas) < 400, len(deltas)  # cut by the other request
        assert events[-1]["error"]["code"] == "upstream_error", events[-1]
        assert "no finish_reason" in events[-1]["error"]["message"]
        assert not any(c.get("finish_reason") for e in events for c in e.get("choices") or ())


def test_a_prompt_past_its_context_is_the_engines_400_and_no_replica_failure(engine, front):
    """Streaming, it refuses such a prompt with an empty 200 stream (its
    check runs once the stream has begun); not streaming, with a 400
    context_length_exceeded. adyton asks again without streaming and passes
    the 400 on: the caller's mistake takes no replica out of service."""
    long = [{"role": "user", "content": "word " * 2500}]  # past --n_ctx 2048
    raw = httpx.post(engine + "/v1/chat/completions", timeout=60,
                     json={"model": ALIAS, "messages": long, "max_tokens": 4, "stream": True})
    assert raw.status_code == 200 and raw.text.strip() == ""  # (what the engine does)
    proxy = front(_models(engine), health_interval_s=60, backoff_s=30)
    for stream in (False, True):
        r = httpx.post(proxy.base_url + "/v1/chat/completions", timeout=60,
                       json={"model": "smol", "messages": long, "max_tokens": 4, "stream": stream})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_refused" and "context" in error["message"], error
    assert metric(proxy.base_url, "adyton_upstream_replica_up", replica=engine) == 1
    r = httpx.post(proxy.base_url + "/v1/chat/completions", timeout=60,
                   json={"model": "smol", "messages": USER, "max_tokens": 4})
    assert r.status_code == 200, r.text


def test_a_json_schema_goes_in_llama_cpps_form_and_is_verified(engine, front):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}},
              "required": ["colour"], "additionalProperties": False}
    proxy = front(_models(engine))
    r = httpx.post(proxy.base_url + "/v1/chat/completions", timeout=120, json={
        "model": "smol", "messages": [{"role": "user", "content": "Name a colour as JSON."}], "max_tokens": 40,
        "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    assert r.status_code == 200, r.text
    value = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(value) == {"colour"} and isinstance(value["colour"], str)
