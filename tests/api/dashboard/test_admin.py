"""The admin view: owners created, disabled, enabled and given new keys from the dashboard
(through the same functions as the admin API), hosts and their backpressure, health, and
settings with secrets masked."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tests.api.dashboard.conftest import ADMIN_KEY, csrf_of, post_form, sign_in
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

NEW_KEY = re.compile(r'<code id="new-owner-key">([^<]+)</code>')
NEW_ID = re.compile(r'<code id="new-owner-id">([^<]+)</code>')
URL_PASSWORD = "proxy-pass-word-42"


@pytest.fixture
async def admin_server(make_server: ServerFactory) -> Server:
    return await make_server(
        admin_key=ADMIN_KEY, s3_endpoint=f"https://user:{URL_PASSWORD}@s3.example:9000"
    )


@pytest.fixture
async def api(admin_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(admin_server) as http:
        yield http


@pytest.fixture
async def admin_ui(admin_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(admin_server) as http:
        response = await sign_in(http, "", ADMIN_KEY)
        assert response.status_code == 303, response.text
        yield http


async def key_works(api: httpx.AsyncClient, owner_id: str, key: str) -> bool:
    headers = {"Authorization": f"Bearer {key}", "X-Tasks-Owner-Id": owner_id}
    response = await api.get("/v1/queues", headers=headers)
    assert response.status_code in (200, 401, 403), response.text  # 403: disabled
    return response.status_code == 200


async def admin_owners(api: httpx.AsyncClient) -> list[dict[str, object]]:
    response = await api.get("/v1/admin/owners", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200
    found: list[dict[str, object]] = response.json()
    return found


async def test_admin_page_with_no_owners(admin_ui: httpx.AsyncClient) -> None:
    page = await admin_ui.get("/ui/admin")
    assert page.status_code == 200
    assert "No owners yet." in page.text and "Create an owner" in page.text
    assert 'id="new-owner-key"' not in page.text


async def test_settings_are_shown_with_secrets_masked(admin_ui: httpx.AsyncClient) -> None:
    page = await admin_ui.get("/ui/admin")
    assert ADMIN_KEY not in page.text and "<code>admin_key</code></td><td>***" in page.text
    assert URL_PASSWORD not in page.text
    assert "https://user:***@s3.example:9000" in page.text
    assert "Health" in page.text and "database" in page.text


async def test_create_an_owner_shows_its_key_once_and_the_key_works(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    created = await post_form(
        admin_ui, "/ui/admin", "/ui/admin/owners", name="made-in-ui", tasksInQueueLimit="7"
    )
    assert created.status_code == 201, created.text
    key, owner_id = NEW_KEY.search(created.text), NEW_ID.search(created.text)
    assert key is not None and owner_id is not None
    assert await key_works(api, owner_id.group(1), key.group(1))
    [record] = await admin_owners(api)
    assert record["name"] == "made-in-ui" and record["tasksInQueueLimit"] == 7
    again = await admin_ui.get("/ui/admin")
    assert key.group(1) not in again.text and "made-in-ui" in again.text  # shown once
    assert key.group(1) not in str(admin_ui.cookies.get("tasks_session"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Bad Name"}, "lowercase letters"),
        ({"name": "abc"}, "at least 5"),
        ({"name": "fine-name", "tasksInQueueLimit": "many"}, "whole number"),
        ({"name": "fine-name", "requestBudget": "0"}, "requestBudget"),
    ],
)
async def test_create_an_owner_with_bad_fields_changes_nothing(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient, fields: dict[str, str], message: str
) -> None:
    page = await post_form(admin_ui, "/ui/admin", "/ui/admin/owners", **fields)
    assert page.status_code == 400 and message in page.text, page.text
    assert f'value="{fields["name"]}"' in page.text  # the form keeps what was typed
    assert await admin_owners(api) == []


async def test_create_an_owner_whose_name_is_taken(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    await register_owner(api, "taken-name", {"Authorization": f"Bearer {ADMIN_KEY}"})
    page = await post_form(admin_ui, "/ui/admin", "/ui/admin/owners", name="taken-name")
    assert page.status_code == 400 and 'role="alert"' in page.text
    assert len(await admin_owners(api)) == 1


async def test_create_without_the_csrf_token_is_refused(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    refused = await admin_ui.post("/ui/admin/owners", data={"name": "no-token-owner"})
    assert refused.status_code == 403
    assert await admin_owners(api) == []


async def test_disable_and_enable_an_owner(
    admin_server: Server, admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-to-stop", {"Authorization": f"Bearer {ADMIN_KEY}"})
    async with client_for(admin_server) as owner_ui:
        assert (await sign_in(owner_ui, owner.id, owner.key)).status_code == 303
        action = f"/ui/admin/owners/{owner.id}/disable"
        done = await post_form(admin_ui, "/ui/admin", action)
        assert done.status_code == 303
        page = await admin_ui.get("/ui/admin")
        assert "is disabled" in page.text and f"/ui/admin/owners/{owner.id}/enable" in page.text
        assert not await key_works(api, owner.id, owner.key)
        assert (await owner_ui.get("/ui/")).status_code == 303  # its session ended too
        enabled = await post_form(admin_ui, "/ui/admin", f"/ui/admin/owners/{owner.id}/enable")
        assert enabled.status_code == 303
        assert await key_works(api, owner.id, owner.key)


async def test_a_new_key_replaces_the_old_one(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-new-key", {"Authorization": f"Bearer {ADMIN_KEY}"})
    page = await post_form(admin_ui, "/ui/admin", f"/ui/admin/owners/{owner.id}/rotate")
    assert page.status_code == 200 and "given a new key" in page.text
    key = NEW_KEY.search(page.text)
    assert key is not None and key.group(1) != owner.key
    assert not await key_works(api, owner.id, owner.key)
    assert await key_works(api, owner.id, key.group(1))


@pytest.mark.parametrize(
    "action",
    [
        "/ui/admin/owners/01AAAAAAAAAAAAAAAAAAAAAAAA/disable",
        "/ui/admin/owners/short/rotate",
        "/ui/admin/owners/01AAAAAAAAAAAAAAAAAAAAAAAA/delete",
    ],
)
async def test_actions_on_an_unknown_owner_are_a_404_page(
    admin_ui: httpx.AsyncClient, action: str
) -> None:
    page = await post_form(admin_ui, "/ui/admin", action)
    assert page.status_code == 404 and "Not found" in page.text


async def test_delete_an_owner(
    admin_server: Server, admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-to-go", {"Authorization": f"Bearer {ADMIN_KEY}"})
    kept = await register_owner(api, "owner-to-keep", {"Authorization": f"Bearer {ADMIN_KEY}"})
    async with client_for(admin_server) as owner_ui:
        assert (await sign_in(owner_ui, owner.id, owner.key)).status_code == 303
        page = await admin_ui.get("/ui/admin")
        assert 'aria-label="Delete owner-to-go"' in page.text
        done = await post_form(admin_ui, "/ui/admin", f"/ui/admin/owners/{owner.id}/delete")
        assert done.status_code == 303
        after = await admin_ui.get("/ui/admin")
        assert "Owner owner-to-go" in after.text and "is deleted" in after.text
        assert f'id="owner-{owner.id}"' not in after.text
        assert [record["name"] for record in await admin_owners(api)] == ["owner-to-keep"]
        assert not await key_works(api, owner.id, owner.key)
        assert (await owner_ui.get("/ui/")).status_code == 303  # its session ended too
        assert await key_works(api, kept.id, kept.key)


async def test_an_owner_with_unfinished_tasks_is_not_deleted(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-busy", {"Authorization": f"Bearer {ADMIN_KEY}"})
    request = {"url": "https://later.example/hook", "method": "POST"}
    body = {"httpRequest": request, "config": {"executionDelay": 3_600_000}}
    registered = await api.post("/v1/queues/register", json=body, headers=owner.headers)
    assert registered.status_code == 201, registered.text
    page = await post_form(admin_ui, "/ui/admin", f"/ui/admin/owners/{owner.id}/delete")
    assert page.status_code == 422 and 'role="alert"' in page.text
    assert "owner-busy: The owner still has tasks in queue" in page.text
    assert await key_works(api, owner.id, owner.key)
    assert len(await admin_owners(api)) == 1


async def test_an_unknown_action_is_a_404_page(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-kept", {"Authorization": f"Bearer {ADMIN_KEY}"})
    page = await post_form(admin_ui, "/ui/admin", f"/ui/admin/owners/{owner.id}/delete-all")
    assert page.status_code == 404
    assert await key_works(api, owner.id, owner.key)


async def test_an_owner_cannot_use_the_admin_actions(
    admin_server: Server, api: httpx.AsyncClient
) -> None:
    owner: OwnerAuth = await register_owner(
        api, "owner-curious", {"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    async with client_for(admin_server) as owner_ui:
        await sign_in(owner_ui, owner.id, owner.key)
        page = await owner_ui.get("/ui/")
        response = await owner_ui.post(
            f"/ui/admin/owners/{owner.id}/rotate", data={"csrf": csrf_of(page)}
        )
        assert response.status_code == 303 and "/ui/login" in response.headers["location"]
        assert await key_works(api, owner.id, owner.key)


async def test_admin_page_when_the_database_fails(
    admin_server: Server, admin_ui: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=admin_server.asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tasks.test", cookies=admin_ui.cookies
    ) as http:
        await admin_server.store.close()
        page = await http.get("/ui/admin")
        assert page.status_code in (500, 503) and "Traceback" not in page.text
        await admin_server.store.open()


async def hosts_api(api: httpx.AsyncClient, host: str) -> dict[str, object]:
    response = await api.get(f"/v1/hosts/{host}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    found: dict[str, object] = response.json()
    return found


# -- hosts ----------------------------------------------------------------------------------


async def test_hosts_section_when_no_host_has_state(admin_ui: httpx.AsyncClient) -> None:
    page = await admin_ui.get("/ui/admin")
    assert "No host is busy, throttled, failing or has an override." in page.text


async def test_hosts_section_shows_overrides_and_backpressure(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = await api.patch("/v1/hosts/slow.example.com", json={"maxRate": 2}, headers=admin)
    assert response.status_code == 200, response.text
    page = await admin_ui.get("/ui/admin")
    hosts = page.text.split('id="hosts-title"', 1)[1]
    assert "<code>slow.example.com</code>" in hosts and "override" in hosts
    assert "2.0/s" in hosts and "closed" in hosts


async def test_hosts_section_shows_a_host_that_answered_429(
    admin_server: Server, admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    owner = await register_owner(api, "owner-of-calls", {"Authorization": f"Bearer {ADMIN_KEY}"})
    async with TargetServer() as target:
        target.route("/busy", Reply(429, b"slow down"))
        request = {"url": target.url("/busy"), "method": "POST"}
        body = {"httpRequest": request, "config": {"executionDelay": 0}}
        response = await api.post("/v1/queues/register", json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        await wait_until(lambda: len(target.arrivals_at("/busy")) == 1, message="the call")

        async def shown() -> bool:
            page = await admin_ui.get("/ui/admin")
            return "429 at" in page.text.split('id="hosts-title"', 1)[1]

        await wait_until(shown, message="the host's 429 on the admin page")


async def test_set_and_clear_a_host_override(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    page = await admin_ui.get("/ui/admin")
    assert 'for="h-host"' in page.text and 'for="h-rate"' in page.text
    fields = {"host": "Slow.Example.com:8443", "maxConcurrency": "4", "maxRate": "2.5"}
    done = await post_form(admin_ui, "/ui/admin", "/ui/admin/hosts", **fields)
    assert done.status_code == 303
    shown = await admin_ui.get("/ui/admin")
    assert "Host slow.example.com:8443: at most 4 at once, 2.5/s." in shown.text
    hosts = shown.text.split('id="hosts-title"', 1)[1]
    assert "<code>slow.example.com:8443</code>" in hosts and "2.5/s" in hosts
    assert 'aria-label="Clear the override of slow.example.com:8443"' in hosts
    override = (await hosts_api(api, "slow.example.com:8443"))["override"]
    assert isinstance(override, dict)
    assert override["maxConcurrency"] == 4 and override["maxRate"] == 2.5
    # a blank limit returns that limit to the default; the other is replaced
    again = {"host": "slow.example.com:8443", "maxConcurrency": "", "maxRate": "1"}
    assert (await post_form(admin_ui, "/ui/admin", "/ui/admin/hosts", **again)).status_code == 303
    override = (await hosts_api(api, "slow.example.com:8443"))["override"]
    assert isinstance(override, dict)
    assert override["maxConcurrency"] is None and override["maxRate"] == 1.0
    host = {"host": "slow.example.com:8443"}
    cleared = await post_form(admin_ui, "/ui/admin", "/ui/admin/hosts/clear", **host)
    assert cleared.status_code == 303
    after = await admin_ui.get("/ui/admin")
    assert "Host slow.example.com:8443 is back to the server&#39;s defaults." in after.text
    assert (await hosts_api(api, "slow.example.com:8443"))["override"] is None
    assert "No host is busy, throttled, failing or has an override." in after.text
    missing = await post_form(admin_ui, "/ui/admin", "/ui/admin/hosts/clear", **host)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": "not a host", "maxRate": "2"}, "host: a name or IPv4 address"),
        ({"host": "x.example:70000", "maxRate": "2"}, "host: a name or IPv4 address"),
        ({"host": "x.example", "maxConcurrency": "many"}, "maxConcurrency must be a whole"),
        ({"host": "x.example", "maxConcurrency": "0"}, "maxConcurrency: Input should be"),
        ({"host": "x.example", "maxRate": "-1"}, "maxRate: Input should be greater than 0"),
        ({"host": "x.example", "maxRate": "fast"}, "maxRate must be a number"),
    ],
)
async def test_set_host_limits_with_bad_fields_changes_nothing(
    admin_ui: httpx.AsyncClient, api: httpx.AsyncClient, fields: dict[str, str], message: str
) -> None:
    page = await post_form(admin_ui, "/ui/admin", "/ui/admin/hosts", **fields)
    assert page.status_code == 400 and message in page.text, page.text
    assert f'value="{fields["host"]}"' in page.text  # the form keeps what was typed
    listed = await api.get("/v1/hosts", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.json() == []


async def test_host_forms_need_the_csrf_token_and_the_admin(
    admin_server: Server, admin_ui: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    fields = {"host": "x.example", "maxRate": "2"}
    refused = await admin_ui.post("/ui/admin/hosts", data=fields)
    assert refused.status_code == 403
    owner = await register_owner(api, "owner-no-hosts", {"Authorization": f"Bearer {ADMIN_KEY}"})
    async with client_for(admin_server) as owner_ui:
        await sign_in(owner_ui, owner.id, owner.key)
        page = await owner_ui.get("/ui/")
        response = await owner_ui.post("/ui/admin/hosts", data={"csrf": csrf_of(page), **fields})
        assert response.status_code == 303 and "/ui/login" in response.headers["location"]
    listed = await api.get("/v1/hosts", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.json() == []
