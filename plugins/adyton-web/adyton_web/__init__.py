"""adyton-web: a console in the browser, served by the same app under ``/ui/``.

Three pages, all static files shipped in this package (no build step,
nothing fetched from elsewhere) that call the server's documented HTTP APIs
from the browser:

* **Playground** -- ``/v1/models`` and streaming ``/v1/chat/completions``
  (adyton-openai), with JSON-schema / regex guided decoding (adyton-guided);
* **My account** -- ``/v1/account`` and ``/v1/account/rotate-key``
  (adyton-limits), signed in with an API key or account number;
* **Operator** -- ``/admin/...`` (adyton-limits, admin key), ``/metrics``,
  ``/-/models`` and ``/-/plugins``, refreshed live.

The plugin itself only serves files: it holds no state and no credentials.
The credential a person signs in with stays in the tab's ``sessionStorage``
and is sent in a header on each call.
"""

from __future__ import annotations

from adyton import hookimpl

from .console import WebConsole

__all__ = ["WebConsole"]


@hookimpl
def register_wire_formats(register, kernel):
    register(WebConsole())
