"""The web pages in a real browser: Debian's chromium driven by Playwright (no browser download)
against a real `relayguard serve` on loopback. An administrator lists an address with the CLI; a
visitor looks it up, files a removal request, sees the re-test delist it; the admin pages show
the trail. Screenshots go to /tmp/relayguard-web-*.png."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import free_port, start_server
from playwright.sync_api import expect, sync_playwright
from relay_fixtures import FakeMTA

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LISTED_IP = "127.0.0.9"


class LoopThread:
    """An asyncio loop in a thread, for the fake SMTP server the list re-tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def site(tmp_path):
    lt = LoopThread()
    mta = FakeMTA(host=LISTED_IP, accepts=lambda rcpt: False)  # the relay is fixed: every relay case refused
    port = lt.run(mta.start())
    web_port = free_port()
    srv = start_server(
        tmp_path / "srv",
        dnsbl=f"allow_private = true\ntest_port = {port}\ncooldown = 0",
        tables=f'[web]\nlisten = "127.0.0.1:{web_port}"\nadmins = ["alice@localhost"]\n\n'
               f'[relaytest]\ncanary_domain = "canary.test"\ncanary_listen = "127.0.0.1:{free_port()}"\n'
               'timeout = 5.0\nconfirm_timeout = 5.0\n')
    deadline = time.monotonic() + 20
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", web_port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or srv.proc.poll() is not None:
                srv.stop()
                raise RuntimeError(f"no web server: {srv.log()}") from None
            time.sleep(0.05)
    try:
        yield srv, f"http://127.0.0.1:{web_port}", mta
    finally:
        srv.stop()
        lt.run(mta.stop())
        lt.close()


def test_lookup_removal_request_and_admin_in_chromium(site):
    srv, base, mta = site
    # the administrator lists the host with the CLI, against the running server's SQLite file
    add = subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", "add", LISTED_IP, "--reason",
                          "relayed spam to <victims>", "-c", str(srv.root / "relayguard.toml")],
                         cwd=srv.root, capture_output=True, text=True, timeout=60)
    assert add.returncode in (0, 1), add.stderr

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base + "/")
            expect(page.locator("h1")).to_contain_text("open relay")
            page.screenshot(path="/tmp/relayguard-web-home.png", full_page=True)
            page.fill("#ip", LISTED_IP)
            page.click("form.search button")
            expect(page.locator("#status")).to_have_text("LISTED")
            expect(page.locator("#reason")).to_have_text("manual: relayed spam to <victims>")  # escaped, shown as text
            expect(page.locator("#effective")).to_contain_text("Seen by every resolver by")
            page.screenshot(path="/tmp/relayguard-web-listed.png", full_page=True)

            page.click("#request-removal")
            expect(page.locator("input#ip")).to_have_value(LISTED_IP)
            page.fill("#contact", "postmaster@example.net")
            page.fill("#reason", "closed the relay: smtpd_relay_restrictions fixed")
            page.click("form.form button[type=submit]")
            # the job page refreshes itself until the re-test is done
            expect(page.locator("#answer")).to_have_attribute("data-action", "delisted", timeout=30_000)
            expect(page.locator("#answer")).to_contain_text("is delisted")
            expect(page.locator("#answer")).to_contain_text("Takes effect everywhere by")
            page.screenshot(path="/tmp/relayguard-web-delisted.png", full_page=True)

            page.click("#answer a")  # to the full record
            expect(page.locator("#status")).to_have_text("NOT LISTED")
            expect(page.locator("#history")).to_contain_text("delisted")
            expect(page.locator("#evidence")).to_contain_text("closed")
            page.screenshot(path="/tmp/relayguard-web-record.png", full_page=True)
            assert mta.sessions >= 1  # the re-test really talked to the host

            # the administrator's view: login, the audit trail with who asked
            page.goto(base + "/admin")
            expect(page).to_have_url(base + "/admin/login?next=/admin")
            page.fill("#user", "alice@localhost")
            page.fill("#password", "alice-secret")
            page.click("form.form button[type=submit]")
            expect(page.locator("h1")).to_have_text("Administration")
            page.screenshot(path="/tmp/relayguard-web-admin.png", full_page=True)
            page.click("text=Audit log")
            expect(page.locator("table.audit")).to_contain_text("removal-requested")
            expect(page.locator("table.audit")).to_contain_text("127.0.0.1")  # the requester's address
            page.screenshot(path="/tmp/relayguard-web-audit.png", full_page=True)
        finally:
            browser.close()
    assert "Traceback" not in srv.log()
