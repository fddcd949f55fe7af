"""Durable storage of accepted mail: Maildir for local users, the spool for the outbound queue.

While DATA runs a message is kept in memory up to 256 KiB and streams into `spool/tmp/` beyond
that. At the end of DATA the server hands it to the store (`Store.commit`), which makes it
durable before the server may answer 250: the message file (and, for remote recipients, the
queue record) is written out completely, the filesystem is synced, the message is hard-linked
into each recipient's Maildir `new/` and into `queue/` (the last of these by rename), the record
is renamed into `queue/`, and the filesystem is synced again. A crash at any point leaves either
a complete message in place or nothing the queue would pick up: nothing is linked into a Maildir
before its data is on disk, and the record, renamed last, is what makes a queue entry exist.

Group commit (bench/run.py): one thread commits every message that arrived while it was busy as
one batch, and two syncfs(2) calls make the whole batch durable, file data and directory
entries alike, where an fsync of each file and each folder would cost the filesystem one or two
journal commits per message. Where a Maildir is on another filesystem than the spool, every
filesystem touched is synced. The batch's sessions hear of it in one event-loop callback: a
wake-up of the loop (and a hand-over of the GIL) per message cost more than the rest of the
thread's Python work.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import itertools
import json
import os
import queue
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from .queue import QueueEntry
from .queue_dir import write_all

# Message data kept in memory before the spool file is created (also the file's write buffer).
_MEMORY_LIMIT = 256 * 1024
# Messages committed together at most (their data is in memory meanwhile).
_MAX_BATCH = 256


# The queue id's last part: a counter from a random start (ids of two processes differ too).
_ID_SEQ = itertools.count(secrets.randbits(24))


def new_queue_id() -> str:
    """Short, unique, sortable by time: microseconds in hex, then 24 bits of a counter."""
    return f"{time.time_ns() // 1000:X}{next(_ID_SEQ) & 0xFFFFFF:06X}"


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


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux
        return None


_SYNCFS = _load_syncfs()


def _sync_filesystems(folders: Iterable[str]) -> None:
    """Make everything written so far to the filesystems holding `folders` durable: file data,
    inodes and directory entries (syncfs(2); since Linux 5.8 it reports write-back errors)."""
    for folder in {os.stat(f).st_dev: f for f in set(folders)}.values():
        if _SYNCFS is None:
            os.sync()
            return
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs failed: {os.strerror(err)}", folder)
        finally:
            os.close(fd)


class _Job:
    """One message to commit; its outcome (`error`, None = durable) is told to `future` later,
    on the future's event loop."""

    __slots__ = ("msg", "local", "remote", "future", "error")

    def __init__(self, msg: MessageFile, local: list[tuple[str, str]], remote: QueueEntry | None) -> None:
        self.msg, self.local, self.remote = msg, local, remote
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.msg.discard()
        self.error = error


def _tell(jobs: list[_Job]) -> None:
    """On the event loop: settle the futures of a committed batch (a session gone meanwhile
    cancelled its own)."""
    for job in jobs:
        if job.future.done():
            continue
        if job.error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(job.error)


class _Committer:
    """The thread that commits messages in batches (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="relayguard-commit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit(batch)
            except BaseException as e:  # a bug: fail the batch, and keep the thread (every session needs it)
                for job in batch:
                    if job.error is None:
                        job.fail(e)
                if not isinstance(e, Exception):
                    raise
            finally:
                _tell_each_loop(batch)

    def _commit(self, batch: list[_Job]) -> None:
        store = self.store
        written = _each(batch, lambda job: job.msg.write_out(job.remote))
        written = _synced(written, [store._tmp_s])
        placed = _each(written, lambda job: job.msg.place(job.local, job.remote is not None))
        for job in _synced(placed, [folder for job in placed for folder in job.msg.folders]):
            job.msg.discard()


def _tell_each_loop(batch: list[_Job]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in batch:
        by_loop.setdefault(job.future.get_loop(), []).append(job)
    for loop, jobs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_tell, jobs)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _each(jobs: list[_Job], step: Callable[[_Job], object]) -> list[_Job]:
    """Run `step` for each job; a job whose step fails is failed and left out of the result."""
    ok = []
    for job in jobs:
        try:
            step(job)
        except Exception as e:  # noqa: BLE001 (this message's problem, reported to its session)
            job.fail(e)
        else:
            ok.append(job)
    return ok


def _synced(jobs: list[_Job], folders: list[str]) -> list[_Job]:
    """Sync the filesystems of `folders` for `jobs`; if that fails, every one of them fails."""
    if not jobs:
        return jobs
    try:
        _sync_filesystems(folders)
    except OSError as e:
        for job in jobs:
            job.fail(e)
        return []
    return jobs


class Store:
    """The data folder's mail parts: `spool/tmp`, `queue`, `mail/<domain>/<user>`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tmp = data_dir / "spool" / "tmp"
        self.queue = data_dir / "queue"
        self.mail = data_dir / "mail"
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._seq = itertools.count(1)  # next() is atomic under the GIL: safe across threads
        self._create_lock = threading.Lock()
        self._committer = _Committer(self)
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

    def commit(self, msg: MessageFile, local: list[tuple[str, str]], remote: QueueEntry | None) -> asyncio.Future[None]:
        """Make `msg` durable in each local mailbox `(local part, domain)` and in the queue
        (`remote`). Called on an event loop: the returned future of that loop is done when the
        message is durable, or fails with the error (OSError, ValueError)."""
        job = _Job(msg, local, remote)
        if not local and remote is None:  # nowhere to deliver
            msg.discard()
            job.future.set_result(None)
        else:
            self._committer.submit(job)
        return job.future

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
                    _fsync_dir(str(d))
            new = self._new_dirs[(local, domain)] = str(box / "new")
            return new


class MessageFile:
    """One message being received: `write` chunks, then `Store.commit` it (or `discard` it)."""

    def __init__(self, store: Store, queue_id: str) -> None:
        self.store = store
        self.queue_id = queue_id
        self._spath = f"{store._tmp_s}/{queue_id}"
        self._record_tmp = f"{self._spath}.json"  # the queue record until it is renamed into queue/
        # The first _MEMORY_LIMIT bytes stay in memory and the spool file is created only when
        # the message outgrows them, or by the committer thread. Creating a file can wait on the
        # filesystem while it syncs, and write() runs on the event loop: most messages are
        # small, so the loop never blocks on the disk for them.
        self._buf = bytearray()
        self._f: BinaryIO | None = None
        self._on_disk = False  # the spool file exists under self._spath
        self._record_on_disk = False
        self.folders: list[str] = []  # where `place` put it
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

    def write_out(self, remote: QueueEntry | None) -> None:
        """Commit, first step: the spool file complete, and the queue record beside it (not synced)."""
        if self._f is None:
            fd = os.open(self._spath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            self._on_disk = True
            try:
                write_all(fd, self._buf)
            finally:
                os.close(fd)
            self._buf = bytearray()
        else:
            self._f.close()
        if remote is not None:
            fd = os.open(self._record_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            self._record_on_disk = True
            try:
                write_all(fd, json.dumps(remote.to_json()).encode())
            finally:
                os.close(fd)

    def place(self, local: list[tuple[str, str]], queued: bool) -> None:
        """Commit, second step (its data synced): into each Maildir's new/, then into queue/,
        the record last. Sets `folders`, the folders changed."""
        store = self.store
        # (folder, name): one per Maildir, then the queue.
        dests = [(store._new_dir(lp, domain), store._unique(self.queue_id)) for lp, domain in local]
        if queued:
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
        if queued:
            os.rename(self._record_tmp, f"{store._queue_s}/{self.queue_id}.json")
            self._record_on_disk = False
        self.folders = list(dict.fromkeys(folder for folder, _ in dests))

    def _put(self, dst: str, last: bool) -> None:
        if last:
            _move(self._spath, dst)
            self._on_disk = False
        else:
            _place(self._spath, dst)

    def discard(self) -> None:
        """Drop what is left in the spool (all of it, unless the message was committed)."""
        self._buf = bytearray()
        if self._f is not None and not self._f.closed:
            self._f.close()
        if self._on_disk:
            self._on_disk = False
            _unlink(self._spath)
        if self._record_on_disk:
            self._record_on_disk = False
            _unlink(self._record_tmp)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
