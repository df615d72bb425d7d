"""Start a server with sample data and save the dashboard's key pages as PNG files."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.support.browser import Owner, call, chromium, missing_browser, sign_in, target
from tests.support.process import ServerProcess
from tests.support.waiting_sync import wait_for

ADMIN_KEY = "screenshots-admin-key-0123456789"


def sample(base: str, target_url: str) -> tuple[Owner, str]:
    """An owner with finished, failed and pending tasks, flow-control keys with tasks
    waiting, an alert rule with an open incident, a schedule and a host with limits of
    its own; returns the owner and a finished task's id."""
    owner = Owner(base, "acme-billing", ADMIN_KEY)
    Owner(base, "acme-shipping", ADMIN_KEY)
    rule = {
        "name": "invoice-failures",
        "on": "task.failed",
        "channel": {"webhook": {"url": f"{target_url}/alerts"}},
    }
    call("POST", f"{base}/v1/alerts", rule, owner.headers)
    done = [owner.register(f"{target_url}/invoices/{n}", executionDelay=0) for n in range(6)]
    failed = [owner.register(f"{target_url}/fail/{n}", executionDelay=0) for n in range(2)]
    for n in range(4):
        owner.register(f"{target_url}/reminders/{n}", executionDelay=3_600_000 * (n + 1))
    for key, count in (("stripe-webhooks", 5), ("email-digest", 3), ("crm-sync", 1)):
        flow = {"key": key, "parallelism": 1}
        for n in range(count):
            owner.register(f"{target_url}/{key}/{n}", executionDelay=1_800_000, flowControl=flow)
    schedule = {
        "name": "nightly-report",
        "schedule": "0 3 * * *",
        "httpRequest": {"url": f"{target_url}/report", "method": "POST"},
    }
    call("POST", f"{base}/v1/schedules", schedule, owner.headers)
    limits = {"maxConcurrency": 8, "maxRate": 5}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    call("PATCH", f"{base}/v1/hosts/api.stripe.example", limits, admin)
    for task_id in done + failed:
        wait_for(lambda t=task_id: owner.state(t) in ("SUCCESS", "ERROR"), timeout=20)
    return owner, done[0]


def main(out: Path) -> int:
    missing = missing_browser()
    if missing:
        sys.stderr.write(f"screenshots: {missing}\n")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    env = {"ADMIN_KEY": ADMIN_KEY, "EGRESS_ALLOW": "127.0.0.1/32"}
    with target() as target_url, ServerProcess(work, **env) as server:
        owner, task_id = sample(server.url, target_url)
        pages = {
            "overview": "/ui/",
            "tasks": "/ui/tasks",
            "task": f"/ui/tasks/{task_id}",
            "failures": "/ui/failures",
            "schedules": "/ui/schedules",
            "test": "/ui/test",
        }
        with chromium(work / "profile", 1280, 1000) as driver:
            sign_in(driver, server.url, owner.id, owner.key)
            for name, path in pages.items():
                driver.get(server.url + path)
                driver.save_screenshot(str(out / f"{name}.png"))
        with chromium(work / "phone", 390, 844, phone=True) as phone:
            sign_in(phone, server.url, owner.id, owner.key)
            phone.get(server.url + "/ui/tasks")
            phone.save_screenshot(str(out / "tasks-phone.png"))
        with chromium(work / "admin", 1280, 1000) as driver:
            sign_in(driver, server.url, "", ADMIN_KEY)
            driver.get(server.url + "/ui/admin")
            driver.save_screenshot(str(out / "admin.png"))
    sys.stdout.write(f"screenshots: wrote {len(pages) + 2} pages to {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")))
