"""SMTP AUTH users: one `address:hash` line each, passwords hashed with scrypt (memory-hard).

The file is rewritten atomically (temp file, fsync, rename) so a crash never leaves it half
written; clear-text passwords exist only in memory for the time of one check.

Successful logins are remembered for an hour, as Dovecot's auth cache does, so a client that
opens many sessions pays the memory-hard hash once rather than per session. What is kept is a
keyed hash of the password (HMAC, with a key that exists only in this process's memory), never
the password, and it is tied to the stored hash, so a changed or deleted password is never
served from it. Failures are never cached: each wrong guess costs a full scrypt. Checks of the
same name and password wait for each other instead of hashing side by side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

# scrypt cost: 2^14 * 8 * 128 bytes = 16 MiB per hash, ~50 ms here: slow for guessing, fine for logins.
_N, _R, _P = 2**14, 8, 1
_CACHE_SECONDS = 3600


class UserError(Exception):
    """A users file or user name that cannot be used; the message says which and why."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024)
    b64 = base64.b64encode
    return f"$scrypt$n={_N},r={_R},p={_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, scheme, params, salt, digest = stored.split("$")
        cost = dict(kv.split("=") for kv in params.split(","))
        n, r, p = int(cost["n"]), int(cost["r"]), int(cost["p"])
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=len(expected)
        )
    except (ValueError, KeyError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(got, expected)


# A constant-cost check for unknown users, so timing does not tell which names exist.
_DUMMY = hash_password(secrets.token_hex(8))


class UserDB:
    """The users file, loaded once; `reload()` picks up changes made by `relayguard user`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users: dict[str, str] = {}
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._verified: dict[tuple[str, bytes], tuple[str, float]] = {}  # (name, HMAC) -> (stored hash, when)
        self._checking: dict[tuple[str, bytes], threading.Lock] = {}
        self.reload()

    def reload(self) -> None:
        self.users = {}
        if not self.path.exists():
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path}: cannot read: {e}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not stored.startswith("$scrypt$"):
                raise UserError(f"{self.path}:{n}: expected 'address:$scrypt$...'")
            self.users[name.lower()] = stored

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.users

    def verify(self, name: str, password: str) -> bool:
        """Blocking (up to a scrypt): run it in a thread."""
        name = name.lower()
        stored = self.users.get(name)
        if stored is None:
            check_password(password, _DUMMY)
            return False
        key = (name, hmac.new(self._key, password.encode(), "sha256").digest())
        with self._lock:
            if self._cached(key, stored):
                return True
            checking = self._checking.setdefault(key, threading.Lock())
        with checking:
            with self._lock:
                if self._cached(key, stored):
                    return True
            ok = check_password(password, stored)
            with self._lock:
                if ok:
                    now = time.monotonic()
                    self._verified = {k: v for k, v in self._verified.items() if now - v[1] < _CACHE_SECONDS}
                    self._verified[key] = (stored, now)
                self._checking.pop(key, None)
        return ok

    def _cached(self, key: tuple[str, bytes], stored: str) -> bool:
        hit = self._verified.get(key)
        return hit is not None and hit[0] == stored and time.monotonic() - hit[1] < _CACHE_SECONDS

    def set(self, name: str, password: str) -> None:
        if ":" in name or "/" in name or "@" not in name or any(c.isspace() for c in name):
            raise UserError(f"{name!r}: a user is an address like alice@example.test (no spaces, ':' or '/')")
        self.users[name.lower()] = hash_password(password)
        self._save()

    def delete(self, name: str) -> None:
        if self.users.pop(name.lower(), None) is None:
            raise UserError(f"{name}: no such user in {self.path}")
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        text = "".join(f"{u}:{h}\n" for u, h in sorted(self.users.items()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
