"""The system Chromium driven by selenium, for the dashboard's browser tests and
``scripts/screenshots``. Nothing is downloaded: the browser and its driver are Debian's
``chromium`` and ``chromium-driver`` (install.sh installs them)."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def missing_browser() -> str | None:
    """Why no browser test can run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing: install.sh installs Debian's chromium and chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra has it)"
    return None


@contextmanager
def chromium(
    profile: Path, width: int = 1280, height: int = 900, phone: bool = False
) -> Iterator[Any]:
    """A headless Chromium with a fresh profile in ``profile``; quit at the end. With
    ``phone``, the page is laid out as on a phone of that width (headless windows cannot
    be narrower than 500 pixels)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    if phone:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, base_url: str, owner_id: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/ui/login")
    driver.find_element(By.ID, "ownerId").send_keys(owner_id)
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """A JSON call to the server's API; returns the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


class Owner:
    def __init__(self, base_url: str, name: str, admin_key: str | None = None) -> None:
        auth = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        made = call("POST", f"{base_url}/v1/owners/register", {"name": name}, auth)
        self.base_url = base_url
        self.id: str = made["id"]
        self.key: str = made["key"]
        self.headers = {"Authorization": f"Bearer {self.key}", "X-Tasks-Owner-Id": self.id}

    def register(self, url: str, method: str = "POST", **config: Any) -> str:
        body = {"httpRequest": {"url": url, "method": method}, "config": config}
        task = call("POST", f"{self.base_url}/v1/queues/register", body, self.headers)
        return str(task["id"])

    def state(self, task_id: str) -> str:
        return str(call("GET", f"{self.base_url}/v1/queues/{task_id}", None, self.headers)["state"])


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = 500 if self.path.startswith("/fail") else 200
        body = b'{"ok": true}' if status == 200 else b"broken"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def target() -> Iterator[str]:
    """A target on 127.0.0.1 in a thread: ``/fail…`` answers 500, anything else 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
