"""Fixtures of the browser tests (helpers: ``web_helpers``).

* ``stack``: one real server for the module -- adyton-openai, adyton-llama
  with the real default model, adyton-limits, adyton-guided and adyton-web --
  on a loopback port, with its admin key and a first account.
* ``browser``: Debian's chromium (``/usr/bin/chromium``, installed by
  ``make chromium``) driven by Playwright's Python client, headless, with a
  fresh profile directory. Playwright's own browser downloads are never
  used (they cannot be fetched here).
* ``tab``: a new tab (its own sessionStorage: signed out) that records
  Content-Security-Policy violations and console errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import httpx
import pytest
from web_helpers import CHROMIUM, CHROMIUM_ARGS, SHOTS, WAIT_MS, Stack, Tab

import adyton_guided
import adyton_openai
import adyton_web
from adyton import create_app
from adyton.testing import ServerThread, link_model
from adyton_limits import LimitsPlugin, service_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    adyton_llama = pytest.importorskip("adyton_llama", reason="adyton-llama is not installed")
    models = link_model(tmp_path_factory.mktemp("models"))
    home = tmp_path_factory.mktemp("home")
    app = create_app(
        settings={"home": str(home), "llama": {"models_dir": str(models)}},
        plugins=[adyton_openai, adyton_llama, LimitsPlugin(), adyton_guided, adyton_web],
        load_entrypoints=False)
    kernel = app.extensions["adyton"]
    server = ServerThread(app).start()
    try:
        admin_key = service_for(kernel).admin_key_path.read_text().strip()
        r = httpx.post(server.base_url + "/admin/accounts", json={"name": "tester", "tier": 1},
                       headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        r.raise_for_status()
        made = r.json()
        yield Stack(server.base_url, admin_key, made["api_key"], made["account_number"], made["id"], kernel)
    finally:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        message = f"{CHROMIUM} not found (make chromium, or apt-get install chromium)"
        if os.environ.get("ADYTON_REQUIRE_MODEL"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900}, service_workers="block")
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def tab(browser, stack):
    page = browser.new_page()
    t = Tab(page, stack.base_url, (stack.api_key, stack.admin_key, stack.account_number))
    yield t
    page.close()
