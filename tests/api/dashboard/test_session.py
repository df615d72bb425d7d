"""Signing in and out, the session cookie, CSRF and the switch."""

from __future__ import annotations

import httpx

from tasks_server.app import Server
from tests.api.dashboard.conftest import ADMIN_KEY, csrf_of, post_form, sign_in
from tests.conftest import OwnerAuth, ServerFactory, client_for


async def test_root_redirects_to_the_dashboard(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


async def test_pages_need_a_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui/tasks?state=ERROR")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Ftasks%3Fstate%3DERROR"
    login = await client.get("/ui/login")
    assert login.status_code == 200 and 'for="ownerId"' in login.text and 'name="key"' in login.text


async def test_sign_in_sets_a_strict_http_only_signed_cookie(
    server: Server, owner: OwnerAuth
) -> None:
    async with client_for(server) as http:
        response = await sign_in(http, owner.id, owner.key)
        assert response.status_code == 303 and response.headers["location"] == "/ui/"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "max-age=28800" in cookie and "path=/ui" in cookie
        assert owner.key.lower() not in cookie  # the key never travels back
        overview = await http.get("/ui/")
        assert overview.status_code == 200 and owner.id in overview.text
        assert "content-security-policy" in overview.headers


async def test_a_tampered_cookie_is_not_a_session(server: Server, owner: OwnerAuth) -> None:
    async with client_for(server) as http:
        await sign_in(http, owner.id, owner.key)
        value = http.cookies["tasks_session"]
        http.cookies.clear()
        http.cookies.set("tasks_session", value[:-3] + "AAA", domain="tasks.test", path="/ui")
        assert (await http.get("/ui/")).status_code == 303


async def test_wrong_key_is_refused(server: Server, owner: OwnerAuth) -> None:
    async with client_for(server) as http:
        response = await sign_in(http, owner.id, "x" * 64)
        assert response.status_code == 401 and "do not match" in response.text
        assert (await http.get("/ui/tasks")).status_code == 303


async def test_posts_without_the_csrf_token_are_refused(ui: httpx.AsyncClient) -> None:
    response = await ui.post("/ui/logout", data={})
    assert response.status_code == 403 and "out of date" in response.text
    response = await ui.post("/ui/logout", data={"csrf": "forged"})
    assert response.status_code == 403
    assert (await ui.get("/ui/")).status_code == 200  # still signed in


async def test_login_itself_needs_the_token(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    response = await client.post("/ui/login", data={"ownerId": owner.id, "key": owner.key})
    assert response.status_code == 403


async def test_sign_out_ends_the_session(ui: httpx.AsyncClient) -> None:
    response = await post_form(ui, "/ui/", "/ui/logout")
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert (await ui.get("/ui/")).status_code == 303


async def test_admin_signs_in_with_the_admin_key(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN_KEY)
    async with client_for(server) as http:
        assert (await sign_in(http, "", "not-the-admin-key-000")).status_code == 401
        assert (await sign_in(http, "", ADMIN_KEY)).status_code == 303
        admin = await http.get("/ui/admin")
        assert admin.status_code == 200 and "Health" in admin.text
        assert ADMIN_KEY not in admin.text and "admin_key" in admin.text


async def test_the_admin_page_is_for_the_admin_only(ui: httpx.AsyncClient) -> None:
    assert (await ui.get("/ui/admin")).status_code == 303


async def test_switched_off(make_server: ServerFactory) -> None:
    server = await make_server(dashboard=False)
    async with client_for(server) as http:
        assert (await http.get("/ui/login")).status_code == 404
        assert (await http.get("/")).status_code == 404


async def test_an_open_redirect_is_not_possible(server: Server, owner: OwnerAuth) -> None:
    async with client_for(server) as http:
        page = await http.get("/ui/login?next=//evil.example/")
        form = {
            "csrf": csrf_of(page),
            "ownerId": owner.id,
            "key": owner.key,
            "next": "https://evil.example/",
        }
        response = await http.post("/ui/login", data=form)
        assert response.headers["location"] == "/ui/"
