"""Every dashboard page at once: each one's form controls and buttons have an accessible
name, its charts a text alternative, its layout a language, one heading and a skip link;
each page without its database is an error page without a traceback; an action while
another process holds the database's write lock answers 503 and changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tasks_server.app import Server
from tests.api.dashboard.conftest import ADMIN_KEY, post_form, sign_in
from tests.api.dashboard.test_failures_workflows import run_state, start_run, step
from tests.api.dashboard.test_pages import finished, new_task
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.targets import Reply, TargetServer

# every page an owner sees, with {task}, {pending}, {schedule} and {run} filled in
OWNER_PAGES = (
    "/ui/",
    "/ui/tasks",
    "/ui/tasks/{task}",
    "/ui/tasks/{pending}",
    "/ui/tasks/{pending}/edit",
    "/ui/failures",
    "/ui/schedules",
    "/ui/schedules/{schedule}",
    "/ui/workflows",
    "/ui/workflows/{run}",
    "/ui/test",
)
CONTROLS = ("input", "select", "textarea")


@dataclass
class Audit(HTMLParser):
    """What a page offers to a screen reader: controls without a name, buttons without
    text, images without a text alternative, and the page's landmarks."""

    labelled: set[str] = field(default_factory=set)  # ids named by <label for>
    controls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    unnamed_buttons: list[str] = field(default_factory=list)
    unnamed_images: list[str] = field(default_factory=list)
    headings: int = 0
    lang: str = ""
    has_main: bool = False
    has_skip_link: bool = False
    _button: dict[str, str] | None = None
    _button_text: str = ""

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "html":
            self.lang = a.get("lang", "")
        elif tag == "label" and a.get("for"):
            self.labelled.add(a["for"])
        elif tag in CONTROLS and a.get("type") not in ("hidden", "submit"):
            self.controls.append((tag, a))
        elif tag == "button":
            self._button, self._button_text = a, ""
        elif tag == "img" or (tag == "svg" and a.get("role") == "img"):
            if not (a.get("aria-label") or a.get("alt")):
                self.unnamed_images.append(str(a))
        elif tag == "h1":
            self.headings += 1
        elif tag == "main":
            self.has_main = a.get("id") == "main"
        elif tag == "a" and a.get("href") == "#main":
            self.has_skip_link = True

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button_text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            if not (self._button_text.strip() or self._button.get("aria-label")):
                self.unnamed_buttons.append(str(self._button))
            self._button = None

    def unnamed_controls(self) -> list[str]:
        return [
            f"<{tag} {attrs}>"
            for tag, attrs in self.controls
            if attrs.get("id") not in self.labelled
            and not attrs.get("aria-label")
            and not attrs.get("aria-labelledby")
        ]


def audit(html: str) -> Audit:
    found = Audit()
    found.feed(html)
    found.close()
    return found


def assert_accessible(path: str, html: str) -> None:
    found = audit(html)
    assert found.lang == "en" and found.has_main and found.has_skip_link, path
    assert found.headings == 1, f"{path}: {found.headings} h1 elements"
    assert found.unnamed_controls() == [], path
    assert found.unnamed_buttons == [], path
    assert found.unnamed_images == [], path


def test_the_audit_finds_what_a_screen_reader_would_miss() -> None:
    page = (
        '<html lang="en"><body><a href="#main">Skip</a><main id="main"><h1>T</h1>'
        '<label for="a">A</label><input id="a"><input id="b" name="b">'
        '<select aria-label="S"></select><button></button><button>Go</button>'
        '<svg role="img"></svg><svg role="img" aria-label="chart"></svg></main></body></html>'
    )
    found = audit(page)
    assert found.unnamed_controls() == ["<input {'id': 'b', 'name': 'b'}>"]
    assert len(found.unnamed_buttons) == 1 and len(found.unnamed_images) == 1
    assert found.headings == 1 and found.has_main and found.has_skip_link


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/ok", Reply(200, b"{}"))
        server.route("/fail", Reply(500, b"broken"))
        yield server


@pytest.fixture
async def pages(client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer) -> list[str]:
    """Every owner page, in its normal state: a finished task with attempts, a failure,
    a pending task, a schedule and a workflow run exist."""
    done = await new_task(client, owner, target.url("/ok"))
    failed = await new_task(client, owner, target.url("/fail"))
    pending = await new_task(client, owner, "https://later.example/x", delay_ms=3_600_000)
    body = {
        "name": "nightly-report",
        "schedule": "0 3 * * *",
        "httpRequest": {"url": "https://reports.example/run", "method": "POST"},
    }
    schedule = await client.post("/v1/schedules", json=body, headers=owner.headers)
    assert schedule.status_code == 201, schedule.text
    run = await start_run(
        client, owner, {"name": "one-step", "steps": [{"id": "a", **step(target, "/ok")}]}
    )
    await finished(client, owner, done, "SUCCESS")
    await finished(client, owner, failed, "ERROR")
    await run_state(client, owner, run, "SUCCESS")
    ids = {"task": done, "pending": pending, "schedule": schedule.json()["id"], "run": run}
    return [path.format(**ids) for path in OWNER_PAGES]


async def test_every_owner_page_names_its_controls(ui: httpx.AsyncClient, pages: list[str]) -> None:
    for path in pages:
        page = await ui.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert_accessible(path, page.text)
    failed = await ui.get("/ui/tasks?state=DONE")  # an error page too
    assert failed.status_code == 400
    assert_accessible("/ui/tasks?state=DONE", failed.text)


async def test_the_sign_in_and_admin_pages_name_their_controls(
    make_server: ServerFactory,
) -> None:
    server = await make_server(admin_key=ADMIN_KEY)
    async with client_for(server) as http:
        login = await http.get("/ui/login")
        assert_accessible("/ui/login", login.text)
        await register_owner(http, "owner-listed", {"Authorization": f"Bearer {ADMIN_KEY}"})
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        await http.patch("/v1/hosts/slow.example", json={"maxRate": 1}, headers=admin)
        await sign_in(http, "", ADMIN_KEY)
        page = await http.get("/ui/admin")
        assert "owner-listed" in page.text and "slow.example" in page.text
        assert_accessible("/ui/admin", page.text)


async def test_every_page_without_its_database_is_an_error_page(
    server: Server, ui: httpx.AsyncClient, pages: list[str]
) -> None:
    transport = httpx.ASGITransport(app=server.asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tasks.test", cookies=ui.cookies
    ) as http:
        await server.store.close()  # the database is gone under signed-in pages
        try:
            for path in pages:
                page = await http.get(path)
                assert page.status_code == 500 and "logged this error" in page.text, path
                assert "Traceback" not in page.text and "sqlite" not in page.text.lower()
                assert_accessible(path, page.text)
        finally:
            await server.store.open()
        assert (await http.get(pages[0])).status_code == 200  # and back once it returns


async def test_an_action_while_the_database_is_locked_answers_503_and_changes_nothing(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    database = tmp_path / "locked.db"
    server = await make_server(path_sqlite=str(database), sqlite_busy_timeout_ms=100)
    async with client_for(server) as http:
        owner = await register_owner(http, "owner-locked")
        task_id = await new_task(http, owner, "https://later.example/x", delay_ms=3_600_000)
        await sign_in(http, owner.id, owner.key)
        task_page = f"/ui/tasks/{task_id}"
        assert (await http.get(task_page)).status_code == 200
        other = sqlite3.connect(database, timeout=0)  # an admin's sqlite3 shell, say
        try:
            other.execute("BEGIN IMMEDIATE")  # held far longer than the busy timeout
            page = await post_form(http, task_page, f"{task_page}/pause")
            assert page.status_code == 503, page.text
            assert "locked" in page.text and "Traceback" not in page.text
            assert_accessible(f"{task_page}/pause", page.text)
        finally:
            other.rollback()
            other.close()
        state = await http.get(f"/v1/queues/{task_id}", headers=owner.headers)
        assert state.json()["state"] == "RUNNING"
        paused = await post_form(http, task_page, f"{task_page}/pause")
        assert paused.status_code == 303  # the same action once the lock is gone
