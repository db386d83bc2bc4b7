"""Property-based fuzzing of every operation in ``/openapi.json`` with
schemathesis (issue 15): valid and invalid requests, with credentials and
without, against the whole first-party stack (OpenAI, Axiom, guided,
limits) on a real loopback socket, with a scripted backend for speed.

Every answer must be below 500, and every 4xx must be in the documented
error shape of the surface that owns the path; a status code an operation
documents none of is a failure too (schemathesis' status_code_conformance).
Bounded: at most ``MAX_EXAMPLES`` cases per operation and mode,
derandomized (the same cases on every run)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hostile_helpers import error_of, full_app, start_stack, surface_of
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import status_code_conformance

from adyton.testing import ScriptedBackend

MAX_EXAMPLES = 25

#: operations that would revoke the credentials the run itself uses
_SELF_DESTRUCTIVE = ("/v1/account/rotate-key",)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    backend = ScriptedBackend(["Hello", ",", " world", "!", " {", "}", "a", "1"])
    stack = start_stack(full_app(tmp_path_factory.mktemp("home"), backend))
    yield stack
    stack.server.stop()


@pytest.fixture(scope="module")
def operations(stack):
    document = httpx.get(stack.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 20, [f"{o.method} {o.path}" for o in found]
    return found


def _headers(stack, path: str, authenticated: bool) -> dict[str, str]:
    if not authenticated:
        return {}
    return stack.admin() if path.startswith("/admin/") else stack.auth()


def _check(case, response, stack) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:500]}"
    if 400 <= response.status_code < 500:
        error_of(response, surface_of(case.formatted_path))
    case.validate_response(response, checks=[status_code_conformance])


@pytest.mark.parametrize("authenticated", [True, False], ids=["with-credentials", "without"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_5xx_and_documented_errors(stack, operations, mode, authenticated):
    failures: list[str] = []
    for operation in operations:
        if authenticated and operation.path in _SELF_DESTRUCTIVE:
            continue
        headers = _headers(stack, operation.path, authenticated)

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            if authenticated and isinstance(case.body, dict) and "sessionId" in case.body:
                # Axiom's credential is in the body: the account's own number, so that
                # fuzzed chats get past authentication to the model and the limits
                case.body["sessionId"] = stack.account_number
                if mode is GenerationMode.POSITIVE:
                    case.body["model"] = stack.model
            response = case.call(base_url=stack.url, headers=headers, timeout=60)  # noqa: B023 - run() runs in this iteration
            _check(case, response, stack)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect all, then report
            failures.append(f"{operation.method.upper()} {operation.path}: {type(exc).__name__}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
