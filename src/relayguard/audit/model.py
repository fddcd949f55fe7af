"""What an audit produces: findings with a severity, a place, the setting, why and the fix.

Pure data. The readers and rules build these; only `cli.py` formats them for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum


class Severity(str, Enum):
    """How bad a finding is. `OPEN_RELAY` means strangers can relay through the server."""

    OPEN_RELAY = "open-relay"
    WEAKNESS = "weakness"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"open-relay": 0, "weakness": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    rule: str  # stable identifier, "postfix/mynetworks-wide"
    file: str  # the file the setting lives in (or would live in, for a default)
    line: int | None  # 1-based; None when the value is a built-in default
    setting: str  # "mynetworks = 0.0.0.0/0"
    why: str  # one sentence
    fix: str
    service: str = ""  # Postfix master.cf service ("submission/inet"), "" elsewhere

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "rule": self.rule,
            "file": self.file,
            "line": self.line,
            "setting": self.setting,
            "why": self.why,
            "fix": self.fix,
            "service": self.service,
        }


class AuditError(Exception):
    """A file that cannot be read or parsed: names the file and, when known, the line."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass
class Report:
    mta: str
    path: str
    findings: list[Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.findings = _dedupe(self.findings)

    @property
    def verdict(self) -> str:
        """'open-relay', 'weakness' or 'clean' (info findings alone leave a configuration clean)."""
        severities = {f.severity for f in self.findings}
        if Severity.OPEN_RELAY in severities:
            return "open-relay"
        if Severity.WEAKNESS in severities:
            return "weakness"
        return "clean"

    @property
    def open_relay(self) -> bool:
        return self.verdict == "open-relay"

    def rules(self, severity: Severity | None = None) -> set[str]:
        return {f.rule for f in self.findings if severity is None or f.severity == severity}

    def to_dict(self) -> dict[str, object]:
        counts = {s.value: sum(1 for f in self.findings if f.severity == s) for s in Severity}
        return {
            "mta": self.mta,
            "path": self.path,
            "verdict": self.verdict,
            "counts": counts,
            "findings": [f.to_dict() for f in self.findings],
        }


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per rule, place and setting (several services can share one main.cf line)."""
    seen: dict[tuple[str, str, int | None, str], Finding] = {}
    for f in findings:
        key = (f.rule, f.file, f.line, f.setting)
        kept = seen.get(key)
        if kept is None:
            seen[key] = f
            continue
        services = ", ".join(dict.fromkeys(s for s in (*kept.service.split(", "), *f.service.split(", ")) if s))
        best = f if f.severity.rank < kept.severity.rank else kept
        seen[key] = replace(best, service=services)
    return sorted(seen.values(), key=lambda f: (f.severity.rank, f.file, f.line or 0, f.rule))
