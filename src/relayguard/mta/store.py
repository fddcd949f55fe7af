"""Durable storage of accepted mail: Maildir for local users, the spool for the outbound queue.

While DATA runs a message is kept in memory up to 256 KiB and streams into `spool/tmp/` beyond
that. On commit it is written out and fsync'd, hard-linked into each recipient's Maildir `new/`
and (for remote recipients) into `queue/` beside its envelope (the last of these by rename
instead of link), and every directory touched is fsync'd, all before the server may answer 250.
A crash at any point leaves either a complete message in place or nothing the queue would pick
up: the queue's envelope file is written last and is what makes an entry exist.

Performance (bench/run.py): the event loop never creates files for small messages (a create
can wait behind other sessions' fsyncs, and it would stall every session); and directory fsyncs
are grouped across concurrent commits (group commit): one fsync of a directory answers for
every entry made in it before that fsync started, so sessions delivering to the same Maildir
share directory fsyncs instead of issuing one each. Every message file is fsync'd on its own.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

from .queue import QueueEntry
from .queue_dir import write_all, write_record

# Message data kept in memory before the spool file is created (also the file's write buffer).
_MEMORY_LIMIT = 256 * 1024


def new_queue_id() -> str:
    """Short, unique, sortable by time: microseconds in hex plus randomness."""
    return f"{time.time_ns() // 1000:X}{secrets.token_hex(3).upper()}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_in(src: str, dst: str) -> None:
    """Copy `src` to `dst` through a sibling `tmp/` folder (for a different filesystem)."""
    tmp = Path(dst).parent.parent / "tmp" / Path(dst).name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _place(src: str, dst: str) -> None:
    """Hard link (atomic, no copy); copy then rename when the folders are on different filesystems."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno == errno.ENOENT and not os.path.isdir(os.path.dirname(dst)):
            raise
        _copy_in(src, dst)


def _move(src: str, dst: str) -> None:
    """Rename (atomic); copy then rename when the folders are on different filesystems."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_in(src, dst)
        os.unlink(src)


class _Round:
    """One directory fsync and the callers it answers for."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None


class _DirSync:
    """Group commit for one directory.

    A caller joins the open round after making its entries. When no fsync of the directory is
    running, one caller of the open round closes it and runs the fsync for all its members;
    callers that arrive meanwhile join the next round. So an fsync always starts after every
    entry of the round it answers for was made, and its result (success or error) goes to
    exactly those callers.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._open: _Round | None = None
        self._running = False

    def sync(self) -> None:
        with self._cond:
            if self._open is None:
                self._open = _Round()
            mine = self._open
            while self._running and not mine.done:
                self._cond.wait()
            lead = not mine.done
            if lead:
                # No fsync running and ours not done: we run it for the whole open round.
                self._running = True
                self._open = None
        if lead:
            error: OSError | None = OSError(errno.EIO, "directory fsync did not complete")
            try:
                _fsync_dir(self.path)
                error = None
            except OSError as e:
                error = e
            finally:  # whatever happens, the round ends and its members are told
                with self._cond:
                    mine.error, mine.done = error, True
                    self._running = False
                    self._cond.notify_all()
        if mine.error is not None:
            e = mine.error
            raise OSError(e.errno, f"fsync of directory failed: {e.strerror}", self.path)


class Store:
    """The data folder's mail parts: `spool/tmp`, `queue`, `mail/<domain>/<user>`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tmp = data_dir / "spool" / "tmp"
        self.queue = data_dir / "queue"
        self.mail = data_dir / "mail"
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._seq = itertools.count(1)  # next() is atomic under the GIL: safe across threads
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._syncers: dict[str, _DirSync] = {}
        # The hot path works on str paths (pathlib costs more than the syscalls here).
        self._tmp_s = str(self.tmp)
        self._queue_s = str(self.queue)
        self._new_dirs: dict[tuple[str, str], str] = {}  # (local, domain) -> its Maildir's new/, made durable

    def prepare(self) -> None:
        for d in (self.tmp, self.queue, self.mail):
            d.mkdir(parents=True, exist_ok=True)

    def maildir(self, local: str, domain: str) -> Path:
        """The Maildir of a local mailbox; a name that could leave the mail folder is refused."""
        for part in (local, domain):
            if not part or "/" in part or "\0" in part or part.startswith("."):
                raise ValueError(f"unsafe mailbox name {local}@{domain}")
        return self.mail / domain.lower() / local.lower()

    def open_message(self, queue_id: str) -> MessageFile:
        return MessageFile(self, queue_id)

    def _unique(self, queue_id: str) -> str:
        return f"{int(time.time())}.{queue_id}_{next(self._seq)}.{self._host}"

    def _sync_dir(self, path: str) -> None:
        """fsync `path`, sharing the fsync with concurrent callers (group commit)."""
        syncer = self._syncers.get(path)
        if syncer is None:
            with self._lock:
                syncer = self._syncers.setdefault(path, _DirSync(path))
        syncer.sync()

    def _new_dir(self, local: str, domain: str) -> str:
        """The `new/` folder of a mailbox, created durably on first use (checked once per process)."""
        new = self._new_dirs.get((local, domain))
        if new is not None:
            return new
        box = self.maildir(local, domain)
        with self._create_lock:  # a second session must not use the folders before they are durable
            new = self._new_dirs.get((local, domain))
            if new is not None:
                return new
            if not (box / "new").is_dir():
                made = [p for p in (box.parent, box) if not p.is_dir()]
                for sub in ("tmp", "new", "cur"):
                    (box / sub).mkdir(parents=True, exist_ok=True)
                # Each new folder's entry lives in its parent: fsync the parents of what was made.
                for d in {box, *(p.parent for p in made)}:
                    self._sync_dir(str(d))
            new = self._new_dirs[(local, domain)] = str(box / "new")
            return new


class MessageFile:
    """One message being received: write chunks, then `commit` (blocking: run it in a thread)."""

    def __init__(self, store: Store, queue_id: str) -> None:
        self.store = store
        self.queue_id = queue_id
        self._spath = f"{store._tmp_s}/{queue_id}"
        # The first _MEMORY_LIMIT bytes stay in memory and the spool file is created only when
        # the message outgrows them, or in commit() (a worker thread). Creating a file can wait
        # on the filesystem journal while other sessions fsync, and write() runs on the event
        # loop: most messages are small, so the loop never blocks on the disk for them.
        self._buf = bytearray()
        self._f: BinaryIO | None = None
        self._on_disk = False  # the spool file exists under self._spath
        self.size = 0

    @property
    def path(self) -> Path:
        """Where the message is spooled until commit."""
        return Path(self._spath)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._f is not None:
            self._f.write(data)
            return
        self._buf += data
        if len(self._buf) > _MEMORY_LIMIT:
            self._f = open(self._spath, "xb", buffering=_MEMORY_LIMIT)
            self._on_disk = True
            self._f.write(self._buf)
            self._buf = bytearray()

    def _make_durable(self) -> None:
        """The spool file, complete and fsync'd."""
        if self._f is None:
            fd = os.open(self._spath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            self._on_disk = True
            try:
                write_all(fd, self._buf)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._buf = bytearray()
        else:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def commit(self, local: list[tuple[str, str]], remote: QueueEntry | None) -> None:
        """Make the message durable in every destination; raises OSError if any step fails."""
        store = self.store
        try:
            if not local and remote is None:
                return  # nowhere to deliver
            self._make_durable()
            # (folder, name): one per Maildir, then the queue.
            dests = [(store._new_dir(lp, domain), store._unique(self.queue_id)) for lp, domain in local]
            if remote is not None:
                dests.append((store._queue_s, self.queue_id + ".msg"))
            last = len(dests) - 1
            for i, (folder, name) in enumerate(dests):
                try:
                    self._put(f"{folder}/{name}", i == last)
                except FileNotFoundError:
                    if i >= len(local):
                        raise
                    # A Maildir removed while we run: create it again and retry once.
                    store._new_dirs.pop(local[i], None)
                    folder = store._new_dir(*local[i])
                    dests[i] = (folder, name)
                    self._put(f"{folder}/{name}", i == last)
            if remote is not None:  # the record, fsync'd and renamed into place (queue_dir.write_record)
                write_record(store._queue_s, remote)
            for folder in dict.fromkeys(folder for folder, _ in dests):
                store._sync_dir(folder)
        finally:
            self.discard()

    def _put(self, dst: str, last: bool) -> None:
        if last:
            _move(self._spath, dst)
            self._on_disk = False
        else:
            _place(self._spath, dst)

    def discard(self) -> None:
        self._buf = bytearray()
        if self._f is not None and not self._f.closed:
            self._f.close()
        if self._on_disk:
            self._on_disk = False
            try:
                os.unlink(self._spath)
            except FileNotFoundError:
                pass
