"""`relayguard serve` tests its own listeners for open relaying ([relaytest] self_check)."""

from __future__ import annotations

import asyncio
import json
import io
import time

from relayguard import log
from relayguard.config import load_text
from relayguard.relaytest.selfcheck import plan, read_status, self_check_once

from relay_fixtures import FakeMTA


def wait_for_log(server, needle: str, limit: float = 30.0) -> str:
    deadline = time.monotonic() + limit
    while needle not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.05)
    return next(line for line in server.log().splitlines() if needle in line)


def test_serve_checks_itself_at_start_closed(make_server):
    srv = make_server(tables="[relaytest]\nself_check = true")
    line = wait_for_log(srv, "event=selfcheck ")
    assert "verdict=closed" in line and "source=127.0.0.2" in line and "INFO" in line
    status = json.loads((srv.data / "selfcheck.json").read_text())
    assert [e["verdict"] for e in status["listeners"]] == ["closed"]


def test_serve_skips_when_the_source_would_be_trusted(make_server):
    srv = make_server(tables='[relay]\ntrusted_networks = ["127.0.0.0/8"]\n\n[relaytest]\nself_check = true')
    line = wait_for_log(srv, "event=selfcheck ")
    assert "verdict=skipped" in line and "trusted_networks" in line and "WARNING" in line


def test_an_open_listener_is_logged_as_critical(tmp_path):
    async def go():
        mta = FakeMTA(accepts=lambda rcpt: "%" in rcpt)
        port = await mta.start()
        try:
            settings = load_text(f'[server]\ndata_dir = "{tmp_path}"\n[smtp]\nlisten = ["0.0.0.0:{port}"]\n', "test")
            assert plan(settings) == [(f"127.0.0.1:{port}", "127.0.0.2", "")]
            return settings, await self_check_once(settings)
        finally:
            await mta.stop()

    captured = io.StringIO()
    log.setup("info", captured)
    try:
        settings, (result,) = asyncio.run(go())
    finally:
        log.setup("info")
    assert result.verdict.value == "open"
    critical = [line for line in captured.getvalue().splitlines() if " CRITICAL " in line]
    assert len(critical) == 1 and "verdict=open" in critical[0] and "R1" in critical[0]
    assert read_status(settings)["listeners"][0]["verdict"] == "open"
