"""Shared by adyton-steer's tests (a uniquely named module: ``conftest`` is
taken by other test directories): API keys for two accounts and the admin,
and a real-model server of adyton-llamacpp + adyton-steer on loopback."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import httpx

import adyton_guided
import adyton_llamacpp
import adyton_openai
import adyton_steer
from adyton import Authenticator, Forbidden, LogitsProcessor, Principal, Unauthorized, create_app, hookimpl
from adyton.testing import JsonTestWirePlugin, RecordingLimiter, ServerThread, require_model

MODEL = "smollm2-135m-instruct"
A, B, ADMIN = {"x-api-key": "key-a"}, {"x-api-key": "key-b"}, {"x-api-key": "key-admin"}


class Keys(Authenticator):
    """Three fixed API keys: two accounts, and an admin (who alone may call
    the admin routes)."""

    name = "keys"
    principals: ClassVar[dict[str, Principal]] = {"key-a": Principal(id="acct-a"), "key-b": Principal(id="acct-b"),
                  "key-admin": Principal(id="admin")}

    async def authenticate(self, credentials):
        if credentials.kind == "none":
            return None
        principal = self.principals.get(credentials.secret)
        if principal is None:
            raise Unauthorized("unknown API key", code="invalid_api_key")
        return principal

    async def authorize(self, credentials, access):
        principal = await self.authenticate(credentials)
        if principal is None:
            return None
        if access == "admin" and principal.id != "admin":
            raise Forbidden("this route needs the admin key", code="insufficient_access")
        return principal


class Hold(LogitsProcessor):
    """Stops a request (``user: "hold"``) at its third token until
    ``release`` is set: a steered request held in the middle of its
    generation, its control vector applied, while another one runs."""

    name = "hold"

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def process(self, generated, logits):
        if len(generated) == 2:
            self.reached.set()
            self.release.wait(120)


class KeysPlugin:
    __name__ = "keys"

    def __init__(self) -> None:
        self.limiter = RecordingLimiter()
        self.holds: list[Hold] = []

    @hookimpl
    def logits_processors(self, request, model, vocabulary, kernel):
        if request.user != "hold":
            return None
        hold = Hold()
        self.holds.append(hold)
        return hold

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(Keys())

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.limiter)


def start_server(models, home) -> ServerThread:
    model = require_model()
    (models / model.name).symlink_to(model.resolve())
    settings = {"home": str(home), "log_level": "warning",
                "llamacpp": {"models_dir": str(models), "threads": 1, "slots": 2}}
    keys = KeysPlugin()
    app = create_app(settings=settings, load_entrypoints=False,
                     plugins=[adyton_llamacpp, adyton_openai, adyton_guided, adyton_steer, JsonTestWirePlugin(), keys])
    server = ServerThread(app).start()
    server.kernel = app.extensions["adyton"]
    server.backend = server.kernel.backends["llamacpp"]
    server.limiter = keys.limiter
    server.holds = keys.holds
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and httpx.get(server.base_url + "/health").status_code != 200:
        time.sleep(0.05)
    return server


def post(srv, path, body, headers=A, timeout=300):
    return httpx.post(srv.base_url + path, json=body, headers=headers, timeout=timeout)


def generate(srv, headers=A, **body):
    r = post(srv, "/t/generate", {"temperature": 0, "max_tokens": 16, **body}, headers)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]
