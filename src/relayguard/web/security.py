"""The web's guards: the signing secret, admin sessions, CSRF tokens, rate limits, client addresses.

- The secret (32 random bytes) lives in ``<data_dir>/web-secret`` (mode 0600), made on first
  start, so sessions survive a restart and several processes on one data folder agree.
- Admin sessions are a signed, timestamped cookie (itsdangerous) naming the user and a nonce;
  logging out revokes the nonce in this process, and every request checks that the user still
  exists and is still listed in ``[web] admins``.
- CSRF: double-submit. A signed random token sits in an HttpOnly cookie and in every form; a
  POST is accepted only when the two are equal and the signature holds (a cookie planted by a
  sibling domain cannot be signed). A cross-site ``Origin`` is refused as well.
- Rate limits: a sliding window per key (the client address) held in memory.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, Signer, URLSafeTimedSerializer

SESSION_COOKIE = "rg_session"
CSRF_COOKIE = "rg_csrf"
CSRF_FIELD = "csrf_token"


def load_secret(path: Path) -> bytes:
    """The secret in `path`, made (0600, exclusive create) when missing."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret


class Sessions:
    """Signed admin session cookies: {"u": user, "n": nonce}, valid for `max_age` seconds."""

    def __init__(self, secret: bytes, max_age: float) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="relayguard-web-session")
        self.max_age = max_age
        self._revoked: dict[str, float] = {}

    def issue(self, user: str) -> str:
        return self._s.dumps({"u": user, "n": secrets.token_urlsafe(12)})

    def read(self, cookie: str | None) -> tuple[str, str] | None:
        """(user, nonce) of a valid, unrevoked session cookie; None otherwise."""
        if not cookie:
            return None
        try:
            data = self._s.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("n"), str):
            return None
        if data["n"] in self._revoked:
            return None
        return data["u"], data["n"]

    def revoke(self, nonce: str) -> None:
        now = time.time()
        self._revoked = {n: t for n, t in self._revoked.items() if t > now}
        self._revoked[nonce] = now + self.max_age


class CSRF:
    """Signed double-submit tokens."""

    def __init__(self, secret: bytes) -> None:
        self._signer = Signer(secret, salt="relayguard-web-csrf")

    def new(self) -> str:
        return self._signer.sign(secrets.token_urlsafe(18)).decode()

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            self._signer.unsign(token)
        except BadSignature:
            return False
        return True

    def check(self, cookie: str | None, field: str | None) -> bool:
        """The form's token equals the cookie's, and it is ours."""
        if not cookie or not field or not self.valid(cookie):
            return False
        return hmac.compare_digest(cookie.encode(), field.encode())


def same_origin(headers: Any, base_host: str) -> bool:
    """False when the browser says the request came from another site (Origin or Referer)."""
    from urllib.parse import urlsplit

    origin = headers.get("origin")
    if origin is None:
        referer = headers.get("referer")
        if not referer:
            return True  # no claim either way: the token decides
        origin = referer
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == base_host.lower()


class RateLimiter:
    """At most `limit` events per `period` seconds per key; memory bounded by `max_keys`."""

    def __init__(self, limit: int, period: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit, self.period, self.max_keys = limit, period, max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str, now: float | None = None) -> float:
        """Count one event; 0 when allowed, else the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        q = self._hits.get(key)
        if q is None:
            q = self._hits[key] = deque()
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while q and q[0] <= now - self.period:
            q.popleft()
        if len(q) >= self.limit:
            return max(0.001, q[0] + self.period - now)
        q.append(now)
        return 0.0


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[ipaddress._BaseNetwork]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted address of X-Forwarded-For."""
    ip = peer or "unknown"
    if not forwarded_for or not trusted:
        return ip

    def is_trusted(a: str) -> bool:
        try:
            addr = ipaddress.ip_address(a)
        except ValueError:
            return False
        return any(addr in net for net in trusted)

    if not is_trusted(ip):
        return ip
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return ip  # garbage: keep the proxy's own address
        if not is_trusted(hop):
            return hop
        ip = hop
    return ip
