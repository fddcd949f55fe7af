"""One line per event in a stable key=value format: `event=rcpt client=1.2.3.4 decision=reject ...`."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("relayguard")


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode("ascii") + '"'


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, " ".join([f"event={name}"] + [f"{k}={_quote(v)}" for k, v in fields.items()]))


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
