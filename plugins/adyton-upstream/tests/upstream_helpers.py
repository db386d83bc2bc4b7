"""Helpers of the adyton-upstream tests (the fixtures are in ``conftest.py``).

* ``chat``, ``sse_events``, ``metric``: a request body, a stream's events,
  one sample of ``/metrics``.
* ``FaultServer``: a tiny real HTTP server that misbehaves on purpose
  (garbage, a cut stream, silence, 429, 500) or plays a given stream of
  text pieces, recording the bodies it was sent. It is the fault, not a
  stand-in for the product.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def chat(text: str = "hi there", **kw: Any) -> dict[str, Any]:
    return {"model": "remote", "messages": [{"role": "user", "content": text}], **kw}


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of an OpenAI SSE stream (until [DONE])."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                break
            out.append(json.loads(line[6:]))
    return out


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 if absent)."""
    text = httpx.get(base_url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and want in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class FaultServer:
    """A real HTTP server on 127.0.0.1 with a chosen behaviour for
    ``POST /v1/chat/completions`` and ``/v1/completions``:

    * ``"pieces"``: a correct OpenAI SSE stream of ``pieces`` (text deltas),
      then finish "stop" and usage ``(prompt, completion)``;
    * ``"json_answer"``: ``pieces`` as one non-streaming completion object;
    * ``"garbage"``: 200 with an HTML page;
    * ``"cut"``: two deltas, then the connection is closed;
    * ``"interrupted"``: two deltas, then ``[DONE]`` with no finish_reason
      (llama-cpp-python's server ending a stream for the next request);
    * ``"silent"``: accepts, then sends nothing for ``silence_s`` (counting
      in ``hangups`` a client that closes the connection meanwhile);
    * ``"stalled"``: sends the response headers of a stream, then is silent;
    * ``"429"``: 429 with ``Retry-After: 17``;
    * ``"500"``: 500 with an OpenAI error body.

    ``GET /v1/models`` answers 200 (so health checks pass) unless
    ``healthy`` is False. ``bodies`` holds every JSON body received."""

    def __init__(self, mode: str = "pieces", pieces=("{", '"a"', ": 1", "}"), usage=(11, 4),
                 silence_s: float = 5.0) -> None:
        self.mode = mode
        self.pieces = list(pieces)
        self.usage = usage
        self.silence_s = silence_s
        self.healthy = True
        #: connections whose client hung up while ``"silent"`` waited
        self.hangups = 0
        self.bodies: list[dict[str, Any]] = []
        fault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._json(200 if fault.healthy else 503, {"object": "list", "data": []})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fault.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                getattr(self, "_" + fault.mode.replace("429", "limited").replace("500", "broken"))()

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _start_stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

            def _event(self, obj: Any) -> None:
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            def _delta(self, text: str, finish: str | None = None) -> dict[str, Any]:
                if self.path.endswith("/chat/completions"):
                    return {"id": "x", "object": "chat.completion.chunk", "model": "m",
                            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
                return {"id": "x", "object": "text_completion", "model": "m",  # legacy completions
                        "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

            def _pieces(self) -> None:
                self._start_stream()
                for piece in fault.pieces:
                    self._event(self._delta(piece))
                self._event(self._delta("", "stop"))
                p, c = fault.usage
                self._event({"id": "x", "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                                                 "total_tokens": p + c}})
                self.wfile.write(b"data: [DONE]\n\n")

            def _json_answer(self) -> None:
                p, c = fault.usage
                text = "".join(fault.pieces)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}}
                          if self.path.endswith("/chat/completions") else {"index": 0, "text": text})
                self._json(200, {"id": "x", "object": "chat.completion", "model": "m",
                                 "choices": [{**choice, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})

            def _garbage(self) -> None:
                data = b"<html><body>502 Bad Gateway (nginx)</body></html>\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _cut(self) -> None:
                self._start_stream()
                self._event(self._delta("Hel"))
                self._event(self._delta("lo"))
                self.wfile.flush()

            def _interrupted(self) -> None:
                self._start_stream()
                self._event(self._delta("Hel"))
                self._event(self._delta("lo"))
                self.wfile.write(b"data: [DONE]\n\n")

            def _stalled(self) -> None:
                self._start_stream()  # headers at once (as vLLM and llama-server send them) ...
                self.wfile.flush()
                self._silent()  # ... then nothing: a queued or prefilling engine

            def _silent(self) -> None:
                # send nothing; notice the client hanging up (EOF on the socket)
                deadline = time.monotonic() + fault.silence_s
                while time.monotonic() < deadline:
                    ready, _, _ = select.select([self.connection], [], [], 0.05)
                    if ready and not self.connection.recv(1, socket.MSG_PEEK):
                        fault.hangups += 1
                        break
                self.close_connection = True

            def _limited(self) -> None:
                self._json(429, {"error": {"message": "slow down", "type": "rate_limit_error"}},
                           {"Retry-After": "17"})

            def _broken(self) -> None:
                self._json(500, {"error": {"message": "engine crashed", "type": "server_error"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
