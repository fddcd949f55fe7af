"""The queue folder on disk: `<id>.msg` (the message) and `<id>.json` (its QueueEntry).

Every change is a read-modify-write under the entry's own lock, written to a temporary name,
fsync'd, renamed and followed by a directory fsync, so the CLI (hold, delete, flush) and the
running queue never overwrite each other's changes, entries never wait for each other, and a
crash never leaves half a record.
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
    def locked(self, queue_id: str) -> Iterator[None]:
        """One entry's lock, on its message file (never replaced, unlike the record): other
        entries stay free. FileNotFoundError when the entry is gone."""
        with open(self.message_path(queue_id), "rb") as lock:
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

    def update(self, queue_id: str, change: Callable[[QueueEntry], bool | None]) -> QueueEntry | None:
        """Apply `change` to the current record and save it; when `change` returns True the
        entry is finished and removed instead. None if the entry is gone."""
        try:
            with self.locked(queue_id):
                entry = self.load(queue_id)
                if change(entry) is True:
                    self._remove(queue_id)
                else:
                    self.save(entry)
                return entry
        except FileNotFoundError:
            return None

    def delete(self, queue_id: str) -> bool:
        """Remove an entry."""
        try:
            with self.locked(queue_id):
                if not (self.path / f"{queue_id}.json").exists():
                    return False
                self._remove(queue_id)
                return True
        except FileNotFoundError:
            return False

    def _remove(self, queue_id: str) -> None:
        """Record first: without it the message file is ignored.

        No directory fsync, as in Postfix: a removal lost to a power cut only brings the entry
        back to be delivered again, it never loses mail; a killed process loses nothing.
        """
        (self.path / f"{queue_id}.json").unlink()
        self.message_path(queue_id).unlink(missing_ok=True)

    def quarantine(self, queue_id: str, reason: str) -> None:
        """Move an unreadable entry aside, keeping it for a person to look at."""
        self.corrupt.mkdir(exist_ok=True)
        try:
            with self.locked(queue_id):
                self._move_aside(queue_id)
        except FileNotFoundError:  # no message file, so no lock to take and nobody using the entry
            self._move_aside(queue_id)
        log.event("queue-corrupt", id=queue_id, reason=reason, moved_to=self.corrupt)

    def _move_aside(self, queue_id: str) -> None:
        for suffix in (".json", ".msg"):
            src = self.path / f"{queue_id}{suffix}"
            if src.exists():
                os.replace(src, self.corrupt / src.name)
        fsync_dir(self.path)

    def request_flush(self) -> None:
        """Tell a running queue to rescan now (it watches this file's time stamp)."""
        (self.path / FLUSH_MARKER).touch()

    def flush_stamp(self) -> float:
        try:
            return (self.path / FLUSH_MARKER).stat().st_mtime
        except FileNotFoundError:
            return 0.0
