"""OpenAPI entries of the owner security endpoints: signing secrets and validated domains."""

from __future__ import annotations

from .parts import OWNER_AUTH, OWNER_NAME, JsonObject, json_body, operation, path_param

_SIGNING: JsonObject = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "secret": {"type": "string", "description": "whsec_ and the base64 secret"},
        "previousSecret": {"type": ["string", "null"], "description": "still signing"},
        "previousValidUntil": {"type": ["integer", "null"], "description": "epoch ms"},
    },
}
_DOMAINS: JsonObject = {
    "type": "object",
    "properties": {
        "domains": {
            "type": ["array", "null"],
            "items": {"type": "string", "description": "example.com or *.example.com"},
        }
    },
}
_OWNER_ID = path_param("owner_id", {"type": "string"}, "the owner's id")
_ADMIN: list[JsonObject] = [{"adminKey": []}]


def openapi_paths() -> dict[str, JsonObject]:
    signing = json_body(_SIGNING, "the owner's Standard Webhooks signing")
    domains = json_body(_DOMAINS, "the owner's validated domains (null: no limit)")
    return {
        "/v1/owners/{name}/signing": {
            "parameters": [OWNER_NAME],
            "get": operation(
                "Read the caller's signing secret", "owners", (200, signing),
                (401, 403, 404), security=OWNER_AUTH,
            ),
            "patch": operation(
                "Switch signing on or off", "owners", (200, signing), (400, 401, 403, 404),
                security=OWNER_AUTH,
                body={"type": "object", "properties": {"enabled": {"type": "boolean"}}},
            ),
        },
        "/v1/owners/{name}/signing/rotate": {
            "parameters": [OWNER_NAME],
            "post": operation(
                "Rotate the signing secret (the old one signs for SIGNING_OVERLAP_S)",
                "owners", (200, signing), (401, 403, 404), security=OWNER_AUTH,
            ),
        },
        "/v1/admin/owners/{owner_id}/domains": {
            "parameters": [_OWNER_ID],
            "get": operation(
                "Read an owner's validated domains (administrators)", "operations",
                (200, domains), (401, 404), security=_ADMIN,
            ),
            "put": operation(
                "Set an owner's validated domains (administrators)", "operations",
                (200, domains), (400, 401, 404), security=_ADMIN, body=_DOMAINS,
            ),
        },
    }  # fmt: skip
