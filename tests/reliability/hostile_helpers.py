"""Helpers for the hostile-input, event-loop and fuzz tests of
``tests/reliability`` (uniquely named, so it never collides with another
directory's helpers): the whole first-party stack (OpenAI, Axiom, guided,
limits) on a real loopback socket, with the real default model or a scripted
backend, an account and the admin key; and each surface's error shape."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import adyton_axiom
import adyton_guided
import adyton_openai
from adyton import create_app
from adyton.testing import BackendPlugin, ScriptedBackend, ServerThread, link_model
from adyton_limits import LimitsPlugin, service_for


def full_app(home: Path, backend: ScriptedBackend | None = None, settings: dict[str, Any] | None = None) -> Any:
    """Every first-party wire format and adyton-limits, on ``backend`` or
    (None) adyton-llama serving the real default model."""
    plugins: list[Any] = [adyton_openai, adyton_axiom, adyton_guided, LimitsPlugin()]
    merged: dict[str, Any] = {"home": str(home), "limits": {"upgrade": {"enabled": False}},
                              "queue": {"max_waiting": 64}}
    if backend is None:
        import adyton_llama

        plugins.append(adyton_llama)
        merged["llama"] = {"models_dir": str(link_model(home / "models"))}
    else:
        plugins.append(BackendPlugin(backend))
    for key, value in (settings or {}).items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return create_app(settings=merged, plugins=plugins, load_entrypoints=False)


@dataclass
class Stack:
    """A served full app with one tier-``tier`` account."""

    server: ServerThread
    kernel: Any
    model: str
    api_key: str
    account_number: str
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.base_url

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


def start_stack(app: Any, tier: int = 3, timeout: float = 120.0) -> Stack:
    """Serve ``app`` on loopback, wait until its model is loaded, and make an
    account. Stop it with ``stack.server.stop()``."""
    server = ServerThread(app).start()
    deadline = time.monotonic() + timeout
    while httpx.get(server.base_url + "/health", timeout=30).json().get("status") != "ok":
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError("the model did not load in time")
        time.sleep(0.2)
    kernel = app.extensions["adyton"]
    service = service_for(kernel)
    new = service.store.create_account(tier, "reliability")
    model = kernel.models.default_model()[1].id
    return Stack(server, kernel, model, new.api_key, new.account_number,
                 service.admin_key_path.read_text().strip())


# -- each surface's error shape ------------------------------------------------

#: which surface renders the errors of a path (by prefix, longest first)
SURFACES = (("/v1/policies", "guided"), ("/sampling/", "guided"), ("/v1/", "openai"), ("/api/", "axiom"),
            ("/admin/", "kernel"), ("/", "kernel"))


def surface_of(path: str) -> str:
    path = "/" + path.lstrip("/")
    while "//" in path:
        path = path.replace("//", "/")
    return next(name for prefix, name in SURFACES if path.startswith(prefix))


def error_of(response: Any, surface: str) -> dict[str, Any]:
    """The error in ``surface``'s documented shape, as {"message", "code",
    "param"}; fails the test if the body is not in that shape."""
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # a schemathesis Response: every value of the header
        content_type = content_type[0] if content_type else ""
    assert content_type.startswith("application/json"), (response.status_code, content_type, response.text[:300])
    body = response.json()
    assert isinstance(body, dict), body
    if surface == "axiom":  # {"error": message, "code", "field"}
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("code"), str) and "field" in body, body
        return {"message": body["error"], "code": body["code"], "param": body["field"]}
    error = body.get("error")
    if surface == "guided":  # {"detail": message, "error": {...}}
        assert isinstance(body.get("detail"), str) and body["detail"], body
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert isinstance(error.get("type"), str), body
    assert "code" in error, body
    return {"message": error["message"], "code": error["code"], "param": error.get("param")}
