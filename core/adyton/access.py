"""Access: who is calling, and may they. The authenticators are asked in
turn for a generation or embedding (``authenticate``) and for a read-only
route's ``[access]`` level (``authorize``, ``require_access``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import request

from .errors import Forbidden, Unauthorized
from .types import ANONYMOUS, Credentials, Principal

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel


async def authenticate(kernel: Kernel, credentials: Credentials) -> Principal:
    authenticators = kernel.authenticators
    if not authenticators:
        return ANONYMOUS
    for authenticator in authenticators:
        principal = await authenticator.authenticate(credentials)
        if principal is not None:
            return principal
    if credentials.kind == "none" or not credentials.secret:
        raise Unauthorized("missing credentials: send an API key", code="missing_api_key")
    raise Unauthorized("invalid credentials", code="invalid_api_key")


async def authorize(kernel: Kernel, credentials: Credentials, access: str) -> Principal:
    """The principal for a read-only route that needs ``access``
    ("public", "user", "metrics", "admin"), asking each authenticator's
    ``authorize``; open (anonymous) when no authenticator is installed.
    Raises ``Unauthorized`` (no or unknown credentials) or ``Forbidden``
    (valid, but not enough)."""
    authenticators = kernel.authenticators
    if access == "public" or not authenticators:
        return ANONYMOUS
    for authenticator in authenticators:
        principal = await authenticator.authorize(credentials, access)
        if principal is not None:
            return principal
    what = "an API key" if access == "user" else f"credentials with '{access}' access"
    if credentials.kind == "none" or not credentials.secret:
        raise Unauthorized(f"missing credentials: this route needs {what}", code="missing_api_key")
    if access == "user":
        raise Unauthorized("invalid credentials", code="invalid_api_key")
    raise Forbidden(f"these credentials do not grant '{access}' access", code="insufficient_access")


async def require_access(route: str, credentials: Credentials | None = None) -> Principal:
    """For a read-only route: check that the caller has the access the
    ``[access]`` setting ``route`` ("models", "server_info", "metrics")
    demands, asking the authenticators (``Authenticator.authorize``).
    ``credentials`` default to the request's API-key headers
    (``Credentials.from_headers``); a wire format with its own way of reading
    them passes its own. Returns the principal; raises ``Unauthorized`` /
    ``Forbidden``, which the route's wire format renders."""
    from .kernel import current_kernel  # (kernel.py imports this module)

    kernel = current_kernel()
    access = getattr(kernel.settings.access, route)
    if credentials is None:
        credentials = Credentials.from_headers(request.headers, wire_format="",
                                               client_address=request.remote_addr)
    return await kernel.pipeline.authorize(credentials, access)
