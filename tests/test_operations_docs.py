"""docs/operations.md's procedures that are code: the `copy-store.py` block, run as printed,
moves a SQLite store with its whole history into a new PostgreSQL database (tests/pg_fixture.py),
and the copy keeps working (new ids continue after the copied ones)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from relayguard.dnsbl.store import LISTED, NOT_LISTED, Base, Store

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def copy_store_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- copy-store\.py[^>]*-->\n```python\n(.*?)\n```", text, re.S)
    assert m, "the copy-store.py block is missing from docs/operations.md"
    return m.group(1) + "\n"


def rows(store: Store) -> dict[str, list[dict]]:
    out = {}
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            key = [table.c.id] if "id" in table.c else []
            out[table.name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(*key))]
    return out


def fill(store: Store) -> None:
    t0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    for i, net in enumerate(["192.0.2.7", "198.51.100.0/24", "2001:db8::25"]):
        store.add_nomination(net, requester="abuse@example.net", source="203.0.113.1", via="web",
                             reason="spam via it", outcome="testing", now=t0)
        run = store.add_test_run(net, trigger="nomination", requested_by="web", target=f"{net}:25", mode="confirm",
                                 started=t0, finished=t0 + timedelta(seconds=3), verdict="open", reason="relayed",
                                 relays=["R1", "R7"], result={"cases": [{"id": "R1", "transcript": ["220 hi", "250 ok"]}]})
        store.transition(net, state=LISTED, action="listed", actor="web", reason=f"open relay {i}",
                         evidence={"test_run": run}, now=t0 + timedelta(minutes=i), code="127.0.0.2")
    store.add_removal_request("192.0.2.7", contact="postmaster@example.org", requester="postmaster@example.org",
                              source="web", reason="fixed", state="done", outcome="delisted", answer="delisted", now=t0)
    store.transition("192.0.2.7", state=NOT_LISTED, action="delisted", actor="web", reason="re-test closed",
                     now=t0 + timedelta(hours=1))


def test_copy_store_moves_sqlite_to_postgresql_with_history(tmp_path, postgres):
    source_url, target_url = f"sqlite:///{tmp_path}/relayguard.db", postgres.new_database()
    source = Store(source_url)
    fill(source)
    before = rows(source)
    version = source.version()
    source.close()
    script = tmp_path / "copy-store.py"
    script.write_text(copy_store_script())

    r = subprocess.run([sys.executable, str(script), source_url, target_url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "audit_log: 4 rows" in r.stdout and "hosts: 3 rows" in r.stdout

    target = Store(target_url)
    try:
        assert rows(target) == before
        assert target.version() == version
        assert [n for n, _, _ in target.listed()] == ["198.51.100.0/24", "2001:db8::25/128"]
        # the sequences follow the copied ids: new rows get new ids
        host = target.transition("203.0.113.9", state=LISTED, action="listed", actor="admin", reason="manual")
        assert host.id == max(h["id"] for h in before["hosts"]) + 1
        assert len(target.history("203.0.113.9")) == 1
    finally:
        target.close()

    again = subprocess.run([sys.executable, str(script), source_url, target_url], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr
