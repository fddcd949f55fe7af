"""Finding, reading and parsing the configuration file, without validating it (config.py does).

Light (no pydantic), so that a command can look at its own table first and load the whole
configuration schema only when it needs it: `relayguard relaytest` starts in less time than
importing pydantic takes (issue 4).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_FILE = "relayguard.toml"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


def parse(text: str, source: str) -> dict[str, Any]:
    """TOML text -> its tables; ConfigError naming `source` and the line when it is not TOML."""
    import tomllib  # here: a command without a configuration file never needs it

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None


def read(path: str | Path | None = None) -> tuple[str, str] | None:
    """(text, name) of `path`, else of ./relayguard.toml when present; None: no file, the
    built-in defaults apply."""
    if path is None:
        if not os.path.exists(DEFAULT_FILE):
            return None
        path = DEFAULT_FILE
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), str(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
