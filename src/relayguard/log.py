"""One line per event in a stable key=value format: `... INFO event=rcpt client=1.2.3.4 decision=reject`.

A small writer instead of the logging module: the mail path logs several events per message,
and LogRecord, caller lookup and per-record time formatting cost more than the rest of a
message's handling. Levels are the logging module's numbers (logging.INFO etc.).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
          logging.CRITICAL: "CRITICAL"}
_threshold = logging.INFO
_stream: TextIO | None = None  # None: sys.stderr as it is at write time (tests swap it)
_second = -1
_stamp = ""


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


def enabled(level: int) -> bool:
    return level >= _threshold


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if level < _threshold:
        return
    parts = [_now(), _NAMES.get(level, str(level)), f"event={name}"]
    parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
    (_stream or sys.stderr).write(" ".join(parts) + "\n")


def setup(level: str, stream: TextIO | None = None) -> None:
    global _threshold, _stream
    _threshold = logging.getLevelName(level.upper())
    _stream = stream
