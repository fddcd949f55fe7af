"""Configuration audit: read an existing MTA's configuration and say whether, and why, it relays.

    from relayguard.audit import audit
    report = audit("postfix", Path("/etc/postfix"))
    report.verdict          # "open-relay", "weakness" or "clean"
    report.findings         # [Finding(severity, rule, file, line, setting, why, fix, service)]

Per MTA there is a reader (text -> settings, pure) and rules (settings -> findings, pure);
this module finds the files (`DiskSource`) and wires them together. Unreadable or malformed
files raise `AuditError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

from .model import AuditError, Finding, Report, Severity
from .source import DiskSource

MTAS = ("postfix", "sendmail", "exim", "qmail")

__all__ = ["MTAS", "AuditError", "Finding", "Report", "Severity", "audit"]


def audit(mta: str, path: Path, *, mta_version: str | None = None, tcprules: Path | None = None) -> Report:
    """Audit the configuration of `mta` at `path` (a folder or its main file)."""
    mta = mta.lower()
    if mta not in MTAS:
        raise ValueError(f"unknown MTA {mta!r}; expected one of {', '.join(MTAS)}")
    if not path.exists():
        raise AuditError(str(path), None, "no such file or folder")
    if mta == "postfix":
        return _postfix(path, mta_version)
    if mta == "sendmail":
        return _sendmail(path)
    if mta == "exim":
        return _exim(path)
    return _qmail(path, tcprules)


def _pick(path: Path, names: tuple[str, ...], what: str) -> Path:
    if not path.is_dir():
        return path
    for name in names:
        if (path / name).exists():
            return path / name
    raise AuditError(str(path), None, f"no {' or '.join(names)} here; give {what}")


def _text(source: DiskSource, path: Path) -> str:
    text = source.read(path)
    if text is None:
        raise AuditError(str(path), None, "no such file")
    return text


def _sendmail(path: Path) -> Report:
    from . import sendmail

    path = _pick(path, ("sendmail.mc", "submit.mc", "sendmail.cf"), "the .mc or .cf file")
    source = DiskSource(path.parent)
    cfg = sendmail.read(_text(source, path), str(path), path.suffix)
    return Report("sendmail", str(path), sendmail.check(cfg, source))


def _exim(path: Path) -> Report:
    from . import exim

    path = _pick(path, ("exim4.conf", "exim.conf", "configure", "exim4.conf.template"), "Exim's runtime configuration file")
    source = DiskSource(path.parent)
    cfg = exim.read(_text(source, path), str(path), source)
    return Report("exim", str(path), exim.check(cfg))


def _qmail(path: Path, tcprules: Path | None) -> Report:
    from . import qmail

    if not path.is_dir():
        raise AuditError(str(path), None, "give the qmail folder (e.g. /var/qmail), which holds control/")
    return Report("qmail", str(path), qmail.check(path, DiskSource(path), tcprules))


def _postfix(path: Path, mta_version: str | None) -> Report:
    from . import postfix, postfix_rules

    folder = path if path.is_dir() else path.parent
    main_path = folder / "main.cf" if path.is_dir() else path
    source = DiskSource(folder)
    main_text = source.read(main_path)
    if main_text is None:
        raise AuditError(str(main_path), None, "no main.cf here; give the Postfix configuration folder (e.g. /etc/postfix)")
    master_path = folder / "master.cf"
    master_text = source.read(master_path)
    cfg = postfix.read(main_text, str(main_path), master_text, str(master_path), str(folder.resolve()))
    return Report("postfix", str(path), postfix_rules.check(cfg, source, mta_version))
