"""The admin HTTP API (``/admin/...``) and the optional public sign-up
endpoint (``POST /create-account``), as wire formats with JSON errors."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from quart import Blueprint, Response, jsonify, request

from adyton import (
    DEFAULT_ERROR_SCHEMA,
    AdytonError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
    WireFormat,
    default_error_response,
    json_operation,
    json_type_name,
    read_json_body,
)

if TYPE_CHECKING:  # pragma: no cover
    from .service import LimitsService
    from .store import Account


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """ISO date/time (UTC if naive), or a duration like 24h / 7d / 30m
    before ``now``."""
    if not value:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        import time

        return (time.time() if now is None else now) - float(v[:-1]) * units[v[-1]]
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"cannot read {value!r}: use an ISO date (2025-01-31) or a duration (24h, 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


#: content types an HTML form can send cross-site without a preflight
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def refuse_form_posts() -> None:
    """Refuse a state-changing request whose body is form-encoded: such a
    request can come from a cross-site HTML form (CSRF)."""
    kind = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind in FORM_TYPES:
        error = InvalidRequest(f"a {kind} body is not accepted here: send JSON (or no body) "
                               "with the credential in a header", code="unsupported_media_type")
        error.status = 415
        raise error


class _JsonSurface(WireFormat):
    error_schema = DEFAULT_ERROR_SCHEMA

    def render_error(self, error: AdytonError) -> Response:
        return default_error_response(error)


class AdminApi(_JsonSurface):
    """Guarded by the admin key: ``Authorization: Bearer <key>`` or ``x-admin-key``."""

    name = "limits-admin"
    url_prefixes = ("/admin/",)
    openapi_operations: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "/admin/accounts": {"post": json_operation(
            "Create an account", status=201,
            request={"type": "object", "properties": {"name": {"type": "string"}, "tier": {"type": "integer"}}})},
        "/admin/accounts/{ref}/tier": {"post": json_operation(
            "Set an account's tier",
            request={"type": "object", "required": ["tier"], "properties": {"tier": {"type": "integer"}}})},
    }

    def __init__(self, service: LimitsService) -> None:
        self.service = service
        bp = Blueprint("adyton_limits_admin", __name__, url_prefix="/admin")
        bp.before_request(self._guard)
        bp.add_url_rule("/accounts", "create", self.create, methods=["POST"])
        bp.add_url_rule("/accounts", "list", self.list_accounts, methods=["GET"])
        bp.add_url_rule("/accounts/<ref>", "show", self.show, methods=["GET"])
        bp.add_url_rule("/accounts/<ref>/rotate-key", "rotate", self.rotate, methods=["POST"])
        bp.add_url_rule("/accounts/<ref>/tier", "tier", self.tier, methods=["POST"])
        bp.add_url_rule("/accounts/<ref>/disable", "disable", self.disable, methods=["POST"])
        bp.add_url_rule("/accounts/<ref>/enable", "enable", self.enable, methods=["POST"])
        bp.add_url_rule("/usage", "usage", self.usage, methods=["GET"])
        bp.add_url_rule("/tiers", "tiers", self.tiers, methods=["GET"])
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    def example_request(self, base_url: str) -> str | None:
        return (
            "# every call needs an API key (or, for /api/chat, an account number); create one with:\n"
            f"{sys.executable.rsplit('/', 1)[0]}/adyton accounts create --name me\n"
            f"# admin API (create accounts, rotate keys, usage): {base_url}/admin/ with\n"
            f"#   Authorization: Bearer <the key in {self.service.admin_key_path}>"
        )

    async def _guard(self) -> None:
        auth = request.headers.get("Authorization", "")
        presented = request.headers.get("x-admin-key")
        if not presented and auth.lower().startswith("bearer "):
            presented = auth[7:]
        if not presented:
            # (not where the key file is: that is for the operator's log, not for any caller)
            raise Unauthorized("the admin API needs the admin key (Authorization: Bearer <key>)",
                               code="missing_admin_key")
        if not self.service.check_admin_key(presented):
            raise Forbidden("wrong admin key", code="invalid_admin_key")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refuse_form_posts()

    async def _body(self) -> dict[str, Any]:
        return await read_json_body(empty_ok=True)

    def _tier(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"tier must be an integer, not {json_type_name(value)} ({value!r})",
                                 param="tier", code="invalid_type")
        tier = value
        if tier not in self.service.settings.tiers:
            raise InvalidRequest(f"no tier {tier} (tiers: {sorted(self.service.settings.tiers)})", param="tier")
        return tier

    async def _account(self, ref: str) -> Account:
        account = await self.service.read(self.service.store.find, ref)
        if account is None:
            raise NotFound(f"no account {ref!r}", code="account_not_found")
        return account

    async def create(self) -> Response:
        body = await self._body()
        tier = self._tier(body.get("tier", self.service.settings.default_tier))
        name = body.get("name") or ""
        if not isinstance(name, str):
            raise InvalidRequest(f"name must be a string, not {json_type_name(name)}", param="name",
                                 code="invalid_type")
        new = await self.service.in_writer(self.service.store.create_account, tier, name)
        response = jsonify(new.as_dict())
        response.status_code = 201
        return response

    async def list_accounts(self) -> Response:
        args = request.args
        if not any(k in args for k in ("q", "limit", "offset")):
            listed = await self.service.read(self.service.store.list_accounts)
            return jsonify({"accounts": [a.as_dict() for a in listed]})
        limit = self._int_arg("limit", 50, 1, 500)
        offset = self._int_arg("offset", 0, 0, 2**62)
        total, accounts = await self.service.read(self.service.store.page, args.get("q", "").strip(), limit, offset)
        return jsonify({"accounts": [a.as_dict() for a in accounts], "total": total,
                        "limit": limit, "offset": offset})

    def _int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be an integer, got {raw!r}", param=name) from None
        if not low <= value <= high:
            raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}", param=name)
        return value

    async def show(self, ref: str) -> Response:
        account = await self._account(ref)
        return jsonify({**account.as_dict(), "usage": await self.service.read(self.service.store.usage, account.id)})

    async def rotate(self, ref: str) -> Response:
        account = await self._account(ref)
        key = await self.service.in_writer(self.service.store.rotate_key, account.id)
        return jsonify({"id": account.id, "api_key": key})

    async def tier(self, ref: str) -> Response:
        account = await self._account(ref)
        tier = self._tier((await self._body()).get("tier"))
        updated = await self.service.in_writer(self.service.store.set_tier, account.id, tier)
        return jsonify(updated.as_dict())

    async def disable(self, ref: str) -> Response:
        account = await self._account(ref)
        return jsonify((await self.service.in_writer(self.service.store.set_enabled, account.id, False)).as_dict())

    async def enable(self, ref: str) -> Response:
        account = await self._account(ref)
        return jsonify((await self.service.in_writer(self.service.store.set_enabled, account.id, True)).as_dict())

    async def tiers(self) -> Response:
        settings = self.service.settings
        return jsonify({"default_tier": settings.default_tier,
                        "tiers": {str(n): limits.model_dump() for n, limits in sorted(settings.tiers.items())}})

    async def usage(self) -> Response:
        ref = request.args.get("account")
        account_id = (await self._account(ref)).id if ref else None
        try:
            since = parse_since(request.args.get("since"), self.service.clock())
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="since") from None
        return jsonify({"usage": await self.service.read(self.service.store.usage, account_id, since)})


class SignupApi(_JsonSurface):
    """``POST /create-account`` -> a new account number (Axiom's "create-account")."""

    name = "limits-signup"
    url_prefixes = ("/create-account",)

    def __init__(self, service: LimitsService) -> None:
        self.service = service
        bp = Blueprint("adyton_limits_signup", __name__)
        bp.add_url_rule("/create-account", "create_account", self.create, methods=["POST"])
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    async def create(self) -> Response:
        service = self.service
        per_hour = service.settings.signup_per_hour
        if per_hour:
            hour = int(service.clock() // 3600)
            who = request.remote_addr or "unknown"
            key = f"signup/{who}/{hour}"
            if await service.counters.incr(key, 7200, 1) > per_hour:
                raise RateLimited(f"too many accounts created from {who}; try again later",
                                  retry_after=3600 - service.clock() % 3600)
        new = await service.in_writer(service.store.create_account, service.settings.default_tier, "")
        response = jsonify({"account_number": new.account_number, "api_key": new.api_key,
                            "tier": new.account.tier})
        response.status_code = 201
        return response
