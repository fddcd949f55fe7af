"""From DNSBL answers to a verdict, a score and the texts an MTA sends (pure).

The rules pydnsbl and friends get wrong live here, in one place:
- only A answers in 127.0.0.0/8 are listings; others are ignored (a list that changed policy or
  a hijacked zone must not make every address look listed);
- 127.255.255.0/24 are error codes (Spamhaus: .252 typo in the zone name, .254 query through a
  public resolver, .255 over quota): reported as errors, never as listings, never scored;
- a list that did not answer (timeout, SERVFAIL) is unknown, never clean: the verdict is
  unknown when its weight could have changed the outcome.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .sites import Site

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_ERRORS = ipaddress.ip_network("127.255.255.0/24")

HEADER = "X-Relayguard-DNSBL"

# What a code means, per list family and in general (for people: the CLI table, logs).
ERROR_MEANINGS = {
    "127.255.255.252": "error: typo in the DNSBL zone name",
    "127.255.255.254": "error: query via a public or unattributed resolver",
    "127.255.255.255": "error: excessive number of queries",
}
_ZONE_MEANINGS: dict[str, dict[str, str]] = {
    "zen.spamhaus.org": {
        "127.0.0.2": "SBL: spam source", "127.0.0.3": "SBL CSS: snowshoe spam",
        "127.0.0.4": "XBL: exploited host", "127.0.0.5": "XBL: exploited host",
        "127.0.0.6": "XBL: exploited host", "127.0.0.7": "XBL: exploited host",
        "127.0.0.9": "DROP: hijacked network", "127.0.0.10": "PBL: ISP policy (dynamic)",
        "127.0.0.11": "PBL: Spamhaus policy (dynamic)",
    },
    "dnsbl.njabl.org": {
        "127.0.0.2": "open relay", "127.0.0.3": "dial-up", "127.0.0.4": "spam source",
        "127.0.0.5": "multi-stage open relay", "127.0.0.8": "formmail", "127.0.0.9": "open proxy",
    },
}
_GENERIC_MEANINGS = {"127.0.0.2": "listed", "127.0.0.1": "listed as 127.0.0.1 (RFC 5782: should not be)"}


def code_meaning(zone: str, code: str) -> str:
    if code in ERROR_MEANINGS:
        return ERROR_MEANINGS[code]
    if ipaddress.ip_address(code) in _ERRORS:
        return "error code"
    for family, table in _ZONE_MEANINGS.items():
        if (zone == family or zone.endswith("." + family)) and code in table:
            return table[code]
    return _GENERIC_MEANINGS.get(code, "listed")


@dataclass(frozen=True)
class Codes:
    listed: tuple[str, ...] = ()  # in 127/8, not an error code
    errors: tuple[str, ...] = ()  # 127.255.255.x
    ignored: tuple[str, ...] = ()  # outside 127/8, or not an IPv4 address


def classify(answers: Iterable[str]) -> Codes:
    listed: list[str] = []
    errors: list[str] = []
    ignored: list[str] = []
    for text in answers:
        try:
            ip = ipaddress.IPv4Address(text)
        except ValueError:
            ignored.append(text)
            continue
        if ip in _ERRORS:
            errors.append(str(ip))
        elif ip in _LOOPBACK:
            listed.append(str(ip))
        else:
            ignored.append(str(ip))
    return Codes(tuple(sorted(set(listed), key=ipaddress.IPv4Address)), tuple(sorted(set(errors))), tuple(ignored))


class Status(str, enum.Enum):
    LISTED = "listed"
    CLEAN = "clean"  # NXDOMAIN, no A record, or only answers outside 127/8
    ERROR = "error"  # only error codes (127.255.255.x): the list refuses to answer us
    UNKNOWN = "unknown"  # timeout, SERVFAIL, network error: no answer
    SKIPPED = "skipped"  # the list is unhealthy (RFC 5782 test points) and not asked


@dataclass(frozen=True)
class ZoneAnswer:
    zone: str
    qname: str
    status: Status
    codes: Codes = Codes()
    txt: tuple[str, ...] = ()
    detail: str = ""  # "NXDOMAIN", "timeout after 2.0 s", "unhealthy: ..."
    ttl: float = 0.0
    latency: float = 0.0  # seconds
    cached: bool = False
    local: bool = False  # answered in-process, without DNS

    @property
    def reason(self) -> str:
        return clean_text(" ".join(self.txt))

    def as_dict(self) -> dict[str, object]:
        return {
            "zone": self.zone, "query": self.qname, "status": self.status.value,
            "codes": list(self.codes.listed), "errors": list(self.codes.errors), "ignored": list(self.codes.ignored),
            "meanings": {c: code_meaning(self.zone, c) for c in self.codes.listed + self.codes.errors},
            "txt": list(self.txt), "detail": self.detail, "ttl": round(self.ttl, 3),
            "latency_ms": round(self.latency * 1000, 2), "cached": self.cached, "local": self.local,
        }


@dataclass(frozen=True)
class Match:
    site: Site
    codes: tuple[str, ...]


class Verdict(str, enum.Enum):
    LISTED = "listed"  # score >= threshold whatever the unknown lists would have said
    CLEAN = "clean"  # score < threshold whatever the unknown lists would have said
    UNKNOWN = "unknown"  # lists that did not answer could have changed the outcome


@dataclass(frozen=True)
class CheckResult:
    target: str
    kind: str  # "ipv4" | "ipv6" | "domain"
    threshold: int
    answers: tuple[ZoneAnswer, ...]
    matches: tuple[Match, ...]
    score: int
    unknown: tuple[Site, ...]  # sites whose list did not answer
    verdict: Verdict
    elapsed: float = 0.0
    answer_by_zone: dict[str, ZoneAnswer] = field(default_factory=dict, compare=False, repr=False)

    @property
    def listed(self) -> bool:
        return self.verdict is Verdict.LISTED

    @property
    def blocking(self) -> Match | None:
        """The match named in a rejection: the heaviest positive weight, first in config order."""
        positive = [m for m in self.matches if m.site.weight > 0]
        return max(positive, key=lambda m: m.site.weight) if positive else None

    def summary(self) -> str:
        """`zone=127.0.0.2*3,other=127.0.0.4*1` for logs and headers."""
        return ",".join(f"{m.site.zone}={'+'.join(m.codes)}*{m.site.weight}" for m in self.matches)

    def unknown_zones(self) -> list[str]:
        return list(dict.fromkeys(s.zone for s in self.unknown))

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target, "kind": self.kind, "verdict": self.verdict.value, "score": self.score,
            "threshold": self.threshold, "elapsed_ms": round(self.elapsed * 1000, 2),
            "matches": [{"site": str(m.site), "zone": m.site.zone, "weight": m.site.weight, "codes": list(m.codes)}
                        for m in self.matches],
            "unknown": self.unknown_zones(),
            "lists": [a.as_dict() for a in self.answers],
        }


def evaluate(target: str, kind: str, sites: Sequence[Site], answers: Sequence[ZoneAnswer], threshold: int,
             elapsed: float = 0.0) -> CheckResult:
    by_zone = {a.zone: a for a in answers}
    matches: list[Match] = []
    unknown: list[Site] = []
    for site in sites:
        a = by_zone.get(site.zone)
        if a is None or a.status is Status.SKIPPED:
            continue
        if a.status is Status.UNKNOWN:
            unknown.append(site)
        elif a.status is Status.LISTED:
            codes = tuple(c for c in a.codes.listed if site.matches(c))
            if codes:
                matches.append(Match(site, codes))
    score = sum(m.site.weight for m in matches)
    high = score + sum(max(s.weight, 0) for s in unknown)
    low = score + sum(min(s.weight, 0) for s in unknown)
    verdict = Verdict.LISTED if low >= threshold else Verdict.CLEAN if high < threshold else Verdict.UNKNOWN
    return CheckResult(target, kind, threshold, tuple(answers), tuple(matches), score, tuple(unknown), verdict,
                       elapsed, by_zone)


def clean_text(text: str, limit: int = 200) -> str:
    """Untrusted DNS text made safe for one SMTP reply line or one policy protocol line."""
    out = "".join(c if 32 <= ord(c) < 127 else "?" for c in text).strip()
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class Decision:
    action: str  # "accept" | "reject" | "defer"
    text: str = ""  # the reply text without code: Postfix's wording
    header: str = ""  # "X-Relayguard-DNSBL: ..." for accepted mail that scored, "" otherwise


def decide(result: CheckResult, client: str, *, on_unknown: str = "accept", score_header: bool = True) -> Decision:
    """Reject (554 / REJECT), defer (450 / DEFER_IF_PERMIT) or accept, possibly with a score header."""
    if result.listed:
        m = result.blocking
        zone = m.site.zone if m else result.matches[0].site.zone
        reason = result.answer_by_zone[zone].reason if zone in result.answer_by_zone else ""
        # Postfix's default_rbl_reply: Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain${rbl_reason?; $rbl_reason}
        text = f"Service unavailable; Client host [{clean_text(client, 64)}] blocked using {zone}"
        return Decision("reject", text + (f"; {reason}" if reason else ""))
    if result.verdict is Verdict.UNKNOWN and on_unknown == "defer":
        zones = ", ".join(result.unknown_zones())
        return Decision("defer", f"Service unavailable; Client host [{clean_text(client, 64)}] "
                                 f"not checked: no answer from {zones}; try again later")
    header = ""
    if score_header and (result.matches or result.unknown):
        value = f"score={result.score} threshold={result.threshold}"
        if result.matches:
            value += f" matches={result.summary()}"
        if result.unknown:
            value += f" unknown={','.join(result.unknown_zones())}"
        header = f"{HEADER}: {clean_text(value, 900)}"
    return Decision("accept", header=header)
