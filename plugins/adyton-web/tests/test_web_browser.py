"""The console in a real headless browser (Debian's chromium via Playwright)
against a real server with the real default model: sign in, a streamed
answer arriving token by token, a JSON-schema answer that is valid JSON,
usage going up, a rotated key refused, accounts created and paged through
by the operator, the live server view; Content-Security-Policy violations
and console errors fail every test; screenshots of each page go to
``.artifacts/ui/`` (git-ignored)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest
from web_helpers import Stack, wait_js

pytestmark = [pytest.mark.slow, pytest.mark.requires_model]


def controls_without_label(page) -> list[str]:
    """Every visible-or-not form control that has neither a <label> nor an aria-label."""
    return page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => el.type !== 'hidden')
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !(el.tagName === 'BUTTON' && el.textContent.trim()))
        .map((el) => el.id || el.outerHTML.slice(0, 80))""")


def focused_id(page) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


def test_nothing_without_a_credential_and_keyboard_sign_in(tab, stack: Stack):
    page = tab.page
    tab.open()
    # only the sign-in form: no page, no navigation, no call to any API
    assert page.is_visible("#signin")
    for hidden in ("#nav", "#page-playground", "#page-account", "#page-operator", "#signout"):
        assert page.is_hidden(hidden), hidden
    assert not [u for u in tab.requests if "/v1/" in u or "/admin/" in u or "/metrics" in u]
    assert controls_without_label(page) == []
    tab.shot("signin")

    # keyboard: focus starts in the key field; Tab goes key -> admin key -> button
    assert focused_id(page) == "signin-key"
    page.keyboard.press("Tab")
    assert focused_id(page) == "signin-admin"
    page.keyboard.press("Tab")
    assert focused_id(page) == "signin-submit"

    # a wrong key is refused with the server's reason, and nothing is stored
    page.fill("#signin-key", "sk-" + "w" * 30)
    page.press("#signin-key", "Enter")
    wait_js(page, "() => document.getElementById('signin-error').textContent.length > 0")
    assert "unknown or revoked API key" in page.text_content("#signin-error")
    assert page.evaluate("sessionStorage.length") == 0

    page.fill("#signin-key", stack.api_key)
    page.press("#signin-key", "Enter")
    page.wait_for_selector("#page-playground:not([hidden])")
    # the key is in this tab's sessionStorage only: not in the URL, not in a cookie
    assert page.evaluate("sessionStorage.getItem('adyton.key')") == stack.api_key
    assert stack.api_key not in page.url
    assert page.context.cookies() == []
    assert page.evaluate("document.cookie") == ""
    tab.assert_clean()


def test_security_headers_and_static_files(stack: Stack):
    r = httpx.get(stack.base_url + "/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    # no inline script or style in the page
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)
    assert "<style" not in r.text and " style=" not in r.text
    js = httpx.get(stack.base_url + "/ui/js/main.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == csp
    assert httpx.get(stack.base_url + "/ui").status_code == 308
    for bad in ("/ui/nope.js", "/ui/..%2f..%2fpyproject.toml", "/ui/js/%2e%2e/%2e%2e/__init__.py", "/ui/x/"):
        r = httpx.get(stack.base_url + bad)
        assert r.status_code == 404, bad
        assert r.headers.get("content-security-policy") == csp, bad
    assert httpx.post(stack.base_url + "/ui/").status_code == 405


def test_playground_streams_token_by_token_and_copies_a_working_call(tab, stack: Stack):
    page = tab.page
    tab.open("#playground")
    tab.sign_in(stack.api_key)
    wait_js(page, "() => document.getElementById('pg-model').options.length > 0")
    assert page.input_value("#pg-model") == "smollm2-135m-instruct"
    page.fill("#pg-max-tokens", "40")
    page.fill("#pg-temperature", "0")
    # record the answer's length at each DOM change, to see it arrive in pieces
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const turns = document.querySelectorAll('#pg-log .assistant .content');
            const last = turns[turns.length - 1];
            if (last) window.__lengths.push(last.textContent.length);
        }).observe(document.getElementById('pg-log'), {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#pg-message", "Tell me a short story about a cat.")
    page.press("#pg-message", "Enter")   # Enter sends
    wait_js(page, "() => document.getElementById('pg-stats').textContent.includes('usage:')"
                           " && !document.getElementById('pg-send').disabled")
    answer = page.text_content("#pg-log .assistant .content")
    lengths = page.evaluate("window.__lengths")
    steps = sorted({x for x in lengths if x > 0})
    assert len(answer) > 20
    assert len(steps) >= 5, f"the answer did not arrive in pieces: {lengths}"
    assert steps[-1] == len(answer)
    stats = page.text_content("#pg-stats")
    assert re.search(r"tokens/s", stats) and re.search(r"\d+ completion", stats), stats
    assert "finish: length" in stats or "finish: stop" in stats
    assert page.input_value("#pg-message") == "" and focused_id(page) == "pg-message"
    assert controls_without_label(page) == []
    tab.shot("playground")

    # Shift+Enter adds a line instead of sending
    page.fill("#pg-message", "first line")
    page.press("#pg-message", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#pg-message") == "first line\nsecond line"
    assert page.locator("#pg-log .user").count() == 1

    # "copy as curl": the key is masked, and the call works as it is
    page.select_option("#pg-lang", "curl")
    page.fill("#pg-message", "Say hello.")
    page.fill("#pg-max-tokens", "8")
    curl = page.input_value("#pg-snippet")
    assert stack.api_key not in curl and "$ADYTON_API_KEY" in curl
    snippets = {}
    for lang in ("python", "js"):
        page.select_option("#pg-lang", lang)
        snippets[lang] = page.input_value("#pg-snippet")
        assert stack.api_key not in snippets[lang] and "ADYTON_API_KEY" in snippets[lang], snippets[lang]
    env = {**os.environ, "ADYTON_API_KEY": stack.api_key}
    # each copied call works as it is: curl, the openai SDK, node's fetch
    runs = [["bash", "-c", curl], [sys.executable, "-c", snippets["python"]]]
    if shutil.which("node"):
        runs.append(["node", "--input-type=module", "-e", snippets["js"]])
    for argv in runs:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0 and result.stdout.strip(), (argv[0], result.stderr)
        if argv[0] == "bash":  # the others print the answer's text, and exit 1 on an error
            body = json.loads(result.stdout)
            assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 8
    # the whole conversation (with the first answer) is in the call
    assert [m["role"] for m in json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0])["messages"]] == \
        ["user", "assistant", "user"]
    tab.assert_clean()


def test_playground_json_schema_gives_valid_json(tab, stack: Stack):
    page = tab.page
    tab.open("#playground")
    tab.sign_in(stack.api_key)
    wait_js(page, "() => document.getElementById('pg-model').options.length > 0")
    page.select_option("#pg-mode", "json_schema")
    assert page.is_visible("#pg-schema") and page.is_hidden("#pg-regex")
    schema = json.loads(page.input_value("#pg-schema"))
    page.fill("#pg-max-tokens", "120")
    page.fill("#pg-temperature", "0")
    page.fill("#pg-message", "Give the capital city of France, its country and its population as JSON.")
    page.click("#pg-send")
    page.wait_for_selector("#pg-check.ok, #pg-check.bad")
    check = page.text_content("#pg-check")
    assert "Valid JSON that matches the schema (guided decoding: enforced)" in check, check
    value = json.loads(page.text_content("#pg-check pre"))
    assert set(value) == set(schema["required"])
    assert isinstance(value["population"], int) and isinstance(value["city"], str)
    # the streamed text itself is that JSON
    assert json.loads(page.text_content("#pg-log .assistant .content")) == value
    tab.shot("playground-json")

    page.select_option("#pg-mode", "regex")
    page.fill("#pg-regex", "(Yes|No), [a-z ]{5,40}\\.")
    page.fill("#pg-message", "Is Paris in France? Answer yes or no, then a short reason.")
    page.click("#pg-send")
    wait_js(page, "() => document.getElementById('pg-check').textContent.includes('regex')")
    assert "The answer matches the regex (guided decoding: enforced)" in page.text_content("#pg-check")
    answer = page.locator("#pg-log .assistant .content").last.text_content()
    assert re.fullmatch(r"(Yes|No), [a-z ]{5,40}\.", answer), answer
    tab.assert_clean()


def account_figure(page, label: str) -> int:
    text = page.locator(".gauge", has=page.locator(f"label:text-is('{label}')")).locator(".gauge-text").text_content()
    return int(text.split(" ")[0].replace(",", ""))


def test_my_account_usage_goes_up_and_a_rotated_key_is_refused(tab, stack: Stack):
    page = tab.page
    admin = stack.admin()
    made = admin.post("/admin/accounts", json={"name": "rotator"}).json()
    key, number = made["api_key"], made["account_number"]
    tab.open("#account")
    tab.sign_in(key)
    page.wait_for_selector("#acct-today")
    assert "Tier 1" in page.text_content("#acct-body")
    before_requests = account_figure(page, "Requests today")
    before_tokens = account_figure(page, "Tokens today")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.chart rect.bar").count() >= 0
    assert controls_without_label(page) == []

    # one request in the playground, then back to the account page
    page.click("nav a[data-page=playground]")
    wait_js(page, "() => document.getElementById('pg-model').options.length > 0")
    page.fill("#pg-max-tokens", "6")
    page.fill("#pg-message", "Hi!")
    page.press("#pg-message", "Enter")
    wait_js(page, "() => document.getElementById('pg-stats').textContent.includes('usage:')"
                           " && !document.getElementById('pg-send').disabled")
    page.click("nav a[data-page=account]")
    wait_js(page, f"""() => {{
        const g = [...document.querySelectorAll('.gauge')].find(
            (x) => x.querySelector('label').textContent === 'Requests today');
        return g && parseInt(g.querySelector('.gauge-text').textContent) === {before_requests + 1};
    }}""")
    assert account_figure(page, "Tokens today") > before_tokens
    assert "Settled: 1 request," in page.text_content("#acct-settled")
    # today's bar is in the chart
    assert page.locator("svg.chart rect.bar").count() >= 1
    tab.shot("account")

    # rotate: ask, confirm, the new key is shown once and this tab keeps working
    page.click("#acct-rotate")
    assert focused_id(page) == "acct-rotate-confirm"
    page.click("#acct-rotate-confirm")
    page.wait_for_selector("#acct-newkey:not([hidden])")
    new_key = page.input_value("#acct-newkey-value")
    assert new_key.startswith("sk-") and new_key != key
    assert page.evaluate("sessionStorage.getItem('adyton.key')") == new_key
    assert new_key[:6] in page.text_content("#who")
    tab.shot("account-rotated")
    old = httpx.get(stack.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(stack.base_url + "/v1/models",
                     headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    page.reload()
    page.wait_for_selector("#acct-today")
    # signed in with the account number, the account page works too
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    tab.sign_in(number)
    page.click("nav a[data-page=account]")
    page.wait_for_selector("#acct-today")
    assert "signed in with the account number" in page.text_content("#acct-body")
    admin.close()
    tab.assert_clean(key, new_key, number)


def test_operator_creates_pages_and_watches_the_server(tab, stack: Stack):
    page = tab.page
    admin = stack.admin()
    tab.open("#operator")
    tab.sign_in(admin=stack.admin_key)
    page.wait_for_selector("#op-body:not([hidden])")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.includes('Page')")
    # create one account in the page; it is shown once and listed
    wait_js(page, "() => document.getElementById('op-create-tier').options.length > 0")
    page.fill("#op-create-name", "needle-from-ui")
    page.select_option("#op-create-tier", "2")
    page.press("#op-create-name", "Enter")
    page.wait_for_selector("#op-secret:not([hidden])")
    secret = page.input_value("#op-secret-value")
    number, key = re.search(r"account number: (\d{64})\nAPI key: (sk-\S+)", secret).groups()
    assert httpx.get(stack.base_url + "/v1/account", headers={"Authorization": f"Bearer {key}"}).json()["tier"] == 2
    page.wait_for_selector("#op-accounts tbody tr:has-text('needle-from-ui')")

    # enough accounts for three pages of 10
    total = admin.get("/admin/accounts", params={"limit": 1}).json()["total"]
    for i in range(max(0, 21 - total)):
        admin.post("/admin/accounts", json={"name": f"bulk-{i:02d}"}).raise_for_status()
    page.click("nav a[data-page=playground]")  # leave and come back: the list reloads
    page.click("nav a[data-page=operator]")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.startsWith('Page 1 of 3')")
    assert page.locator("#op-accounts tbody tr").count() == 10
    assert page.is_disabled("#op-prev")
    first_page = page.locator("#op-accounts tbody tr").first.get_attribute("data-id")
    page.click("#op-next")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.startsWith('Page 2 of 3')")
    assert page.locator("#op-accounts tbody tr").first.get_attribute("data-id") != first_page
    page.click("#op-next")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.startsWith('Page 3 of 3')")
    assert page.is_disabled("#op-next")
    page.click("#op-prev")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.startsWith('Page 2 of 3')")

    # search, then change the tier and disable from the row
    page.fill("#op-search", "needle")
    wait_js(page, "() => document.getElementById('op-page-info').textContent.includes('matching')")
    rows = page.locator("#op-accounts tbody tr")
    assert rows.count() == 1 and "needle-from-ui" in rows.first.text_content()
    account_id = rows.first.get_attribute("data-id")
    with page.expect_response(lambda r: r.url.endswith(f"/admin/accounts/{account_id}/tier")) as changed:
        rows.first.locator("select").select_option("3")
    assert changed.value.status == 200
    assert admin.get(f"/admin/accounts/{account_id}").json()["tier"] == 3
    with page.expect_response(lambda r: r.url.endswith(f"/admin/accounts/{account_id}/disable")):
        rows.first.get_by_role("button", name="Disable needle-from-ui").click()
    page.wait_for_selector(f"tr[data-id='{account_id}']:has-text('disabled')")
    assert admin.get(f"/admin/accounts/{account_id}").json()["enabled"] is False
    assert httpx.get(stack.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    page.fill("#op-search", "")

    # the live view: the numbers /metrics exports, models and plugins
    page.wait_for_selector("#op-models tr:has-text('smollm2-135m-instruct')")
    page.wait_for_selector("#op-plugins tr:has-text('adyton_web')")
    httpx.post(stack.base_url + "/v1/chat/completions", timeout=120,
               headers={"Authorization": f"Bearer {stack.api_key}"},
               json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).raise_for_status()
    metrics = httpx.get(stack.base_url + "/metrics", headers={"Authorization": f"Bearer {stack.admin_key}"}).text
    ok_total = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith('adyton_requests_total{') and 'outcome="ok"' in line)
    # refreshed live: the page catches up with the server's count without a reload
    wait_js(page, f"""() => {{
        const row = [...document.querySelectorAll('#op-outcomes tr')].find((r) => r.textContent.startsWith('ok'));
        return row && parseInt(row.querySelector('td').textContent.replace(/,/g, '')) >= {int(ok_total)};
    }}""")
    assert page.locator("#op-live svg.chart").count() == 2
    assert "Time to first token: mean" in page.text_content("#op-live")
    assert controls_without_label(page) == []
    page.wait_for_selector("#op-accounts tbody tr >> nth=9")
    tab.shot("operator")
    admin.close()
    tab.assert_clean(key, number)
