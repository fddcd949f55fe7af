"""Durable storage of accepted mail: Maildir for local users, the spool for the outbound queue.

A message streams into `spool/tmp/` while DATA runs. On commit it is fsync'd, hard-linked into
each recipient's Maildir `new/` and (for remote recipients) into `queue/` beside its envelope,
and every directory touched is fsync'd, all before the server may answer 250. A crash at any
point leaves either a complete message in place or nothing the queue would pick up: the queue's
envelope file is written last and is what makes an entry exist.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path


def new_queue_id() -> str:
    """Short, unique, sortable by time: microseconds in hex plus randomness."""
    return f"{time.time_ns() // 1000:X}{secrets.token_hex(3).upper()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(src: Path, dst: Path) -> None:
    """Hard link (atomic, no copy); copy then rename when the folders are on different filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.parent.parent / "tmp" / dst.name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    mail_from: str
    rcpts: list[str]
    client_ip: str
    helo: str
    identity: str  # authenticated user, "" if none
    received: float  # arrival time (Unix)


class Store:
    """The data folder's mail parts: `spool/tmp`, `queue`, `mail/<domain>/<user>`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tmp = data_dir / "spool" / "tmp"
        self.queue = data_dir / "queue"
        self.mail = data_dir / "mail"
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._seq = 0

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
        self._seq += 1
        return f"{int(time.time())}.{queue_id}_{self._seq}.{self._host}"


class MessageFile:
    """One message being received: write chunks, then `commit` (blocking: run it in a thread)."""

    def __init__(self, store: Store, queue_id: str) -> None:
        self.store = store
        self.queue_id = queue_id
        self.path = store.tmp / queue_id
        self._f = open(self.path, "xb", buffering=256 * 1024)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.size += len(data)

    def commit(self, local: list[tuple[str, str]], remote: Envelope | None) -> None:
        """Make the message durable in every destination; raises OSError if any step fails."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            dirs: set[Path] = set()
            for lp, domain in local:
                box = self.store.maildir(lp, domain)
                new = box / "new"
                if not new.is_dir():
                    for sub in ("tmp", "new", "cur"):
                        (box / sub).mkdir(parents=True, exist_ok=True)
                    dirs.update({box, box.parent})
                _place(self.path, new / self.store._unique(self.queue_id))
                dirs.add(new)
            if remote is not None:
                q = self.store.queue
                _place(self.path, q / f"{self.queue_id}.msg")
                env_tmp = self.store.tmp / f"{self.queue_id}.json"
                with open(env_tmp, "w", encoding="utf-8") as f:
                    json.dump(remote.__dict__, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(env_tmp, q / f"{self.queue_id}.json")
                dirs.add(q)
            for d in dirs:
                _fsync_dir(d)
        finally:
            self.discard()

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)
