"""``Kernel.complete_openapi``: every operation of a surface gets the
surface's declared operation fields, its error statuses with its error
schema, and a 2XX when it documents no success."""

from __future__ import annotations

from adyton import json_operation


def test_operations_get_the_owning_surface_statuses_and_schema(make_app):
    kernel = make_app().extensions["adyton"]
    wire = kernel.wire_formats["testwire"]
    wire.error_schema = {"type": "object", "required": ["err"]}
    wire.error_statuses = (400, 503)
    wire.openapi_operations = {"/t/generate": {"post": json_operation(
        "Generate", request={"type": "object"}, response={"type": "object"}, status=201)}}
    document = {"paths": {
        "/t/generate": {"post": {"responses": {400: {"description": "mine"}}}},
        "/health": {"get": {}},
    }}
    out = kernel.complete_openapi(document)
    generate = out["paths"]["/t/generate"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert generate["responses"]["400"] == {"description": "mine"}  # its own wins; keys are strings
    assert generate["responses"]["503"]["content"]["application/json"]["schema"] == wire.error_schema
    assert set(generate["responses"]) == {"201", "400", "503"}
    health = out["paths"]["/health"]["get"]["responses"]  # the kernel's own routes
    assert "2XX" in health and "404" in health and "500" in health
