"""qmail: control/rcpthosts, control/morercpthosts, control/percenthack and the tcpserver
rules (tcp.smtp) that set RELAYCLIENT (qmail-smtpd(8), tcprules(1)).

qmail-smtpd accepts a recipient only if its domain is in rcpthosts (an entry `.dom`
covers every subdomain), unless RELAYCLIENT is set in its environment: then it accepts
everything. Without rcpthosts it accepts everything too: the classic qmail open relay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import nets
from .model import AuditError, Finding, Severity
from .source import Source, locate

QMAIL_HOMES = ("/var/qmail", "/etc")
RUN_SCRIPTS = ("supervise/qmail-smtpd/run", "service/qmail-smtpd/run", "qmail-smtpd/run", "run", "rc")
TCPRULES_NAMES = ("tcp.smtp", "etc/tcp.smtp", "control/tcp.smtp", "tcprules/tcp.smtp", "tcp/tcp.smtp")


@dataclass(frozen=True)
class Rule:
    address: str
    action: str  # "allow" or "deny"
    env: dict[str, str]
    line: int


def parse_tcprules(text: str, file: str) -> list[Rule]:
    """tcprules(1) source: `address:allow|deny[,VAR="value"]...`; '#' lines are comments."""
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        address, sep, instructions = line.partition(":")
        if not sep:
            raise AuditError(file, number, f"unable to parse this line (no ':'): {line!r}")
        parts = _split_instructions(instructions)
        action = parts[0].strip().lower() if parts else ""
        if action not in ("allow", "deny"):
            raise AuditError(file, number, f"unable to parse this line (expected allow or deny after ':'): {line!r}")
        env: dict[str, str] = {}
        for part in parts[1:]:
            name, eq, value = part.partition("=")
            if not eq or not name.strip():
                raise AuditError(file, number, f"unable to parse {part!r} (expected VAR=value)")
            env[name.strip()] = _unquote(value.strip())
        rules.append(Rule(address.strip(), action, env, number))
    return rules


def _split_instructions(text: str) -> list[str]:
    parts, buf, quote = [], [], ""
    for c in text:
        if quote:
            buf.append(c)
            if c == quote:
                quote = ""
            continue
        if c in "\"'":
            quote = c
            buf.append(c)
        elif c == ",":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    parts.append("".join(buf))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def rule_network(address: str) -> nets.Network | None:
    """The address range of a tcprules address: `1.2.3.4`, `1.2.3.` (prefix), `1.2.3.4-20`, `` (all)."""
    if address == "":
        return nets.parse_network("0.0.0.0/0")
    m = re.fullmatch(r"(\d+\.\d+\.\d+\.)(\d+)-(\d+)", address)
    if m:
        first, last = int(m.group(2)), int(m.group(3))
        size = max(1, last - first + 1)
        prefix = 32 - max(0, (size - 1).bit_length())
        return nets.parse_network(f"{m.group(1)}{first}/{prefix}")
    if address.endswith(".") or re.fullmatch(r"\d+(\.\d+){0,3}", address):
        return nets.octet_prefix(address)
    try:
        return nets.parse_network(address)
    except ValueError:
        return None


def _entries(text: str) -> list[tuple[str, int]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        word = raw.strip()
        if word and not word.startswith("#"):
            out.append((word.lower(), number))
    return out


def _is_tld_wildcard(entry: str) -> bool:
    return entry.startswith(".") and "." not in entry[1:] or entry in (".", "")


def check(root: Path, source: Source, tcprules: Path | None) -> list[Finding]:
    out: list[Finding] = []
    control = root / "control" if source.exists(root / "control") else root
    rcpthosts_path = control / "rcpthosts"
    rcpt_text = source.read(rcpthosts_path)
    domains: list[tuple[str, int]] = []
    if rcpt_text is None:
        out.append(Finding(Severity.OPEN_RELAY, "qmail/no-rcpthosts", str(rcpthosts_path), None, "control/rcpthosts (missing)",
                           "Without rcpthosts qmail-smtpd accepts mail for every domain and relays it: an open relay.",
                           "Create control/rcpthosts listing your domains (one per line, .domain for subdomains)."))
    else:
        domains = _entries(rcpt_text)
        more = source.read(control / "morercpthosts")
        if not domains and not (more and _entries(more)):
            out.append(Finding(Severity.INFO, "qmail/empty-rcpthosts", str(rcpthosts_path), None, "control/rcpthosts (empty)",
                               "rcpthosts is empty, so qmail-smtpd refuses every recipient that has a domain.",
                               "List your domains in control/rcpthosts."))
        files = [(str(rcpthosts_path), domains)]
        if more:
            files.append((str(control / "morercpthosts"), _entries(more)))
        for file, entries in files:
            for entry, line in entries:
                if _is_tld_wildcard(entry):
                    out.append(Finding(Severity.OPEN_RELAY, "qmail/rcpthosts-wide", file, line, entry,
                                       f"'{entry}' accepts every domain under .{entry.lstrip('.')}, and qmail relays what it accepts for remote domains.",
                                       "List your own domains only."))

    percent = source.read(control / "percenthack")
    if percent is not None:
        local = {d for d, _ in domains}
        for entry, line in _entries(percent):
            covered = rcpt_text is None or entry in local or any(d.startswith(".") and entry.endswith(d) for d in local)
            out.append(Finding(Severity.OPEN_RELAY if covered else Severity.WEAKNESS, "qmail/percenthack", str(control / "percenthack"), line, entry,
                               f"qmail-smtpd accepts user%elsewhere@{entry} as mail for {entry}, then qmail-send rewrites it to user@elsewhere and delivers it there."
                               if covered else f"The percent hack is on for {entry}: user%elsewhere@{entry} is rewritten to user@elsewhere.",
                               "Remove control/percenthack (or the entry)."))

    rules_path, run_findings = _find_rules(root, source, tcprules)
    out.extend(run_findings)
    if rules_path is None:
        if not any(f.rule == "qmail/relayclient-global" for f in run_findings):
            out.append(Finding(Severity.INFO, "qmail/no-tcprules", str(root / "tcp.smtp"), None, "tcp.smtp (not found)",
                               "No tcpserver rules were found, so the RELAYCLIENT settings were not checked.",
                               "Give the tcprules source with --tcprules (often /etc/tcp.smtp)."))
        return out
    text = source.read(rules_path)
    if text is None:
        raise AuditError(str(rules_path), None, "no such file")
    for rule in parse_tcprules(text, str(rules_path)):
        if rule.action != "allow" or "RELAYCLIENT" not in rule.env:
            continue
        shown = f"{rule.address}:allow,RELAYCLIENT=\"{rule.env['RELAYCLIENT']}\""
        if rule.address.startswith("="):
            name = rule.address[1:]
            if name in ("", "."):
                out.append(Finding(Severity.OPEN_RELAY, "qmail/relayclient-wide", str(rules_path), rule.line, shown,
                                   "Every client with a reverse DNS name gets RELAYCLIENT, so nearly every host on the Internet may relay.",
                                   "Set RELAYCLIENT only for your own addresses."))
            else:
                out.append(Finding(Severity.WEAKNESS, "qmail/relayclient-by-name", str(rules_path), rule.line, shown,
                                   f"RELAYCLIENT is given by reverse DNS name ({name}); without tcpserver -p the owner of any address can claim that name.",
                                   "Use addresses in tcp.smtp, or run tcpserver with -p (paranoid)."))
            continue
        net = rule_network(rule.address)
        if net is None:
            out.append(Finding(Severity.INFO, "qmail/unknown-rule", str(rules_path), rule.line, shown,
                               f"The address {rule.address!r} was not understood, so this RELAYCLIENT rule was not checked.",
                               "Check the rule against tcprules(1)."))
            continue
        w = nets.width(net)
        if w.severity is None:
            continue
        why = ("This rule matches every client: qmail-smtpd ignores rcpthosts for all of them and relays anything."
               if rule.address == "" else f"Every client in {rule.address or '*'} ({w.text}) gets RELAYCLIENT and may relay anywhere.")
        out.append(Finding(w.severity, "qmail/relayclient-wide", str(rules_path), rule.line, shown, why,
                           "Set RELAYCLIENT only for your own hosts, e.g. 127.:allow,RELAYCLIENT=\"\", and end with :allow (no RELAYCLIENT)."))
    return out


def _find_rules(root: Path, source: Source, explicit: Path | None) -> tuple[Path | None, list[Finding]]:
    findings: list[Finding] = []
    if explicit is not None:
        if not source.exists(explicit):
            raise AuditError(str(explicit), None, "no such file")
        return explicit, findings
    named: Path | None = None
    for rel in RUN_SCRIPTS:
        path = root / rel
        text = source.read(path) if source.exists(path) else None
        if text is None:
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0]
            m = re.search(r"-x\s+(\S+)\.cdb", line)
            if m and named is None:
                named = locate(source, m.group(1), QMAIL_HOMES + ("/etc/tcp",))
            if re.search(r"\bRELAYCLIENT=", line) and "tcprules" not in line:
                findings.append(Finding(Severity.OPEN_RELAY, "qmail/relayclient-global", str(path), number, line.strip(),
                                        "The qmail-smtpd run script sets RELAYCLIENT for every connection, so it relays for anyone.",
                                        "Remove RELAYCLIENT from the run script; set it per address in tcp.smtp."))
    if named is not None:
        return named, findings
    for rel in TCPRULES_NAMES:
        if source.exists(root / rel):
            return root / rel, findings
    return None, findings
