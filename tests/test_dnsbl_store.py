"""The DNSBL store on real SQLite files and a real PostgreSQL (tests/pg_fixture.py): schema from
the migrations, state changes with their audit rows, the DNS server's API (`listed`, `version`),
bulk import, and two Store instances (two processes' worth) sharing one database."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from relayguard.dnsbl.store import (DEFAULT_TXT, LISTED, NOT_LISTED, PENDING, Base, Entry, Store, StoreError,
                                    canonical, head_revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dnsbl.db"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(url):
    s = Store(url)
    yield s
    s.close()


def test_migrations_build_exactly_the_models(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision() == "0001"


def test_sqlite_is_in_wal_mode(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/sub/dir/x.db")  # folders are made
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.close()


def test_list_delist_audit_and_version(store):
    assert store.listed() == [] and store.version() == 0
    h = store.transition("192.0.2.7", state=LISTED, action="listed", actor="admin", reason="manual: seen relaying",
                         evidence={"manual": True}, source="manual")
    assert h.network == "192.0.2.7/32" and h.listed and h.first_listed and h.last_listed and h.txt == DEFAULT_TXT
    v1 = store.version()
    assert v1 == 1
    assert store.listed() == [("192.0.2.7/32", "127.0.0.2", DEFAULT_TXT)]
    store.note("192.0.2.7", action="removal-requested", actor="owner", reason="fixed it")
    assert store.version() == v1  # a note is no change of the listed set
    store.transition("192.0.2.7", state=LISTED, action="changed", actor="admin", reason="code", code="127.0.0.3")
    assert store.version() == v1 + 1 and store.listed()[0][1] == "127.0.0.3"
    store.transition("192.0.2.7", state=NOT_LISTED, action="delisted", actor="admin", reason="fixed")
    assert store.listed() == [] and store.version() == v1 + 2
    h = store.get("192.0.2.7")
    assert h.state == NOT_LISTED and h.delisted_at is not None and h.first_listed is not None
    hist = store.history("192.0.2.7")
    assert [(e.action, e.old_state, e.new_state) for e in hist] == [
        ("listed", "", LISTED), ("removal-requested", LISTED, LISTED), ("changed", LISTED, LISTED),
        ("delisted", LISTED, NOT_LISTED)]
    assert hist[0].evidence == {"manual": True} and hist[0].at.tzinfo is UTC
    assert [e.id for e in store.audit()] == [e.id for e in hist]


def test_audit_log_is_append_only_in_the_database(store):
    store.transition("192.0.2.8", state=LISTED, action="listed", actor="a", reason="r")
    for sql in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(sql)
    assert store.history("192.0.2.8")[0].actor == "a"


def test_networks_ipv6_and_covering(store):
    store.transition("198.51.100.0/24", state=LISTED, action="listed", actor="a", reason="net", code="127.0.0.3")
    store.transition("198.51.100.9", state=LISTED, action="listed", actor="a", reason="host")
    store.transition("2001:db8:1:2::/64", state=LISTED, action="listed", actor="a", reason="v6")
    store.transition("::ffff:192.0.2.50", state=LISTED, action="listed", actor="a", reason="mapped")
    assert {n for n, _, _ in store.listed()} == {"198.51.100.0/24", "198.51.100.9/32", "2001:db8:1:2::/64",
                                                 "192.0.2.50/32"}
    assert [h.network for h in store.covering("198.51.100.9")] == ["198.51.100.9/32", "198.51.100.0/24"]
    assert [h.network for h in store.covering("198.51.100.10")] == ["198.51.100.0/24"]
    assert [h.network for h in store.covering("2001:db8:1:2::25")] == ["2001:db8:1:2::/64"]
    assert store.covering("2001:db8:1:3::1") == [] and store.covering("192.0.2.51") == []
    assert store.get("192.0.2.50").listed
    assert store.counts() == {LISTED: 4, NOT_LISTED: 0, PENDING: 0}


def test_test_runs_nominations_and_removal_requests(store):
    now = datetime.now(UTC)
    nid = store.add_nomination("192.0.2.9", requester="alice", source="203.0.113.5", via="web", reason="spam relay")
    run = store.add_test_run("192.0.2.9", trigger="nomination", requested_by="alice", target="192.0.2.9:25",
                             mode="confirm", started=now, finished=now + timedelta(seconds=3), verdict="open",
                             reason="2 relays", relays=["R1", "S2"],
                             result={"cases": [{"id": "R1", "transcript": ["C: RCPT TO:<x%y@z>", "S: 250 ok"]}]})
    store.update_nomination(nid, outcome="listed", test_run_id=run)
    (n,) = store.nominations("192.0.2.9")
    assert (n.requester, n.source, n.via, n.reason, n.outcome, n.test_run_id) == (
        "alice", "203.0.113.5", "web", "spam relay", "listed", run)
    (r,) = store.test_runs("192.0.2.9", with_result=True)
    assert r.relays == ["R1", "S2"] and r.result["cases"][0]["transcript"][1] == "S: 250 ok"
    assert store.test_runs("192.0.2.9")[0].result is None
    h = store.get("192.0.2.9")
    assert h.last_verdict == "open" and h.last_tested is not None and h.state == NOT_LISTED
    rid = store.add_removal_request("192.0.2.9", contact="owner@example.net", requester="owner@example.net",
                                    source="cli", reason="fixed", state="awaiting-confirmation", token_hash="ab" * 32)
    assert store.claim_removal("ab" * 32, now).state == "confirmed"
    assert store.claim_removal("ab" * 32, now) is None  # once only
    store.update_removal_request(rid, state="done", outcome="delisted", answer="gone", test_run_id=run)
    (rr,) = store.removal_requests("192.0.2.9")
    assert (rr.contact, rr.state, rr.outcome, rr.answer, rr.confirmed_at is not None) == (
        "owner@example.net", "done", "delisted", "gone", True)
    assert store.recent_requests(since=now - timedelta(hours=1), requester="alice") == 1
    assert store.recent_requests(since=now - timedelta(hours=1), network="192.0.2.9") == 2
    assert store.recent_requests(since=now + timedelta(hours=1), network="192.0.2.9") == 0


def test_due_for_retest_and_expiry(store):
    now = datetime.now(UTC)
    store.transition("192.0.2.1", state=LISTED, action="listed", actor="a", reason="r",
                     next_retest=now - timedelta(days=1), expires_at=now + timedelta(days=10))
    store.transition("192.0.2.2", state=LISTED, action="listed", actor="a", reason="r",
                     next_retest=now + timedelta(days=1), expires_at=now - timedelta(seconds=1))
    assert [h.network for h in store.due_for_retest(now)] == ["192.0.2.1/32"]
    assert [h.network for h in store.due_for_expiry(now)] == ["192.0.2.2/32"]


def test_bulk_import_new_relisted_changed_unchanged(store):
    store.transition("192.0.2.1", state=NOT_LISTED, action="not-listed", actor="a", reason="tested closed")
    store.transition("192.0.2.2", state=LISTED, action="listed", actor="a", reason="r")
    v = store.version()
    entries = [Entry(f"10.0.{i // 256}.{i % 256}/32") for i in range(3000)]
    entries += [Entry("192.0.2.1/32"), Entry("192.0.2.2/32"), Entry("192.0.2.3/32", "127.0.0.4", "own text $"),
                Entry("203.0.113.0/24", None, DEFAULT_TXT)]
    stats = store.bulk_import(entries, actor="ops", reason="moved from rbldnsd", evidence={"file": "x.ip4set"})
    assert (stats.added, stats.relisted, stats.unchanged, stats.changed) == (3002, 1, 1, 0)
    assert stats.version == store.version() == v + 1
    listed = {n: (c, t) for n, c, t in store.listed()}
    assert len(listed) == 3004
    assert listed["192.0.2.3/32"] == ("127.0.0.4", "own text $") and listed["203.0.113.0/24"] == ("127.0.0.2", DEFAULT_TXT)
    assert store.get("203.0.113.0/24").source == "import"
    (e,) = store.history("10.0.11.183")
    assert (e.action, e.new_state, e.actor, e.reason, e.evidence) == ("listed", LISTED, "ops", "moved from rbldnsd",
                                                                       {"file": "x.ip4set"})
    assert [a.action for a in store.history("192.0.2.1")][-1] == "listed"
    again = store.bulk_import([Entry("192.0.2.3/32", "127.0.0.5", "own text $")], actor="ops", reason="again")
    assert again.changed == 1 and store.get("192.0.2.3").code == "127.0.0.5"
    none = store.bulk_import([Entry("192.0.2.3/32", "127.0.0.5", "own text $")], actor="ops", reason="again")
    assert none.unchanged == 1 and none.version == again.version


def test_two_stores_on_one_database_see_each_others_listings(url):
    a, b = Store(url), Store(url)  # what two relayguard processes hold
    try:
        va = b.version()
        a.transition("192.0.2.77", state=LISTED, action="listed", actor="node-a", reason="r")
        assert b.version() > va
        assert ("192.0.2.77/32", "127.0.0.2", DEFAULT_TXT) in b.listed()
        b.transition("192.0.2.77", state=NOT_LISTED, action="delisted", actor="node-b", reason="fixed")
        assert a.listed() == [] and a.get("192.0.2.77").state == NOT_LISTED
        assert [e.actor for e in a.history("192.0.2.77")] == ["node-a", "node-b"]
    finally:
        a.close()
        b.close()


def test_two_processes_share_the_database(url, tmp_path):
    """A second OS process lists; this one sees it (and its version moves)."""
    s = Store(url)
    try:
        v = s.version()
        code = ("import sys; from relayguard.dnsbl.store import Store, LISTED; s = Store(sys.argv[1]); "
                "s.transition('198.51.100.200', state=LISTED, action='listed', actor='other process', reason='r'); s.close()")
        subprocess.run([sys.executable, "-c", code, url], check=True, timeout=60)
        assert s.version() == v + 1 and s.get("198.51.100.200").listed
    finally:
        s.close()


def test_concurrent_writers_every_change_counted(url):
    """Threads on separate Store instances: no lost update of the version, no lock errors."""
    stores = [Store(url) for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int, s: Store) -> None:
        try:
            for j in range(15):
                s.transition(f"10.{i}.0.{j}", state=LISTED, action="listed", actor=f"t{i}", reason="r")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    v0 = stores[0].version()
    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert stores[0].version() == v0 + 60 and len(stores[1].listed()) == 60
    finally:
        for s in stores:
            s.close()


def test_concurrent_first_open_migrates_once(url):
    """Several stores opening a brand-new database at once: one migrates, none fails."""
    opened: list[Store] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(Store(url))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(opened) == 4
        assert opened[0].version() == 0
    finally:
        for s in opened:
            s.close()


def test_listed_and_version_are_cheap_to_poll(store):
    store.bulk_import([Entry(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32") for i in range(100_000)],
                      actor="t", reason="bulk")
    t = time.perf_counter()
    for _ in range(100):
        store.version()
    assert (time.perf_counter() - t) / 100 < 0.01  # well under a millisecond here; a DNS server polls it each second
    t = time.perf_counter()
    version, rows = store.listed_with_version()
    assert len(rows) == 100_000 and version == store.version()
    assert time.perf_counter() - t < 5


def test_canonical_forms():
    assert str(canonical("192.0.2.7")) == "192.0.2.7/32"
    assert str(canonical("192.0.2.7/24")) == "192.0.2.0/24"
    assert str(canonical("[2001:DB8::1]")) == "2001:db8::1/128"
    assert str(canonical("::ffff:192.0.2.1")) == "192.0.2.1/32"
    with pytest.raises(ValueError, match="not an IP address"):
        canonical("mail.example.com")


def test_bad_urls_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="only sqlite"):
        Store("mysql://x/y")
    with pytest.raises(StoreError, match="store url"):
        Store("not a url")
    with pytest.raises(StoreError, match="store postgresql"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        Store(f"sqlite:///{tmp_path}/file/sub.db")
