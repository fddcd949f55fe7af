"""The queue folder on disk: `<id>.msg` (the message) and `<id>.json` (its QueueEntry).

Every change is a read-modify-write under one lock file, written to a temporary name, fsync'd,
renamed and followed by a directory fsync, so the CLI (hold, delete, flush) and the running
queue never overwrite each other's changes and a crash never leaves half a record.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import log
from .queue import CorruptEntry, QueueEntry

FLUSH_MARKER = ".flush"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QueueDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.corrupt = path / "corrupt"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))

    def message_path(self, queue_id: str) -> Path:
        return self.path / f"{queue_id}.msg"

    def load(self, queue_id: str) -> QueueEntry:
        """The entry; FileNotFoundError if gone, CorruptEntry if unreadable."""
        try:
            data = json.loads((self.path / f"{queue_id}.json").read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptEntry(f"bad JSON: {e}") from None
        entry = QueueEntry.from_json(data)
        if entry.queue_id != queue_id:
            raise CorruptEntry(f"record names queue id {entry.queue_id}")
        if not self.message_path(queue_id).exists():
            raise CorruptEntry("message file missing")
        return entry

    def save(self, entry: QueueEntry) -> None:
        write_atomic(self.path / f"{entry.queue_id}.json", json.dumps(entry.to_json()).encode())

    def update(self, queue_id: str, change: Callable[[QueueEntry], None]) -> QueueEntry | None:
        """Apply `change` to the current record and save it; None if the entry is gone."""
        with self.locked():
            try:
                entry = self.load(queue_id)
            except FileNotFoundError:
                return None
            change(entry)
            self.save(entry)
            return entry

    def delete(self, queue_id: str) -> bool:
        """Remove an entry (record first: without it the message file is ignored)."""
        with self.locked():
            record = self.path / f"{queue_id}.json"
            if not record.exists():
                return False
            record.unlink()
            self.message_path(queue_id).unlink(missing_ok=True)
            fsync_dir(self.path)
            return True

    def quarantine(self, queue_id: str, reason: str) -> None:
        """Move an unreadable entry aside, keeping it for a person to look at."""
        with self.locked():
            self.corrupt.mkdir(exist_ok=True)
            for suffix in (".json", ".msg"):
                src = self.path / f"{queue_id}{suffix}"
                if src.exists():
                    os.replace(src, self.corrupt / src.name)
            fsync_dir(self.path)
        log.event("queue-corrupt", id=queue_id, reason=reason, moved_to=self.corrupt)

    def request_flush(self) -> None:
        """Tell a running queue to rescan now (it watches this file's time stamp)."""
        (self.path / FLUSH_MARKER).touch()

    def flush_stamp(self) -> float:
        try:
            return (self.path / FLUSH_MARKER).stat().st_mtime
        except FileNotFoundError:
            return 0.0
