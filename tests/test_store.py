"""The store's group commit on real files: every message of a batch lands complete, one
message's failure is its own, and a failed sync fails the whole batch without leaving spool files."""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
import time
from pathlib import Path

import pytest

from relayguard.mta import store as store_mod
from relayguard.mta.queue import QueueEntry, Recipient
from relayguard.mta.store import Store, new_queue_id


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "var")
    s.prepare()
    return s


def message(store: Store, body: bytes) -> store_mod.MessageFile:
    msg = store.open_message(new_queue_id())
    msg.write(body)
    return msg


def commit_all(store: Store, jobs: list[tuple]) -> list[BaseException | None]:
    """Commit `(message, local, remote)` jobs at once on an event loop: each one's outcome."""
    async def run() -> list[BaseException | None]:
        futures = [store.commit(*job) for job in jobs]
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)

    return asyncio.run(run())


def entry(queue_id: str) -> QueueEntry:
    return QueueEntry(queue_id, "a@example.org", [Recipient("r@remote.test")], time.time(), "192.0.2.1", "c", "")


def maildir(store: Store, user: str) -> list[bytes]:
    return sorted(p.read_bytes() for p in (store.mail / "localhost" / user / "new").iterdir())


def test_a_batch_lands_complete_in_maildirs_and_the_queue(store):
    bodies = [f"message {i}\r\n".encode() * (i + 1) for i in range(40)]
    bodies.append(b"x" * 300_000 + b"\r\n")  # streamed to the spool while it was received
    msgs = [message(store, b) for b in bodies]
    outcomes = commit_all(store, [(m, [("alice", "localhost")], entry(m.queue_id) if i % 2 else None)
                                  for i, m in enumerate(msgs)])
    assert outcomes == [None] * len(msgs)
    assert maildir(store, "alice") == sorted(bodies)
    queued = [m for i, m in enumerate(msgs) if i % 2]
    for m in queued:
        assert (store.queue / f"{m.queue_id}.msg").read_bytes() == bodies[msgs.index(m)]
        assert json.loads((store.queue / f"{m.queue_id}.json").read_text())["queue_id"] == m.queue_id
    assert sorted(p.name for p in store.queue.iterdir()) == sorted(
        [f"{m.queue_id}.msg" for m in queued] + [f"{m.queue_id}.json" for m in queued])
    assert list(store.tmp.iterdir()) == []


def test_one_bad_message_fails_alone(store):
    good, bad = message(store, b"good\r\n"), message(store, b"bad\r\n")
    outcomes = commit_all(store, [(bad, [("../etc", "localhost")], None), (good, [("bob", "localhost")], None)])
    assert isinstance(outcomes[0], ValueError) and outcomes[1] is None
    assert maildir(store, "bob") == [b"good\r\n"]
    assert list(store.tmp.iterdir()) == []


def test_a_maildir_removed_meanwhile_is_made_again(store):
    assert commit_all(store, [(message(store, b"one\r\n"), [("carol", "localhost")], None)]) == [None]
    shutil.rmtree(store.mail / "localhost" / "carol")
    assert commit_all(store, [(message(store, b"two\r\n"), [("carol", "localhost")], None)]) == [None]
    assert maildir(store, "carol") == [b"two\r\n"]


def test_a_failed_sync_fails_the_batch_and_leaves_no_spool_files(store, monkeypatch):
    def broken(folders):
        raise OSError(errno.EIO, "syncfs failed: Input/output error")

    monkeypatch.setattr(store_mod, "_sync_filesystems", broken)
    msgs = [message(store, b"lost?\r\n") for _ in range(5)]
    outcomes = commit_all(store, [(m, [], entry(m.queue_id)) for m in msgs])
    assert all(isinstance(e, OSError) for e in outcomes)
    assert list(store.tmp.iterdir()) == [] and list(store.queue.iterdir()) == []


def test_nowhere_to_deliver_is_done_at_once(store):
    msg = message(store, b"nobody\r\n" * 50_000)  # big enough to be on disk already
    assert msg.path.exists()
    async def commit() -> bool:
        return store.commit(msg, [], None).done()

    assert asyncio.run(commit())
    assert list(store.tmp.iterdir()) == []


def test_a_bug_in_a_batch_fails_it_and_the_next_batch_still_commits(store, monkeypatch):
    real = store_mod._synced
    monkeypatch.setattr(store_mod, "_synced", lambda jobs, folders: 1 / 0)
    outcomes = commit_all(store, [(message(store, b"unlucky\r\n"), [("dave", "localhost")], None)])
    assert isinstance(outcomes[0], ZeroDivisionError)
    monkeypatch.setattr(store_mod, "_synced", real)
    assert commit_all(store, [(message(store, b"lucky\r\n"), [("dave", "localhost")], None)]) == [None]
    assert maildir(store, "dave") == [b"lucky\r\n"]


def test_queue_ids_made_in_the_same_microsecond_differ():
    ids = [new_queue_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.isalnum() and i.upper() == i for i in ids)
