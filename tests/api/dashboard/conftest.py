"""A signed-in dashboard client over the app (httpx, no socket)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, client_for

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ADMIN_KEY = "admin-key-for-tests-0123456789"


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match is not None, page.text[:500]
    return match.group(1)


async def sign_in(http: httpx.AsyncClient, owner_id: str, key: str) -> httpx.Response:
    page = await http.get("/ui/login")
    form = {"csrf": csrf_of(page), "ownerId": owner_id, "key": key, "next": "/ui/"}
    return await http.post("/ui/login", data=form)


async def post_form(
    http: httpx.AsyncClient, page_path: str, action: str, **fields: Any
) -> httpx.Response:
    """Post a form of ``page_path`` with the CSRF token the page carries."""
    page = await http.get(page_path)
    return await http.post(action, data={"csrf": csrf_of(page), **fields})


@pytest.fixture
async def ui(server: Server, owner: OwnerAuth) -> AsyncIterator[httpx.AsyncClient]:
    """A second client (its own cookies) signed in as ``owner``."""
    async with client_for(server) as http:
        response = await sign_in(http, owner.id, owner.key)
        assert response.status_code == 303, response.text
        yield http
