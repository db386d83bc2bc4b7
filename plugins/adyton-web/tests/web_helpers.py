"""Helpers of the browser tests (the fixtures are in ``conftest.py``):
``Stack`` (the server and its keys), ``Tab`` (a page that records
Content-Security-Policy violations and console errors), ``wait_js``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CHROMIUM = os.environ.get("ADYTON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: screenshots of each page, for a person to look at (git-ignored)
SHOTS = Path(__file__).resolve().parents[3] / ".artifacts" / "ui"
#: the longest any one condition is waited for (the model decodes slowly on a busy machine)
WAIT_MS = 90_000


@dataclass
class Stack:
    base_url: str
    admin_key: str
    api_key: str
    account_number: str
    account_id: str
    kernel: object = field(repr=False)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30,
                            headers={"Authorization": f"Bearer {self.admin_key}"})


CSP_PROBE = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def wait_js(page, predicate: str, timeout_ms: int = WAIT_MS, interval_s: float = 0.05) -> None:
    """Wait until the JavaScript function ``predicate`` returns true in the page.

    Playwright's ``wait_for_function`` compiles its predicate with ``eval``
    inside the page, which the console's Content-Security-Policy forbids (no
    'unsafe-eval'); ``page.evaluate`` goes through the DevTools protocol
    instead, so the predicate is polled from here."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        if page.evaluate(predicate):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for: {predicate}")
        time.sleep(interval_s)


class Tab:
    """A page plus what it reported: CSP violations and console errors."""

    def __init__(self, page, base_url: str, secrets: tuple[str, ...] = ()) -> None:
        self.page = page
        self.base_url = base_url
        self.secrets = secrets
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.add_init_script(CSP_PROBE)

    def open(self, fragment: str = "") -> None:
        self.page.goto(self.base_url + "/ui/" + fragment)
        self.page.wait_for_selector("#signin:not([hidden]), #nav:not([hidden])", state="attached")

    def sign_in(self, key: str = "", admin: str = "") -> None:
        page = self.page
        if key:
            page.fill("#signin-key", key)
        if admin:
            page.fill("#signin-admin", admin)
        page.press("#signin-admin" if admin else "#signin-key", "Enter")
        page.wait_for_selector("#nav:not([hidden])")

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self, *secrets: str) -> None:
        """No CSP violation, no unexpected console error, and none of
        ``secrets`` (plus the stack's keys) in any URL the page requested."""
        leaked = [u for u in self.requests for s in (*secrets, *self.secrets) if s and s in u]
        assert leaked == [], f"a credential appeared in a URL: {leaked}"
        violations = self.page.evaluate("window.__csp")
        assert violations == [], f"Content-Security-Policy violations: {violations}"
        # a refused credential is an expected 401/403 in the console; nothing else is
        unexpected = [e for e in self.errors if "status of 401" not in e and "status of 403" not in e]
        assert unexpected == [], f"errors in the browser console: {unexpected}"
