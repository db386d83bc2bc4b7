"""adyton-limits: accounts, credentials and per-account limits.

The only code in adyton that knows what an account is. It registers

* an ``Authenticator`` for Bearer / x-api-key keys (``sk-...``) and 64-digit
  account numbers (Axiom ``sessionId``),
* a ``Limiter`` reserving each request's worst case on ``limits`` counters
  (memory or Redis) and settling it with the real usage plus a ledger row,
* the admin HTTP API under ``/admin/`` and, if enabled, ``POST /create-account``,
* the ``[limits]`` settings section and the ``adyton accounts`` commands.

Installed, the entry point ``limits`` registers this module; its hooks keep
their state per kernel (``kernel.state``), and other plugins, the CLI and
tests reach it as ``kernel.service("limits")`` (or ``service_for(kernel)``).
Tests build ``LimitsPlugin(clock=...)`` to inject a clock:
``create_app(plugins=[LimitsPlugin(clock=fake)], load_entrypoints=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adyton import Authenticator, Credentials, Principal, hookimpl

from .service import LimitsService
from .settings import LimitsSettings, TierLimits, UpgradeRule, default_tiers

__all__ = ["LimitsPlugin", "LimitsService", "LimitsSettings", "TierLimits", "UpgradeRule", "default_tiers",
           "service_for"]


class AccountAuthenticator(Authenticator):
    name = "limits"

    def __init__(self, service: LimitsService) -> None:
        self.service = service

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        if credentials.kind not in ("bearer", "api_key", "account_number"):
            return None
        return await self.service.authenticate(credentials.kind, credentials.secret)

    async def authorize(self, credentials: Credentials, access: str) -> Principal | None:
        """Read-only routes (``[access]``): the admin key grants every level,
        the metrics token (``limits.metrics_token_file``) grants "metrics",
        an account's key or number grants "user"."""
        if credentials.kind not in ("bearer", "api_key", "account_number"):
            return None
        return await self.service.authorize(credentials.kind, credentials.secret, access)


class LimitsPlugin:
    """The plugin's hooks; state lives in one ``LimitsService`` per kernel,
    kept by the kernel (``kernel.state``) and provided as ``kernel.service("limits")``."""

    def __init__(self, clock: Callable[[], float] | None = None, name: str = "limits") -> None:
        self.clock = clock
        self.__name__ = name

    def service(self, kernel: Any) -> LimitsService:
        """The kernel's service, made on first use (its catalog hooks run
        first, before anything is served)."""
        return kernel.state(LimitsService, lambda: self._new_service(kernel))

    def _new_service(self, kernel: Any) -> LimitsService:
        svc = LimitsService(kernel, clock=self.clock)
        kernel.provide("limits", svc)
        return svc

    @hookimpl
    def register_settings(self, register):
        register("limits", LimitsSettings)

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(AccountAuthenticator(self.service(kernel)))

    @hookimpl
    def register_limiters(self, register, kernel):
        register(self.service(kernel).limiter)

    @hookimpl
    def prepare_request(self, request, principal, kernel):
        # the tier's per-request caps (n, max_tokens): refused or applied
        # before the limiter reserves anything
        self.service(kernel).limiter.apply_caps(request, principal)

    @hookimpl
    def register_wire_formats(self, register, kernel):
        from .account import AccountApi
        from .http import AdminApi, SignupApi

        service = self.service(kernel)
        register(AdminApi(service))
        register(AccountApi(service))
        if service.settings.signup_enabled:
            register(SignupApi(service))

    @hookimpl
    def register_migrations(self, register, kernel):
        from .migrations import VERSION_TABLE, VERSIONS

        # limits.db_url, an earlier release's own file, or the kernel's database
        register(VERSIONS, VERSION_TABLE, self.service(kernel).db)

    @hookimpl
    def register_commands(self, cli):
        from .cli import accounts

        cli.add_command(accounts)

    @hookimpl
    async def startup(self, kernel):
        await self.service(kernel).startup()

    @hookimpl
    async def shutdown(self, kernel):
        await self.service(kernel).shutdown()


def service_for(kernel: Any) -> LimitsService:
    """The service of an app's kernel (``kernel.service("limits")``: made by
    whichever LimitsPlugin serves it, else now, with the real clock)."""
    return _plugin.service(kernel)


_plugin = LimitsPlugin()

# the module itself is the entry-point plugin: its hooks delegate to one
# LimitsPlugin, which keeps a service per kernel (no per-app module state)
register_settings = _plugin.register_settings
register_authenticators = _plugin.register_authenticators
register_limiters = _plugin.register_limiters
prepare_request = _plugin.prepare_request
register_wire_formats = _plugin.register_wire_formats
register_commands = _plugin.register_commands
register_migrations = _plugin.register_migrations
startup = _plugin.startup
shutdown = _plugin.shutdown
