"""The dashboard in a real browser (Debian's Chromium via selenium) against a real server
process on a free port. Each test leaves a screenshot in its temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Owner, call, chromium, missing_browser, sign_in, target
from tests.support.process import ServerProcess
from tests.support.waiting_sync import wait_for

_MISSING = missing_browser()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(_MISSING is not None, reason=f"no browser: {_MISSING}"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(server URL, target URL): one server process and one target for the module."""
    directory = tmp_path_factory.mktemp("server")
    with target() as target_url, ServerProcess(directory, EGRESS_ALLOW="127.0.0.1/32") as server:
        yield server.url, target_url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver
        driver.save_screenshot(str(tmp_path / "screenshot.png"))
        assert (tmp_path / "screenshot.png").stat().st_size > 0


def by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def text(driver: Any) -> str:
    """The page's text once it has loaded (a click that navigates may return earlier)."""
    from selenium.common.exceptions import WebDriverException

    found: list[str] = []

    def loaded() -> bool:
        try:
            if driver.execute_script("return document.readyState") != "complete":
                return False
            found.append(str(driver.find_element(by("TAG_NAME"), "body").text))
        except WebDriverException:  # the page changed under the read (stale node): again
            return False
        return True

    wait_for(loaded, timeout=10, message="the page to load")
    return found[-1]


def shows(driver: Any, *wanted: str) -> None:
    """Wait until the page shows every one of ``wanted`` (navigation may still run)."""
    wait_for(lambda: all(w in text(driver) for w in wanted), message=" and ".join(wanted))


def until(driver: Any, check: Callable[[], bool], message: str) -> None:
    """Reload the page until ``check`` holds (fails after the deadline)."""

    def reloaded() -> bool:
        if check():
            return True
        driver.refresh()
        return False

    wait_for(reloaded, timeout=15, message=message)


def press(driver: Any, label: str) -> None:
    driver.find_element(by("XPATH"), f"//button[normalize-space()='{label}']").click()


def test_sign_in_open_a_task_run_it_filter_and_sign_out(
    browser: Any, site: tuple[str, str]
) -> None:
    base, target_url = site
    owner = Owner(base, "browser-one")
    task_id = owner.register(f"{target_url}/ok", executionDelay=3_600_000)
    sign_in(browser, base, owner.id, owner.key)
    shows(browser, "Tasks by state")
    browser.find_element(by("LINK_TEXT"), "Tasks").click()
    shows(browser, task_id)
    browser.find_element(by("LINK_TEXT"), task_id).click()
    shows(browser, "No attempt yet.")
    press(browser, "Run now")
    shows(browser, "The task runs now.")
    until(browser, lambda: "Attempt 1 — 200" in text(browser), "the new attempt")
    browser.find_element(by("LINK_TEXT"), "Tasks").click()
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(by("ID"), "f-state")).select_by_value("SUCCESS")
    press(browser, "Filter")
    wait_for(lambda: "state=SUCCESS" in browser.current_url, message="the filtered list")
    shows(browser, task_id)
    Select(browser.find_element(by("ID"), "f-state")).select_by_value("ERROR")
    press(browser, "Filter")
    wait_for(lambda: "state=ERROR" in browser.current_url, message="the filtered list")
    shows(browser, "No tasks match.")
    assert task_id not in text(browser)
    press(browser, "Sign out")
    wait_for(lambda: browser.current_url.endswith("/ui/login"), message="the sign-in page")
    browser.get(f"{base}/ui/tasks")
    assert "/ui/login" in browser.current_url


def test_replay_a_failed_task(browser: Any, site: tuple[str, str]) -> None:
    base, target_url = site
    owner = Owner(base, "browser-two")
    task_id = owner.register(f"{target_url}/fail", executionDelay=0)
    wait_for(lambda: owner.state(task_id) == "ERROR", timeout=15, message="the failure")
    sign_in(browser, base, owner.id, owner.key)
    shows(browser, "Sign out")
    browser.find_element(by("LINK_TEXT"), "Failures").click()
    browser.find_element(by("LINK_TEXT"), task_id).click()
    shows(browser, "Attempt 1 — 500")
    press(browser, "Replay")
    shows(browser, "The task runs again.")
    until(browser, lambda: "Attempt 2 — 500" in text(browser), "the replayed attempt")
    assert owner.state(task_id) == "ERROR"


def test_a_form_without_its_csrf_token_is_refused(browser: Any, site: tuple[str, str]) -> None:
    base, target_url = site
    owner = Owner(base, "browser-three")
    task_id = owner.register(f"{target_url}/ok", executionDelay=3_600_000)
    sign_in(browser, base, owner.id, owner.key)
    shows(browser, "Sign out")
    browser.get(f"{base}/ui/tasks/{task_id}")
    browser.execute_script("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    press(browser, "Pause")
    shows(browser, "out of date")
    assert owner.state(task_id) == "RUNNING"


def test_another_owners_task_is_a_not_found_page(browser: Any, site: tuple[str, str]) -> None:
    base, target_url = site
    mine, theirs = Owner(base, "browser-four"), Owner(base, "browser-five")
    task_id = theirs.register(f"{target_url}/ok", executionDelay=3_600_000)
    sign_in(browser, base, mine.id, mine.key)
    shows(browser, "Sign out")
    browser.get(f"{base}/ui/tasks/{task_id}")
    assert "Not found" in browser.title and "not yours" in text(browser)


def test_phone_width_keeps_every_page_usable(tmp_path: Path, site: tuple[str, str]) -> None:
    base, target_url = site
    owner = Owner(base, "browser-six")
    task_id = owner.register(f"{target_url}/fail", executionDelay=0)
    wait_for(lambda: owner.state(task_id) == "ERROR", timeout=15, message="the failure")
    with chromium(tmp_path / "profile", width=390, height=844, phone=True) as phone:
        sign_in(phone, base, owner.id, owner.key)
        shows(phone, "Sign out")
        pages = ("/ui/", "/ui/tasks", f"/ui/tasks/{task_id}", "/ui/failures", "/ui/schedules")
        for path in (*pages, "/ui/workflows", "/ui/test"):
            phone.get(f"{base}{path}")
            shows(phone, "Sign out")
            width = phone.execute_script("return document.documentElement.scrollWidth")
            assert width <= 390, path  # nothing wider than the screen (tables scroll inside)
        phone.find_element(by("LINK_TEXT"), "Test a task").click()
        shows(phone, "Show the JSON")
        phone.save_screenshot(str(tmp_path / "screenshot.png"))


def test_numbers_refresh_in_place_without_a_reload(browser: Any, site: tuple[str, str]) -> None:
    base, _ = site
    owner = Owner(base, "browser-eight")
    first = owner.register("https://later.example/a", executionDelay=3_600_000)
    sign_in(browser, base, owner.id, owner.key)
    shows(browser, "Sign out")
    browser.get(f"{base}/ui/tasks")
    shows(browser, first)
    browser.execute_script("window.loadedOnce = true")  # gone if the page reloads
    second = owner.register("https://later.example/b", executionDelay=3_600_000)
    wait_for(lambda: second in text(browser), timeout=20, message="the new task, in place")
    assert browser.execute_script("return window.loadedOnce") is True


def focused(driver: Any) -> Any:
    return driver.switch_to.active_element


def tab_to(driver: Any, check: Callable[[Any], bool], what: str) -> Any:
    """Press Tab until the focused element passes ``check`` (at most 40 presses)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(40):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        element = focused(driver)
        if check(element):
            return element
    raise AssertionError(f"Tab never reached {what}")


def outline_of(driver: Any, element: Any) -> str:
    return str(driver.execute_script("return getComputedStyle(arguments[0]).outlineStyle", element))


def test_keyboard_alone_signs_in_and_acts(browser: Any, site: tuple[str, str]) -> None:
    from selenium.webdriver.common.keys import Keys

    base, _ = site
    owner = Owner(base, "browser-seven")
    task_id = owner.register("https://later.example/x", executionDelay=3_600_000)
    browser.get(f"{base}/ui/login")
    skip = tab_to(browser, lambda e: e.get_attribute("href") or "", "the first link")
    assert skip.text == "Skip to content"
    left = browser.execute_script("return arguments[0].getBoundingClientRect().left", skip)
    assert left >= 0  # off screen until focused, then shown
    assert outline_of(browser, skip) != "none"
    owner_field = tab_to(browser, lambda e: e.get_attribute("id") == "ownerId", "the owner id")
    owner_field.send_keys(owner.id)
    key_field = tab_to(browser, lambda e: e.get_attribute("id") == "key", "the key")
    key_field.send_keys(owner.key, Keys.ENTER)
    shows(browser, "Sign out")
    browser.get(f"{base}/ui/tasks/{task_id}")
    shows(browser, "No attempt yet.")
    pause = tab_to(browser, lambda e: e.text == "Pause", "the Pause button")
    assert outline_of(browser, pause) != "none"  # the focus is visible
    pause.send_keys(Keys.ENTER)
    shows(browser, "The task is paused.")
    assert owner.state(task_id) == "PAUSED"


ADMIN_KEY = "browser-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def admin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server process with an admin key."""
    directory = tmp_path_factory.mktemp("admin-server")
    with ServerProcess(directory, ADMIN_KEY=ADMIN_KEY) as server:
        yield server.url


def key_answer(base: str, owner_id: str, key: str) -> int:
    """The status the API gives this owner id and key."""
    import urllib.error

    headers = {"Authorization": f"Bearer {key}", "X-Tasks-Owner-Id": owner_id}
    try:
        call("GET", f"{base}/v1/queues", None, headers)
    except urllib.error.HTTPError as refused:
        return refused.code
    return 200


def test_admin_creates_an_owner_gives_it_a_new_key_and_disables_it(
    browser: Any, admin_site: str
) -> None:
    base = admin_site
    sign_in(browser, base, "", ADMIN_KEY)
    shows(browser, "every owner")
    browser.find_element(by("LINK_TEXT"), "Admin").click()
    shows(browser, "Create an owner")
    browser.find_element(by("ID"), "o-name").send_keys("browser-made")
    press(browser, "Create owner")
    shows(browser, "Owner browser-made created", "shown this once")
    owner_id = browser.find_element(by("ID"), "new-owner-id").text
    first_key = browser.find_element(by("ID"), "new-owner-key").text
    assert key_answer(base, owner_id, first_key) == 200

    browser.find_element(by("XPATH"), "//button[@aria-label='New key for browser-made']").click()
    shows(browser, "given a new key")
    second_key = browser.find_element(by("ID"), "new-owner-key").text
    assert second_key != first_key
    assert key_answer(base, owner_id, first_key) == 401
    assert key_answer(base, owner_id, second_key) == 200

    browser.find_element(by("XPATH"), "//button[@aria-label='Disable browser-made']").click()
    shows(browser, "is disabled")
    assert key_answer(base, owner_id, second_key) == 403
    assert second_key not in text(browser)  # a key is shown once only
    browser.find_element(by("XPATH"), "//button[@aria-label='Enable browser-made']").click()
    shows(browser, "enabled again")
    assert key_answer(base, owner_id, second_key) == 200


def test_admin_sets_and_clears_a_host_limit_and_deletes_an_owner(
    browser: Any, admin_site: str
) -> None:
    base = admin_site
    owner = Owner(base, "browser-gone", admin_key=ADMIN_KEY)
    sign_in(browser, base, "", ADMIN_KEY)
    shows(browser, "every owner")
    browser.get(f"{base}/ui/admin")
    browser.find_element(by("ID"), "h-host").send_keys("slow.example.com")
    browser.find_element(by("ID"), "h-rate").send_keys("2")
    press(browser, "Set limits")
    shows(browser, "Host slow.example.com: at most", "2/s")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    override = call("GET", f"{base}/v1/hosts/slow.example.com", None, admin)["override"]
    assert override["maxRate"] == 2
    clear = "//button[@aria-label='Clear the override of slow.example.com']"
    browser.find_element(by("XPATH"), clear).click()
    shows(browser, "back to the server's defaults")
    assert call("GET", f"{base}/v1/hosts/slow.example.com", None, admin)["override"] is None
    browser.find_element(by("XPATH"), "//button[@aria-label='Delete browser-gone']").click()
    shows(browser, "Owner browser-gone", "is deleted")
    assert key_answer(base, owner.id, owner.key) in (401, 403)
