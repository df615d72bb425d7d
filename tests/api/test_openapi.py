"""The OpenAPI document: valid OpenAPI 3.1, every route in it (and nothing else), request
schemas that are the validating models' own, and a docs page with no outside assets."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import httpx
import jsonschema
from openapi_spec_validator import validate
from starlette.routing import Route

from tasks_server.api import routes
from tasks_server.api.openapi import DOCS_ASSETS, spec
from tasks_server.api.schemas import ConfigIn, HttpRequestIn, TaskIn

METHODS = {"get", "post", "put", "patch", "delete"}


def _spec_operations() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in spec()["paths"].items()
        for method in item
        if method in METHODS
    }


def _route_operations() -> set[tuple[str, str]]:
    found = set()
    for route in routes():
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((route.path, method))
    return found


def _validator(component: str) -> jsonschema.Draft202012Validator:
    document = {"$ref": f"#/components/schemas/{component}", "components": spec()["components"]}
    return jsonschema.Draft202012Validator(document)


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(spec())
    assert spec()["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_path_exists() -> None:
    assert _spec_operations() == _route_operations()


def test_path_parameters_are_declared() -> None:
    for path, item in spec()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == declared, path


def test_request_schemas_come_from_the_validating_models() -> None:
    schemas = spec()["components"]["schemas"]
    for model in (TaskIn, HttpRequestIn, ConfigIn):
        wire_names = {field.alias or name for name, field in model.model_fields.items()}
        assert set(schemas[model.__name__]["properties"]) == wire_names
        assert schemas[model.__name__]["additionalProperties"] is False
    register = spec()["paths"]["/v1/queues/register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskIn"
    }


def test_bodies_the_server_accepts_match_the_schema_and_bad_ones_do_not() -> None:
    task = _validator("TaskIn")
    good: dict[str, Any] = {
        "httpRequest": {"url": "https://example.com/hook", "method": "POST", "data": {"a": 1}},
        "config": {"executeAt": "2030-01-01T00:00:00Z", "retry": 3, "timeout": 5000},
        "metadata": {"kind": "test"},
    }
    TaskIn.model_validate(good)
    task.validate(good)
    assert not task.is_valid({"httpRequest": {"url": "https://example.com/x"}})  # no method
    assert not task.is_valid({**good, "unknown": 1})
    owner = _validator("OwnerIn")
    assert owner.is_valid({"name": "owner-one"})
    assert not owner.is_valid({"name": "1owner"})


async def test_openapi_json_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == spec()


async def test_docs_page_and_its_assets_are_served_from_the_package(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, media_type in DOCS_ASSETS.items():
        assert f'src="docs/{name}"' in page.text or f'href="docs/{name}"' in page.text
        asset = await client.get(f"/docs/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media_type)
    assert (await client.get("/docs/..%2Fopenapi.py")).status_code == 404
    assert (await client.get("/docs/index.css")).status_code == 404


def test_docs_assets_load_nothing_from_outside() -> None:
    folder = resources.files("tasks_server.api").joinpath("docs")
    for name in ("index.html", *DOCS_ASSETS):
        text = folder.joinpath(name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
