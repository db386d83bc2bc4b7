"""The ``/ui/`` surface: the console's static files, with strict security
headers on every answer."""

from __future__ import annotations

from importlib import resources

from quart import Blueprint, Response, redirect
from werkzeug.wrappers import Response as WerkzeugResponse

from adyton import AdytonError, NotFound, WireFormat, default_error_response

#: what the console's pages may do: scripts, styles and images only from
#: this server (no inline script or style, no eval), calls only to this
#: server, no plugins, frames, form posts or <base> rewriting
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` (package data): path -> (bytes, content type).
    Read once, so a request can only ever name one of these files."""
    assets: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__package__) / "static"

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if suffix in CONTENT_TYPES:
                assets[name] = (child.read_bytes(), CONTENT_TYPES[suffix])

    walk(root, "")
    if "index.html" not in assets:  # pragma: no cover - a broken install
        raise RuntimeError("adyton-web is installed without its static files (static/index.html)")
    return assets


class WebConsole(WireFormat):
    """``GET /ui/`` (the page) and ``GET /ui/<file>`` (its scripts and styles)."""

    name = "web"
    url_prefixes = ("/ui",)

    def __init__(self) -> None:
        self.assets = load_assets()
        bp = Blueprint("adyton_web", __name__)
        bp.add_url_rule("/ui", "root", self.root, methods=["GET"])
        bp.add_url_rule("/ui/", "index", self.index, methods=["GET"])
        bp.add_url_rule("/ui/<path:name>", "asset", self.asset, methods=["GET"])
        bp.after_request(self._secure)
        self._bp = bp

    @property
    def blueprint(self) -> Blueprint:
        return self._bp

    def render_error(self, error: AdytonError) -> Response:
        return self._harden(default_error_response(error))

    def example_request(self, base_url: str) -> str | None:
        return f"# the console in a browser: {base_url}/ui/"

    async def root(self) -> WerkzeugResponse:  # quart's redirect() builds werkzeug's
        return redirect("/ui/", 308)

    async def index(self) -> Response:
        return self._file("index.html")

    async def asset(self, name: str) -> Response:
        return self._file(name)

    def _file(self, name: str) -> Response:
        found = self.assets.get(name)
        if found is None:
            raise NotFound(f"no file {name!r} in the console", code="not_found")
        body, content_type = found
        response = Response(body, content_type=content_type)
        # the page is small and changes with the installed version: always revalidate
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _secure(self, response: Response) -> Response:
        return self._harden(response)

    @staticmethod
    def _harden(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers[key] = value
        return response
