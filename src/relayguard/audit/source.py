"""Where the readers get file text from: the only place the audit touches the file system.

Readers take a `Source` so they stay testable without disks; `DiskSource` is the real one.
Files a configuration refers to by absolute path (`hash:/etc/postfix/access`,
`/etc/mail/relay-domains`) are looked up inside the audited tree, never on the running
machine: an audit of a copied configuration must not read the live host's tables.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Protocol

from .model import AuditError


class Source(Protocol):
    root: Path

    def read(self, path: Path) -> str | None: ...

    def exists(self, path: Path) -> bool: ...


class DiskSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, path: Path) -> bool:
        return path.exists()

    def read(self, path: Path) -> str | None:
        """The file's text; None when it does not exist; AuditError when it exists but cannot be read."""
        if not path.exists():
            return None
        if path.is_dir():
            raise AuditError(str(path), None, "is a directory, expected a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise AuditError(str(path), None, f"cannot read: {e.strerror or e}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def locate(source: Source, ref: str, homes: tuple[str, ...]) -> Path | None:
    """Find a file a configuration names, inside the audited tree.

    `homes` are the MTA's usual configuration folders (`/etc/postfix`); a reference under
    one of them maps to the same relative path under `source.root`; otherwise (and as a
    fallback) the bare file name next to the configuration is tried. A relative reference
    is relative to the configuration folder.
    """
    ref = ref.strip()
    if not ref:
        return None
    pure = PurePosixPath(ref)
    candidates: list[Path] = []
    if pure.is_absolute():
        for home in homes:
            try:
                rel = pure.relative_to(home)
            except ValueError:
                continue
            candidates.append(source.root / rel)
        if Path(ref).resolve().parent == source.root.resolve():
            candidates.append(Path(ref))
        candidates.append(source.root / pure.name)
    else:
        candidates.append(source.root / pure)
    for c in candidates:
        if source.exists(c):
            return c
    return None
