"""The queue folder on disk: `<id>.msg` (the message) and `<id>.json` (its QueueEntry).

Every change is a read-modify-write under the entry's own lock, written to a temporary name,
fsync'd, renamed and followed by a directory fsync, so the CLI (hold, delete, flush) and the
running queue never overwrite each other's changes, entries never wait for each other, and a
crash never leaves half a record.

The running queue reads and changes entries in batches (`load_many`, `update_many`): one call
from the event loop to the queue's I/O thread for every entry that became ready meanwhile, and
one directory fsync for every record a batch saved (each record file still gets its own fsync,
and no caller hears of its change before that directory fsync).
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


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Temporary name, fsync, rename; then the directory fsync unless the caller does it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def read_file(path: str) -> bytes:
    """A whole file, unbuffered (one read sized by fstat)."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


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
        self._dir = str(path)

    @contextmanager
    def locked(self, queue_id: str) -> Iterator[None]:
        """One entry's lock, on its message file (never replaced, unlike the record): other
        entries stay free. FileNotFoundError when the entry is gone. Closing the file frees it."""
        fd = os.open(f"{self._dir}/{queue_id}.msg", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))

    def message_path(self, queue_id: str) -> Path:
        return self.path / f"{queue_id}.msg"

    def load(self, queue_id: str) -> QueueEntry:
        """The entry; FileNotFoundError if gone, CorruptEntry if unreadable."""
        entry = self._record(queue_id)
        if not os.path.exists(f"{self._dir}/{queue_id}.msg"):
            raise CorruptEntry("message file missing")
        return entry

    def _record(self, queue_id: str) -> QueueEntry:
        """The record; FileNotFoundError if gone, CorruptEntry if unreadable."""
        try:
            entry = QueueEntry.from_json(json.loads(read_file(f"{self._dir}/{queue_id}.json")))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptEntry(f"bad JSON: {e}") from None
        if entry.queue_id != queue_id:
            raise CorruptEntry(f"record names queue id {entry.queue_id}")
        return entry

    def load_with_message(self, queue_id: str) -> tuple[QueueEntry, bytes]:
        """The entry and its message; FileNotFoundError if gone, CorruptEntry if unreadable."""
        entry = self._record(queue_id)
        try:
            return entry, read_file(f"{self._dir}/{queue_id}.msg")
        except FileNotFoundError:
            if not os.path.exists(f"{self._dir}/{queue_id}.json"):
                raise  # deleted meanwhile (queue delete), record first
            raise CorruptEntry("message file missing") from None

    def load_many(self, ids: list[str]) -> list[tuple[QueueEntry, bytes] | Exception]:
        """`load_with_message` of each; an error (OSError, CorruptEntry) in the place of its result."""
        out: list[tuple[QueueEntry, bytes] | Exception] = []
        for queue_id in ids:
            try:
                out.append(self.load_with_message(queue_id))
            except (OSError, CorruptEntry) as e:
                out.append(e)
        return out

    def save(self, entry: QueueEntry) -> None:
        write_atomic(self.path / f"{entry.queue_id}.json", json.dumps(entry.to_json()).encode())

    def update(self, queue_id: str, change: Callable[[QueueEntry], bool | None]) -> QueueEntry | None:
        """Apply `change` to the current record and save it; when `change` returns True the
        entry is finished and removed instead. None if the entry is gone."""
        [result] = self.update_many([(queue_id, change)])
        if isinstance(result, Exception):
            raise result
        return result

    def update_many(self, changes: list[tuple[str, Callable[[QueueEntry], bool | None]]]
                    ) -> list[QueueEntry | None | Exception]:
        """`update` of each entry in turn, with one directory fsync for every record saved; an
        exception (OSError, CorruptEntry, or one `change` raised) in the place of its result."""
        out: list[QueueEntry | None | Exception] = []
        saved = 0
        for queue_id, change in changes:
            try:
                with self.locked(queue_id):
                    entry = self._record(queue_id)
                    if change(entry) is True:
                        self._remove(queue_id)
                    else:
                        write_atomic(self.path / f"{queue_id}.json", json.dumps(entry.to_json()).encode(),
                                     sync_dir=False)
                        saved += 1
                out.append(entry)
            except FileNotFoundError:
                out.append(None)
            except Exception as e:  # this entry's problem; the others go on
                out.append(e)
        if saved:
            try:
                fsync_dir(self.path)
            except OSError as e:  # no saved record is known to be durable
                out = [e if isinstance(r, QueueEntry) else r for r in out]
        return out

    def remove_many(self, ids: list[str]) -> list[bool | Exception]:
        """Remove finished entries without reading their records: True, False if already gone,
        or the error."""
        out: list[bool | Exception] = []
        for queue_id in ids:
            try:
                with self.locked(queue_id):
                    self._remove(queue_id)
                out.append(True)
            except FileNotFoundError:
                out.append(False)
            except OSError as e:
                out.append(e)
        return out

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
        os.unlink(f"{self._dir}/{queue_id}.json")
        try:
            os.unlink(f"{self._dir}/{queue_id}.msg")
        except FileNotFoundError:
            pass

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
