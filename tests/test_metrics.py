"""``adyton_requests_total`` counts every generation that ended, by outcome
and wire format, as /metrics shows it (the children of the counter are kept
per label pair: a new pair still gets its own line)."""

from __future__ import annotations

import re

from adyton import Credentials, GenerationRequest


def _count(text: str, outcome: str, wire: str) -> float:
    found = re.search(rf'^adyton_requests_total{{outcome="{outcome}",wire_format="{wire}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_requests_total_by_outcome_and_wire(make_app):
    app = make_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        for _ in range(3):
            assert (await client.post("/t/generate", json=body)).status_code == 200
        kernel = app.extensions["adyton"]
        request = GenerationRequest(prompt="hi", temperature=0)
        await (await kernel.submit(request, Credentials(wire_format="other"))).result()
        text = await (await client.get("/metrics")).get_data(as_text=True)
        assert _count(text, "ok", "testwire") == 3
        assert _count(text, "ok", "other") == 1
        assert kernel.metrics.requests.labels("ok", "testwire")._value.get() == 3
