"""Faults get the wire format's own errors: garbage, a cut stream, silence,
a 429, every replica down; and what maps to the engine's parameters and what
is refused, with guided output verified before it is returned."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from upstream_helpers import FaultServer, chat, metric, sse_events

import adyton_limits
from adyton.testing import ScriptedBackend

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}


def _models(*urls, **opts):
    return {"remote": {"replicas": list(urls), **opts}}


def _post(server, body, **kw):
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30, **kw)


@pytest.mark.parametrize("mode, status, code", [
    ("garbage", 502, "upstream_error"),
    ("500", 502, "upstream_error"),
    ("silent", 504, "upstream_timeout"),
])
def test_a_bad_upstream_is_a_gateway_error_naming_the_model(front, mode, status, code):
    with FaultServer(mode, silence_s=3) as fault:
        proxy = front(_models(fault.url), read_timeout_s=1, health_interval_s=60, backoff_s=0.2)
        for stream in (False, True):
            time.sleep(0.3)  # (the replica failed the last time: wait out its back-off)
            r = _post(proxy, chat(stream=stream))
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert error["code"] == code and "'remote'" in error["message"]
            if mode == "silent":
                break  # (one is enough: each costs the timeout)


def test_an_upstream_429_is_passed_on_with_its_retry_after(front):
    with FaultServer("429") as fault:
        proxy = front(_models(fault.url))
        for stream in (False, True):
            r = _post(proxy, chat(stream=stream))
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"] == "17"
            assert "slow down" in r.json()["error"]["message"]
        # a 429 is the engine's answer, not a failure: the replica stays in service
        assert metric(proxy.base_url, "adyton_upstream_replica_up", replica=fault.url) == 1


def test_every_replica_down_is_503_with_retry_after(front):
    with FaultServer() as gone:
        url = gone.url
    proxy = front(_models(url, url.replace("127.0.0.1", "localhost")), health_interval_s=60, backoff_s=30)
    for attempt in range(2):
        r = _post(proxy, chat(stream=attempt == 1))
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert "'remote'" in r.json()["error"]["message"]


def test_a_stream_cut_after_its_first_token_ends_in_band_and_charges_what_was_delivered(front, tmp_path):
    with FaultServer("cut") as fault:
        proxy = front(_models(fault.url), plugins=[adyton_limits], health_interval_s=60, backoff_s=0.2)
        key = (tmp_path / "front-0" / "limits" / "admin.key").read_text().strip()
        admin = httpx.Client(base_url=proxy.base_url + "/admin", headers={"Authorization": f"Bearer {key}"})
        account = admin.post("/accounts", json={"tier": 5}).json()
        auth = {"Authorization": f"Bearer {account['api_key']}"}
        r = _post(proxy, chat(), headers=auth)
        assert r.status_code == 502 and "cut" in r.json()["error"]["message"]
        time.sleep(0.3)  # (the replica failed: wait out its back-off)
        with httpx.stream("POST", proxy.base_url + "/v1/chat/completions", json=chat(stream=True),
                          headers=auth, timeout=30) as s:
            assert s.status_code == 200  # the first token was on its way: the error comes in-band
            events = sse_events(s)
        text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
        assert text == "Hello"
        assert events[-1]["error"]["code"] == "upstream_error"
        rows = admin.get("/usage", params={"account": account["id"]}).json()["usage"]
        # two pieces each arrived; the prompt counts once the engine answered; nothing more is kept
        assert [(r["outcome"], r["requests"], r["completion_tokens"]) for r in rows] == [("error", 2, 4)]
        admin.close()


def test_done_without_a_finish_reason_is_a_cut_stream_not_a_short_answer(front):
    """llama-cpp-python's server (interrupt_requests, its default) ends a
    stream with ``[DONE]`` and no finish_reason when the next request
    arrives: the choice was given up, and the client must not get a 200
    answer that silently stops mid-way."""
    with FaultServer("interrupted") as fault:
        proxy = front(_models(fault.url), health_interval_s=60, backoff_s=0.2)
        r = _post(proxy, chat())
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_error" and "no finish_reason" in error["message"], error
        time.sleep(0.3)  # (the replica failed: wait out its back-off)
        with httpx.stream("POST", proxy.base_url + "/v1/chat/completions", json=chat(stream=True),
                          timeout=30) as s:
            assert s.status_code == 200
            events = sse_events(s)
        assert events[-1]["error"]["code"] == "upstream_error"
        assert not any(c.get("finish_reason") for e in events for c in e.get("choices", []))


def test_json_schema_maps_to_response_format_and_is_verified(front):
    with FaultServer(pieces=['{"a"', ": 1}"]) as good, FaultServer(pieces=['{"a"', ': "x"}']) as bad:
        proxy = front({"ok": {"replicas": [good.url]}, "bad": {"replicas": [bad.url]}})
        fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
        r = _post(proxy, chat(model="ok", response_format=fmt))
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"a": 1}
        assert r.json()["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
        sent = good.bodies[-1]
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "thing", "schema": SCHEMA, "strict": True}}
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        # the bad replica's output never reaches the client, streaming or not
        for stream in (False, True):
            r = _post(proxy, chat(model="bad", response_format=fmt, stream=stream))
            assert r.status_code == 502, r.text
            error = r.json()["error"]
            assert error["code"] == "verification_failed" and "'bad'" in error["message"]
            assert '"x"' not in r.text.split("message")[0]
        r = _post(proxy, chat(model="ok", response_format={"type": "json_object"}))
        assert r.status_code == 200 and good.bodies[-1]["response_format"] == {"type": "json_object"}


def test_features_that_need_logits_map_or_are_refused_naming_the_model(front, upstreams):
    up = upstreams(ScriptedBackend(["Hello", ",", " world", "!"]))
    with FaultServer() as fault:
        proxy = front({"remote": {"replicas": [up.base_url], "upstream_model": "scripted-model"},
                       "plain": {"replicas": [fault.url], "logprobs": False, "logit_bias": False},
                       "vllm": {"replicas": [fault.url], "dialect": "vllm"}})
        # logprobs map to the engine's own
        r = _post(proxy, chat(logprobs=True, top_logprobs=2, temperature=0))
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["logprobs"]["content"]
        assert [c["token"] for c in content] == ["Hello", ",", " world", "!"]
        assert all(len(c["top_logprobs"]) == 2 and c["logprob"] <= 0 for c in content)
        refused = [
            (chat(model="plain", logprobs=True), "logprobs"),
            (chat(model="plain", logit_bias={"5": 1}), "logit_bias"),
            (chat(model="remote", top_k=5), "top_k"),
        ]
        for body, param in refused:
            r = _post(proxy, body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param and f"'{body['model']}'" in r.json()["error"]["message"]
        assert fault.bodies == []  # refused before anything went upstream
        # logit_bias and vLLM's extensions are passed on where the engines take them
        assert _post(proxy, chat(model="remote", logit_bias={"3": 5})).status_code == 200
        r = _post(proxy, chat(model="vllm", top_k=5, min_p=0.1, repetition_penalty=1.1))
        assert r.status_code == 200, r.text
        sent = fault.bodies[-1]
        assert (sent["top_k"], sent["min_p"], sent["repetition_penalty"]) == (5, 0.1, 1.1)


def test_the_llama_cpp_python_dialect_maps_what_its_server_takes(front):
    with FaultServer(pieces=['{"a"', ": 1}"]) as engine:
        proxy = front({"remote": {"replicas": [engine.url], "dialect": "llama-cpp-python"}})
        r = _post(proxy, chat(top_k=5, min_p=0.1, repetition_penalty=1.1, min_tokens=2))
        assert r.status_code == 200, r.text
        sent = engine.bodies[-1]
        assert (sent["top_k"], sent["min_p"], sent["repeat_penalty"], sent["min_tokens"]) == (5, 0.1, 1.1, 2)
        # a JSON schema in llama.cpp's form (its server answers OpenAI's with a 500)
        fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
        r = _post(proxy, chat(response_format=fmt))
        assert r.status_code == 200 and json.loads(r.json()["choices"][0]["message"]["content"]) == {"a": 1}
        assert engine.bodies[-1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
        # chat template variables: it would ignore them in a request, so they are refused
        n = len(engine.bodies)
        r = _post(proxy, chat(chat_template_kwargs={"enable_thinking": False}))
        assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs", r.text
        assert "'remote'" in r.json()["error"]["message"] and len(engine.bodies) == n


def test_regex_and_choice_map_to_vllm_guided_parameters_and_are_verified(front):
    import adyton_guided  # the front's own guided plugin: its policies become constraints for the engines

    with FaultServer(pieces=["ab", "c"]) as engine:
        proxy = front({"vllm": {"replicas": [engine.url], "dialect": "vllm"},
                       "plain": {"replicas": [engine.url]}}, plugins=[adyton_guided])
        fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
        for model, policy, status in [
            ("vllm", {"regex_pattern": "[a-c]+"}, 200),
            ("vllm", {"regex_pattern": "[a-b]+"}, 502),   # "abc" does not match: not passed on
            ("vllm", {"choices": ["abc", "xyz"]}, 200),
            ("plain", {"regex_pattern": "[a-c]+"}, 400),  # only vLLM engines take guided_regex
        ]:
            r = httpx.post(proxy.base_url + "/sampling/generate", json={"model": model, "prompt": "x", **policy},
                           timeout=30)
            assert r.status_code == status, (policy, r.text)
            if status == 200:
                assert r.json()["output"] == "abc"
                assert r.json()["accepted"] is True  # verified here
                assert r.json()["verification"]["enforced_by"] == "upstream"
            if status == 400:
                assert "'plain'" in r.text
        sent = [b for b in engine.bodies if "guided_regex" in b or "guided_choice" in b]
        assert sent[0]["guided_regex"] == "[a-c]+" and sent[-1]["guided_choice"] == ["abc", "xyz"]
        # response_format with adyton-guided installed in front still maps to the engine
        r = _post(proxy, chat(model="plain", response_format=fmt))
        assert r.status_code == 502 and "verification_failed" in r.text  # "abc" is not JSON
        assert engine.bodies[-1]["response_format"]["type"] == "json_schema"


def test_an_engine_that_answers_without_streaming_is_taken_as_one_piece(front):
    with FaultServer("json_answer", pieces=["Hello", " there"], usage=(5, 2)) as engine:
        proxy = front(_models(engine.url))
        r = _post(proxy, chat())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello there"
        assert r.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        r = httpx.post(proxy.base_url + "/v1/completions", json={"model": "remote", "prompt": "x"}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Hello there"


def test_health_checks_take_a_replica_out_and_put_it_back(front):
    def up(proxy, replica):
        return metric(proxy.base_url, "adyton_upstream_replica_up", replica=replica)

    def wait_for(check, seconds=10):
        deadline = time.monotonic() + seconds
        while not check() and time.monotonic() < deadline:
            time.sleep(0.05)
        return check()

    with FaultServer() as engine:
        engine.healthy = False
        proxy = front(_models(engine.url), health_interval_s=0.2, backoff_s=30)
        assert wait_for(lambda: up(proxy, engine.url) == 0)  # out, without any request
        r = _post(proxy, chat())
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert engine.bodies == []
        engine.healthy = True
        assert wait_for(lambda: up(proxy, engine.url) == 1)  # back long before its 30 s back-off
        assert _post(proxy, chat()).status_code == 200


def test_n_choices_are_one_upstream_request_each_with_their_own_seed(front):
    with FaultServer(pieces=["hi"], usage=(3, 1)) as engine:
        proxy = front(_models(engine.url))
        r = _post(proxy, chat(n=2, seed=5, temperature=0.7, stop=["\n"]))
        assert r.status_code == 200, r.text
        assert [c["message"]["content"] for c in r.json()["choices"]] == ["hi", "hi"]
        assert [(b["seed"], b["temperature"], b["stop"]) for b in engine.bodies] == [(5, 0.7, ["\n"]), (6, 0.7, ["\n"])]
        # the prompt once (as OpenAI reports it for n > 1), every choice's completion
        assert r.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
