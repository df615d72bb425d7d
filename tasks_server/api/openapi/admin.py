"""The OpenAPI paths of owner administration (``/v1/admin/owners``, behind ADMIN_KEY)."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from ..admin_schemas import OwnerChangeIn, OwnerCreateIn
from .parts import OWNER_NAME_PATTERN, REF, JsonObject, json_body, operation, path_param, schema_ref

ADMIN: list[JsonObject] = [{"adminKey": []}]
_ONLY_WITH_KEY = "Exists only when the ADMIN_KEY setting is set (404 otherwise)."
OWNER_ID = path_param(
    "owner_id", {"type": "string", "pattern": "^[0-9A-Za-z]{26}$"}, "the owner's id (ULID)"
)


def admin_schemas() -> dict[str, JsonObject]:
    _, top = models_json_schema(
        [(OwnerCreateIn, "validation"), (OwnerChangeIn, "validation")], ref_template=REF
    )
    schemas: dict[str, JsonObject] = top["$defs"]
    schemas["OwnerCreateIn"]["properties"]["name"]["pattern"] = OWNER_NAME_PATTERN
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
    return {
        **schemas,
        "AdminOwner": {
            "allOf": [schema_ref("Owner")],
            "type": "object",
            "properties": {
                "disabled": {"type": "boolean"},
                "requestBudget": {
                    "type": ["integer", "null"],
                    "description": "API requests per minute; null: the server's default",
                },
            },
        },
        "AdminOwnerCreated": {
            "allOf": [schema_ref("AdminOwner")],
            "type": "object",
            "required": ["key"],
            "properties": {"key": {"type": "string", "description": "shown once"}},
        },
    }


def admin_paths() -> JsonObject:
    owner = schema_ref("AdminOwner")
    return {
        "/v1/admin/owners": {
            "get": operation(
                "List every owner (administrators)",
                "operations",
                (200, json_body({"type": "array", "items": owner}, "oldest first")),
                (401, 404, 429),
                security=ADMIN,
                description=_ONLY_WITH_KEY,
            ),
            "post": operation(
                "Create an owner (administrators; whatever OWNER_REGISTRATION says)",
                "operations",
                (201, json_body(schema_ref("AdminOwnerCreated"), "the owner and its key")),
                (400, 401, 404, 409, 413, 429),
                security=ADMIN,
                body=schema_ref("OwnerCreateIn"),
                description=_ONLY_WITH_KEY,
            ),
        },
        "/v1/admin/owners/{owner_id}": {
            "parameters": [OWNER_ID],
            "patch": operation(
                "Disable or enable an owner, or change its limit or request budget",
                "operations",
                (200, json_body(owner, "the owner as stored")),
                (400, 401, 404, 413, 429),
                security=ADMIN,
                body=schema_ref("OwnerChangeIn"),
                description="A disabled owner's key stops working at once. " + _ONLY_WITH_KEY,
            ),
            "delete": operation(
                "Delete an owner with no unfinished task, and its finished tasks",
                "operations",
                (200, json_body(schema_ref("Done"), "deleted")),
                (401, 404, 422, 429),
                security=ADMIN,
                description=_ONLY_WITH_KEY,
            ),
        },
        "/v1/admin/owners/{owner_id}/key": {
            "parameters": [OWNER_ID],
            "post": operation(
                "Give an owner a new key (the old one stops working at once)",
                "operations",
                (200, json_body(schema_ref("OwnerCreated"), "the id and the new key")),
                (401, 404, 429),
                security=ADMIN,
                description=_ONLY_WITH_KEY,
            ),
        },
    }
