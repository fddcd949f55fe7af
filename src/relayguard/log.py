"""One line per event in a stable key=value format: `... INFO event=rcpt client=1.2.3.4 decision=reject`,
or one JSON object per line (`[server] log_format = "json"`), to standard error or `[server] log_file`.

A small writer instead of the logging module: the mail path logs several events per message,
and LogRecord, caller lookup and per-record time formatting cost more than the rest of a
message's handling. Levels are the logging module's numbers (logging.INFO etc.).

No call site passes a secret (passwords, AUTH data, the smarthost password): the AUTH event
carries the user name, the mechanism and the result only; a test greps the log after AUTH.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
          logging.CRITICAL: "CRITICAL"}
_threshold = logging.INFO
_stream: TextIO | None = None  # None: sys.stderr as it is at write time (tests swap it)
_file: TextIO | None = None  # the open `log_file`, when one is configured
_json = False
_second = -1
_stamp = ""
_iso_second = -1
_iso_stamp = ""
# `batch_on`: lines logged by the event loop's thread wait for the end of the loop's turn and are
# written together (a busy server logs several lines per message, each a write(2) otherwise).
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread = -1
_pending: list[str] = []


def _quote(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode("ascii") + '"'


def _now() -> str:
    global _second, _stamp
    t = time.time()
    s = int(t)
    if s != _second:
        _second, _stamp = s, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s))
    return f"{_stamp},{int((t - s) * 1000):03d}"


def _iso_now() -> str:
    """RFC 3339 local time with milliseconds and the UTC offset: 2025-05-01T12:00:00.123+02:00."""
    global _iso_second, _iso_stamp
    t = time.time()
    s = int(t)
    if s != _iso_second:
        lt = time.localtime(s)
        off = lt.tm_gmtoff or 0
        _iso_second = s
        _iso_stamp = time.strftime("%Y-%m-%dT%H:%M:%S", lt), "{}{:02d}:{:02d}".format(
            "-" if off < 0 else "+", abs(off) // 3600, abs(off) % 3600 // 60)
    return f"{_iso_stamp[0]}.{int((t - s) * 1000):03d}{_iso_stamp[1]}"


def _json_value(value: object) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _json_line(name: str, level: int, fields: dict[str, object]) -> str:
    record = {"time": _iso_now(), "level": _NAMES.get(level, str(level)), "event": name}
    for k, v in fields.items():
        record[k if k not in record else f"field_{k}"] = _json_value(v)
    return json.dumps(record) + "\n"  # ASCII: control characters and line breaks are escaped


def enabled(level: int) -> bool:
    return level >= _threshold


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if level < _threshold:
        return
    if _json:
        line = _json_line(name, level, fields)
    else:
        parts = [_now(), _NAMES.get(level, str(level)), f"event={name}"]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts) + "\n"
    if _loop is not None and threading.get_ident() == _loop_thread:
        if not _pending:
            _loop.call_soon(flush)
        _pending.append(line)
    else:
        _write(line)


def _write(text: str) -> None:
    try:
        (_stream or sys.stderr).write(text)
    except ValueError:  # the file was closed by a setup() in another thread a moment ago
        (_stream or sys.stderr).write(text)


def batch_on(loop: asyncio.AbstractEventLoop | None) -> None:
    """Batch the lines logged by `loop`'s thread (the caller's) until the loop's next turn;
    None: write every line at once again (after writing what is waiting)."""
    global _loop, _loop_thread
    flush()
    _loop, _loop_thread = loop, threading.get_ident()


def flush() -> None:
    """Write the batched lines."""
    if _pending:
        text = "".join(_pending)
        _pending.clear()
        _write(text)


def setup(level: str, stream: TextIO | None = None, *, path: str | Path = "", fmt: str = "kv") -> None:
    """Level, destination and format. `path` (appended to, line-buffered) wins over `stream`; calling
    setup again re-opens the file, so a SIGHUP after log rotation writes to the new file.
    Raises OSError when the file cannot be opened (the previous destination stays)."""
    global _threshold, _stream, _file, _json
    new = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115 (kept open)
    _threshold = logging.getLevelName(level.upper())
    _json = fmt == "json"
    old, _file = _file, new
    _stream = new if new is not None else stream
    if old is not None:
        old.close()


def setup_from(server: Any) -> None:
    """`setup` from the `[server]` settings (log_level, log_file, log_format): what `serve` calls."""
    setup(server.log_level, path=server.log_file, fmt=server.log_format)
