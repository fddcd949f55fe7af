"""Postfix relay rules: from a `PostfixConfig` to findings.

The central question is answered the way smtpd answers it (smtpd_check.c): at RCPT time
the client, HELO, sender, relay and recipient restriction lists are each evaluated; any
list that rejects refuses the recipient, and a list that ends without a decision permits.
The audit plays one client: a stranger on the Internet (not in mynetworks, not
authenticated, free to choose its HELO name and sender address) asking to relay to a
domain that is not ours. If no list rejects that stranger, the service is an open relay.
Every smtpd service in master.cf is evaluated with its own `-o` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import nets
from . import postfix_tables as tables
from .model import Finding, Severity
from .postfix import PostfixConfig, Service, Setting, split_list
from .source import Source, locate

RESTRICTION_LISTS = (
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
)
RELAY_LISTS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
# smtpd_check.c rcpt_required[]: without one of these in either relay list, smtpd exits.
REQUIRED = {"reject_unauth_destination", "defer_unauth_destination", "reject", "defer", "defer_if_permit", "check_relay_domains"}
REJECTERS = REQUIRED
UNAUTH_CHECKS = {"reject_unauth_destination", "defer_unauth_destination"}

# check_*_access restrictions: what the stranger controls about the looked-up value.
ACCESS_KINDS = {
    "check_client_access": "client",
    "check_client_a_access": "client",
    "check_reverse_client_hostname_access": "reverse",
    "check_reverse_client_hostname_a_access": "reverse",
    "check_client_mx_access": "chosen",
    "check_client_ns_access": "chosen",
    "check_reverse_client_hostname_mx_access": "chosen",
    "check_reverse_client_hostname_ns_access": "chosen",
    "check_helo_access": "chosen",
    "check_helo_a_access": "chosen",
    "check_helo_mx_access": "chosen",
    "check_helo_ns_access": "chosen",
    "check_sender_access": "chosen",
    "check_sender_a_access": "chosen",
    "check_sender_mx_access": "chosen",
    "check_sender_ns_access": "chosen",
    "check_recipient_access": "recipient",
    "check_recipient_a_access": "recipient-dns",
    "check_recipient_mx_access": "recipient-dns",
    "check_recipient_ns_access": "recipient-dns",
    "check_ccert_access": "none",
    "check_sasl_access": "none",
    "check_etrn_access": "none",
}
TAKES_ARGUMENT = set(ACCESS_KINDS) | {
    "check_policy_service", "reject_rbl_client", "reject_rhsbl_client", "reject_rhsbl_sender",
    "reject_rhsbl_helo", "reject_rhsbl_recipient", "reject_rhsbl_reverse_client", "permit_dnswl_client",
    "permit_rhswl_client", "sleep", "reject_dnsbl_client",
}
# Restrictions a stranger passes without a decision (it can satisfy or avoid them).
NEUTRAL = {
    "permit_sasl_authenticated", "permit_tls_clientcerts", "permit_inet_interfaces", "permit_dnswl_client",
    "permit_rhswl_client", "reject_unauth_pipelining", "reject_unknown_client_hostname", "reject_unknown_client",
    "reject_unknown_reverse_client_hostname", "reject_invalid_helo_hostname", "reject_invalid_hostname",
    "reject_non_fqdn_helo_hostname", "reject_non_fqdn_hostname", "reject_unknown_helo_hostname",
    "reject_unknown_hostname", "reject_non_fqdn_sender", "reject_non_fqdn_recipient",
    "reject_unknown_sender_domain", "reject_unknown_recipient_domain", "reject_unlisted_recipient",
    "reject_unlisted_sender", "reject_unverified_sender", "reject_unverified_recipient",
    "reject_rbl_client", "reject_rhsbl_client", "reject_rhsbl_sender", "reject_rhsbl_helo",
    "reject_rhsbl_recipient", "reject_rhsbl_reverse_client", "reject_dnsbl_client", "reject_multi_recipient_bounce",
    "reject_plaintext_session", "reject_sender_login_mismatch", "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch", "reject_unauthenticated_sender_login_mismatch", "reject_unknown_address",
    "reject_maps_rbl", "reject_rhsbl_reverse_client", "defer_if_reject", "sleep", "permit_auth_destination",
    "permit_mynetworks", "permit_mx_backup", "permit_tls_all_clientcerts", "reject_unverified_address",
    "reject_unauth_sender_login_mismatch", "reject_unknown_forward_client_hostname", "reject_rbl",
    "reject_unverified_helo_hostname", "permit_auth_destination",
}
SUBMISSION_PORTS = {"submission", "587", "smtps", "submissions", "465"}
_PUBLIC_SUFFIXES_2 = {"co.uk", "org.uk", "ac.uk", "com.au", "net.au", "co.jp", "co.nz", "com.br", "co.za", "com.cn"}
_SAMPLE_DOMAINS = ("gmail.com", "example.org", "mail.ru", "stranger.example.net")
_SAMPLE_CLIENTS = ("unknown", "8.8.8.8", "2001:4860:4860::8888", "mail.stranger.example.net", "host-45-33-32-156.dsl.example.com")
_SAMPLE_ADDRESSES = ("victim@gmail.com", "user@example.org", "someone@mail.ru")


# -- shared helpers ---------------------------------------------------------------------


_NOT_ROUTED = {"localhost", "localdomain", "local", "lan", "home", "internal", "intranet", "invalid", "test", "example", "corp", "private"}


def is_broad_domain(pattern: str) -> bool:
    """A domain pattern that covers a whole top-level (or public second-level) domain."""
    p = pattern.strip().lower().rstrip(".")
    p = p[1:] if p.startswith(".") else p
    if p in ("", "*"):
        return True
    if p in _NOT_ROUTED or "$" in p:
        return False
    return "." not in p or p in _PUBLIC_SUFFIXES_2


def _finding(severity: Severity, rule: str, where: Setting, setting: str, why: str, fix: str, service: Service | None = None) -> Finding:
    return Finding(severity, rule, where.file, where.line, setting, why, fix, service.key if service else "")


def _shown(s: Setting, cfg: PostfixConfig | None = None, svc: Service | None = None) -> str:
    """`name = value` as written; for a built-in default, the expanded value marked (default)."""
    if s.is_default and cfg is not None:
        value = " ".join(cfg.value(s.name, svc).split())
        return f"{s.name} = {value} (default)"
    value = " ".join(s.value.split())
    return f"{s.name} = {value}" if len(value) <= 160 else f"{s.name} = {value[:157]}..."


@dataclass
class Trusted:
    """mynetworks, parsed."""

    networks: list[tuple[nets.Network, str]] = field(default_factory=list)  # (network, as written)
    excluded: list[nets.Network] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # host names / domains trusted by name
    unreadable: list[str] = field(default_factory=list)

    @property
    def admits_stranger(self) -> bool:
        return nets.admits_stranger([n for n, _ in self.networks], self.excluded)


def trusted_networks(cfg: PostfixConfig, svc: Service | None, source: Source) -> Trusted:
    out = Trusted()
    value = cfg.value("mynetworks", svc)
    for item in split_list(value):
        negate = item.startswith("!")
        item = item.lstrip("!")
        if item.startswith("/"):
            path = locate(source, item, tables.POSTFIX_HOMES)
            text = source.read(path) if path is not None else None
            if text is None:
                out.unreadable.append(item)
                continue
            # a file of patterns, separated by whitespace; '#' starts a comment line
            for line in text.splitlines():
                if not line.strip().startswith("#"):
                    for word in line.split():
                        _add_network(out, word.lstrip("!"), negate or word.startswith("!"))
            continue
        if ":" in item and not item.startswith("[") and not _looks_ipv6(item):
            table = tables.load(item, source)
            if not table.readable:
                out.unreadable.append(item)
                continue
            for e in table.entries:
                if e.kind == "regexp":
                    out.names.append(f"/{e.key}/")
                else:
                    _add_network(out, e.key, negate or e.negate)
            continue
        _add_network(out, item, negate)
    return out


def _looks_ipv6(item: str) -> bool:
    try:
        nets.parse_network(item)
        return True
    except ValueError:
        return False


def _add_network(out: Trusted, item: str, negate: bool) -> None:
    try:
        net = nets.parse_network(item)
    except ValueError:
        out.names.append(item)
        return
    if negate:
        out.excluded.append(net)
    else:
        out.networks.append((net, item))


def exposed(cfg: PostfixConfig, svc: Service) -> bool:
    """Whether strangers can connect to the service at all (not loopback-only)."""
    if svc.type in ("unix", "unix-dgram", "fifo"):
        return False
    host = svc.name.rsplit(":", 1)[0] if ":" in svc.name else ""
    if host:
        return not _loopback(host)
    interfaces = split_list(cfg.value("inet_interfaces", svc).lower())
    if not interfaces or "all" in interfaces:
        return True
    if interfaces == ["loopback-only"]:
        return False
    return not all(_loopback(i) for i in interfaces)


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "loopback-only", "localhost.localdomain"):
        return True
    try:
        net = nets.parse_network(host)
    except ValueError:
        return False
    return net.is_loopback


def _port(svc: Service) -> str:
    return svc.name.rsplit(":", 1)[-1]


def is_submission(svc: Service) -> bool:
    return _port(svc) in SUBMISSION_PORTS


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


# -- the restriction-list evaluator --------------------------------------------------------


@dataclass
class Outcome:
    decision: str  # "reject" or "permit"
    at: str  # restriction that decided, or "" for the end of the list
    reason: str = ""  # for permits: why the stranger gets it
    maybes: list[str] = field(default_factory=list)  # earlier steps that might permit
    neutered: list[str] = field(default_factory=list)  # rejections turned into warnings
    via_mynetworks: bool = False
    via_relay_domains: bool = False

    @property
    def explicit(self) -> bool:
        return bool(self.at)


@dataclass
class Context:
    cfg: PostfixConfig
    svc: Service | None
    source: Source
    stranger_trusted: bool
    relay_domains_wide: bool
    domain: str | None = None  # None: any outside domain; else the specific destination tried
    classes: dict[str, list[str]] = field(default_factory=dict)
    specific_domains: dict[str, str] = field(default_factory=dict)  # domain -> "file:line" of its OK entry
    unknown: dict[str, str] = field(default_factory=dict)  # restriction -> list name
    _tables: dict[str, tables.Table] = field(default_factory=dict)

    def table(self, spec: str) -> tables.Table:
        if spec not in self._tables:
            self._tables[spec] = tables.load(spec, self.source)
        return self._tables[spec]


def restriction_classes(cfg: PostfixConfig, svc: Service | None) -> dict[str, list[str]]:
    out = {}
    for name in split_list(cfg.value("smtpd_restriction_classes", svc)):
        out[name] = split_list(cfg.value(name, svc))
    return out


def evaluate(tokens: list[str], ctx: Context, depth: int = 0) -> Outcome:
    """How one restriction list treats the stranger relaying to an outside domain."""
    maybes: list[str] = []
    neutered: list[str] = []
    warn_next = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        low = token.lower()
        arg = ""
        if low in TAKES_ARGUMENT:
            arg = tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 2
        else:
            i += 1
        if low == "warn_if_reject":
            warn_next = True
            continue
        shown = f"{token} {arg}".strip()
        effect, reason, tag = _effect(low, token, arg, ctx, depth)
        if effect == "reject" and warn_next:
            neutered.append(shown)
            effect = "continue"
        warn_next = False
        if effect == "reject":
            return Outcome("reject", shown, maybes=maybes, neutered=neutered)
        if effect == "permit":
            return Outcome("permit", shown, reason, maybes, neutered, via_mynetworks=tag == "mynetworks",
                           via_relay_domains=tag == "relay_domains")
        if effect == "maybe":
            maybes.append(reason)
        if effect == "class":
            sub = evaluate(ctx.classes[token], ctx, depth + 1)
            maybes.extend(sub.maybes)
            neutered.extend(sub.neutered)
            if sub.explicit:
                return Outcome(sub.decision, f"{token} ({sub.at})", sub.reason, maybes, neutered, sub.via_mynetworks, sub.via_relay_domains)
    return Outcome("permit", "", "the list ends without a decision, which permits", maybes, neutered)


def _effect(low: str, token: str, arg: str, ctx: Context, depth: int) -> tuple[str, str, str]:
    """(effect, reason, tag): effect is reject / permit / maybe / continue / class."""
    if low in REJECTERS:
        if low in UNAUTH_CHECKS and ctx.relay_domains_wide:
            return "permit", "relay_domains matches every destination", "relay_domains"
        return "reject", "", ""
    if low == "permit":
        return "permit", "'permit' accepts every request that reaches it", ""
    if low == "permit_mynetworks":
        if ctx.stranger_trusted:
            return "permit", "mynetworks admits hosts anywhere on the Internet", "mynetworks"
        return "continue", "", ""
    if low == "permit_auth_destination":
        if ctx.relay_domains_wide:
            return "permit", "relay_domains matches every destination", "relay_domains"
        return "continue", "", ""
    if low == "permit_naked_ip_address":
        return "permit", "permit_naked_ip_address permits any client that says HELO with an IP address", ""
    if low == "permit_mx_backup":
        if not split_list(ctx.cfg.value("permit_mx_backup_networks", ctx.svc)):
            return "maybe", "permit_mx_backup relays for any domain whose DNS lists this host as an MX (permit_mx_backup_networks is empty)", ""
        return "continue", "", ""
    if low == "permit_tls_all_clientcerts":
        return "maybe", "permit_tls_all_clientcerts relays for any client certificate a trusted CA signed", ""
    if low == "check_policy_service":
        return "maybe", f"the policy service {arg or '(missing)'} may answer OK", ""
    if low in ACCESS_KINDS:
        effect, reason = _access(low, arg, ctx)
        return effect, reason, ""
    if low in NEUTRAL:
        return "continue", "", ""
    if token in ctx.classes and depth < 10:
        return "class", "", ""
    if ":" in token:
        return "maybe", f"{token}: a bare lookup table in a restriction list (its OK entries permit)", ""
    ctx.unknown.setdefault(token, "")
    return "reject", "", ""  # smtpd answers "451 4.3.5 Server configuration error"


def _access(low: str, spec: str, ctx: Context) -> tuple[str, str]:
    kind = ACCESS_KINDS[low]
    if kind == "none" or not spec:
        return "continue", ""
    table = ctx.table(spec)
    if not table.readable:
        return "maybe", f"{low} {spec}: {table.reason}; any OK in it would permit"
    permits = table.permitting()
    if not permits:
        return "continue", ""

    def place(e: tables.Entry) -> str:
        return f"{table.file}:{e.line}" if e.line else table.file

    if kind == "chosen":
        e = permits[0]
        return "permit", f"{low} {spec} answers OK for '{e.key}' ({place(e)}), a value the client chooses itself"
    if kind in ("client", "reverse"):
        for e in permits:
            if _client_key_broad(e, reverse=kind == "reverse"):
                return "permit", f"{low} {spec} answers OK for '{e.key}' ({place(e)}), which matches clients anywhere"
        return "continue", ""
    if kind == "recipient":
        for e in permits:
            if _recipient_key_broad(e):
                return "permit", f"{low} {spec} answers OK for '{e.key}' ({place(e)}), which matches destinations anywhere"
            if e.kind == "key":
                domain = e.key.split("@")[-1].lstrip(".").lower()
                if domain:
                    ctx.specific_domains.setdefault(domain, place(e))
                    if ctx.domain and (ctx.domain == domain or ctx.domain.endswith("." + domain)):
                        return "permit", f"{low} {spec} answers OK for '{e.key}' ({place(e)})"
        return "continue", ""
    if kind == "recipient-dns":
        e = permits[0]
        return "maybe", f"{low} {spec} answers OK for '{e.key}' ({place(e)}); any domain can point its DNS there"
    return "continue", ""


def _client_key_broad(e: tables.Entry, reverse: bool) -> bool:
    if e.kind == "static":
        return True
    if e.kind == "regexp":
        rx = e.regex()
        return rx is None or any(rx.search(s) for s in _SAMPLE_CLIENTS)
    net = _key_network(e.key)
    if net is not None:
        return nets.width(net).severity is Severity.OPEN_RELAY
    if reverse:
        return True  # the reverse (PTR) name is not verified: the client's owner picks it
    return e.key.lower() == "unknown" or is_broad_domain(e.key)


def _recipient_key_broad(e: tables.Entry) -> bool:
    if e.kind == "static":
        return True
    if e.kind == "regexp":
        rx = e.regex()
        return rx is None or any(rx.search(s) for s in _SAMPLE_ADDRESSES)
    key = e.key.lower()
    if key.endswith("@") or key == "<>":
        return False
    return is_broad_domain(key.split("@")[-1])


def _key_network(key: str) -> nets.Network | None:
    net = nets.octet_prefix(key)
    if net is not None:
        return net
    try:
        return nets.parse_network(key)
    except ValueError:
        return None


# -- the rules --------------------------------------------------------------------------


def check(cfg: PostfixConfig, source: Source, mta_version: str | None = None) -> list[Finding]:
    findings: list[Finding] = []
    findings += _file_notes(cfg)
    findings += _compatibility(cfg)
    services = cfg.smtpd_services()
    for svc in services:
        findings += _relay_domains(cfg, svc, source)
        findings += _untrusted_routing(cfg, svc)
        findings += _mynetworks(cfg, svc, source)
        findings += _restrictions(cfg, svc, source)
        findings += _tls_auth(cfg, svc)
        findings += _bare_newline(cfg, svc, mta_version)
        findings += _submission(cfg, svc)
    if not services:
        findings += _relay_domains(cfg, None, source)
        findings += _untrusted_routing(cfg, None)
        findings += _mynetworks(cfg, None, source)
    findings += _unknown_parameters(cfg)
    findings += _undefined(cfg)
    return findings


def _downgrade(f: Finding, cfg: PostfixConfig, svc: Service | None) -> Finding:
    if svc is None or f.severity is not Severity.OPEN_RELAY or exposed(cfg, svc):
        return f
    return Finding(Severity.INFO, f.rule, f.file, f.line, f.setting,
                   f.why.rstrip(".") + "; but only local clients can reach this service.", f.fix, f.service)


def _file_notes(cfg: PostfixConfig) -> list[Finding]:
    out = []
    for line, text in cfg.main.ignored:
        out.append(Finding(Severity.INFO, "postfix/ignored-line", cfg.main.file, line, text.strip(),
                           "Postfix ignores this line: a logical line must not start with whitespace.",
                           "Remove the leading whitespace, or join it to the setting it belongs to."))
    if not cfg.master_found:
        out.append(Finding(Severity.INFO, "postfix/no-master-cf", cfg.master_file, None, "master.cf",
                           "master.cf was not found; the audit assumed the stock one (a single smtp service).",
                           "Audit the folder that holds both main.cf and master.cf."))
    return out


def _compatibility(cfg: PostfixConfig) -> list[Finding]:
    if cfg.is_set("compatibility_level"):
        return []
    return [Finding(Severity.INFO, "postfix/compatibility-level", cfg.main.file, None, "compatibility_level = 0 (not set)",
                    "Without compatibility_level Postfix keeps pre-2.10 defaults: relay_domains = $mydestination, "
                    "mynetworks_style = subnet and no smtpd_relay_restrictions.",
                    "Set compatibility_level to the level of your release (3.6 for Postfix 3.6 and later) after reviewing the changes.")]


def _relay_domains(cfg: PostfixConfig, svc: Service | None, source: Source) -> list[Finding]:
    wide, why = relay_domains_wide(cfg, svc, source)
    if not wide:
        return []
    where = cfg.setting("relay_domains", svc)
    f = _finding(Severity.OPEN_RELAY, "postfix/relay-domains-wide", where, _shown(where, cfg, svc),
                 f"relay_domains {why}, so reject_unauth_destination lets anyone relay there.",
                 "List only the domains you are a backup MX or gateway for in relay_domains.", svc)
    return [_downgrade(f, cfg, svc)]


def relay_domains_wide(cfg: PostfixConfig, svc: Service | None, source: Source) -> tuple[bool, str]:
    parent = "relay_domains" in split_list(cfg.value("parent_domain_matches_subdomains", svc))
    for item in split_list(cfg.value("relay_domains", svc)):
        if item.startswith("!"):
            continue
        if ":" in item:
            table = tables.load(item, source)
            for e in table.entries:
                if e.negate:
                    continue
                if e.kind == "static" or (e.kind == "regexp" and (e.regex() is None or any(e.regex().search(d) for d in _SAMPLE_DOMAINS))):  # type: ignore[union-attr]
                    return True, f"includes {item}, which matches every domain"
                if e.kind == "key" and _wide_pattern(e.key, parent):
                    return True, f"includes {e.key!r} ({table.file}:{e.line}), a whole top-level domain"
            continue
        if item.startswith("/"):
            continue
        if _wide_pattern(item, parent):
            return True, f"includes {item!r}, a whole top-level domain"
    return False, ""


def _wide_pattern(item: str, parent_matches: bool) -> bool:
    item = item.strip().lower()
    if item in ("*", ".", ""):
        return True
    if item.startswith("."):
        return is_broad_domain(item)
    return parent_matches and is_broad_domain(item)


def _untrusted_routing(cfg: PostfixConfig, svc: Service | None) -> list[Finding]:
    where = cfg.setting("allow_untrusted_routing", svc)
    if not _yes(cfg.value("allow_untrusted_routing", svc)):
        return []
    relay_domains = split_list(cfg.value("relay_domains", svc))
    severity = Severity.OPEN_RELAY if relay_domains else Severity.WEAKNESS
    f = _finding(severity, "postfix/allow-untrusted-routing", where, _shown(where, cfg, svc),
                 "Strangers may send user%elsewhere@relay.domain or elsewhere!user@relay.domain to your relay_domains, "
                 "and the next hop may forward it anywhere (a multi-stage relay).",
                 "Set allow_untrusted_routing = no (the default).", svc)
    return [_downgrade(f, cfg, svc)]


def _mynetworks(cfg: PostfixConfig, svc: Service | None, source: Source) -> list[Finding]:
    out: list[Finding] = []
    if cfg.is_set("mynetworks", svc):
        where = cfg.setting("mynetworks", svc)
        trusted = trusted_networks(cfg, svc, source)
        for net, written in trusted.networks:
            if any(net.version == x.version and net.subnet_of(x) for x in trusted.excluded):  # type: ignore[arg-type]
                continue
            w = nets.width(net)
            if w.severity is None:
                continue
            why = {
                Severity.OPEN_RELAY: f"{written} is {w.text}: every host in it may relay through this server without authenticating.",
                Severity.WEAKNESS: f"{written} is {w.text}: every host in it may relay without authenticating; fine only if all of them are yours.",
                Severity.INFO: f"{written} is {w.text}: any machine on it may relay, including a compromised one.",
            }[w.severity]
            f = _finding(w.severity, "postfix/mynetworks-wide", where, f"mynetworks contains {written}", why,
                         "Trust only the hosts that submit mail without AUTH (mynetworks = 127.0.0.0/8 [::1]/128 plus "
                         "those hosts); let the others authenticate (permit_sasl_authenticated).", svc)
            out.append(_downgrade(f, cfg, svc))
        for name in trusted.names:
            out.append(_finding(Severity.INFO, "postfix/mynetworks-by-name", where, f"mynetworks contains {name}",
                                f"{name} is trusted by host name, which depends on reverse DNS.",
                                "Use addresses or networks in mynetworks.", svc))
        for item in trusted.unreadable:
            out.append(_finding(Severity.WEAKNESS, "postfix/mynetworks-unreadable", where, f"mynetworks contains {item}",
                                f"{item} could not be read from the audited folder, so the trusted networks are unknown.",
                                "Include the file or table in the audited folder.", svc))
        return out
    where = cfg.setting("mynetworks_style", svc)
    style = cfg.value("mynetworks_style", svc).strip().lower()
    if style == "class":
        out.append(_finding(Severity.WEAKNESS, "postfix/mynetworks-style", where, f"mynetworks_style = {style}",
                            "Postfix trusts the whole class A/B/C network of each interface; on a public address that is up to 16 million other people's hosts.",
                            "Set mynetworks explicitly, or mynetworks_style = host.", svc))
    elif style == "subnet":
        out.append(_finding(Severity.INFO, "postfix/mynetworks-style", where, f"mynetworks_style = {style}" + ("" if cfg.is_set("mynetworks_style", svc) else " (default for this compatibility_level)"),
                            "Postfix trusts every host on the subnets of this machine's interfaces, so any of them may relay.",
                            "Set mynetworks explicitly, or mynetworks_style = host.", svc))
    return out


def _restrictions(cfg: PostfixConfig, svc: Service, source: Source) -> list[Finding]:
    out: list[Finding] = []
    trusted = trusted_networks(cfg, svc, source)
    wide, _ = relay_domains_wide(cfg, svc, source)
    ctx = Context(cfg, svc, source, trusted.admits_stranger, wide, classes=restriction_classes(cfg, svc))
    lists = {name: split_list(cfg.value(name, svc)) for name in RESTRICTION_LISTS}
    results = {name: evaluate(tokens, ctx) for name, tokens in lists.items()}

    for token in ctx.unknown:
        owner = next((n for n, toks in lists.items() if token in toks), "smtpd_recipient_restrictions")
        where = cfg.setting(owner, svc)
        out.append(_finding(Severity.WEAKNESS, "postfix/unknown-restriction", where, _shown(where, cfg, svc),
                            f"'{token}' is not a Postfix restriction or restriction class; smtpd answers every request that reaches it with 451 4.3.5 Server configuration error.",
                            "Correct the name, or define it in smtpd_restriction_classes.", svc))

    has_required = any(_has_required(lists[n], ctx.classes) for n in RELAY_LISTS)
    relay_where = cfg.setting("smtpd_relay_restrictions", svc)
    rcpt_where = cfg.setting("smtpd_recipient_restrictions", svc)
    if not has_required:
        where = rcpt_where if not rcpt_where.is_default or relay_where.is_default and not lists["smtpd_relay_restrictions"] else relay_where
        out.append(_finding(Severity.WEAKNESS, "postfix/relay-restrictions-missing", where, _shown(where, cfg, svc),
                            "Neither smtpd_relay_restrictions nor smtpd_recipient_restrictions contains reject_unauth_destination "
                            "(or defer_unauth_destination, reject, defer, defer_if_permit), so smtpd refuses to start: "
                            "without that guard this service would relay for anyone.",
                            "Add reject_unauth_destination after the permit_* entries, e.g. smtpd_relay_restrictions = "
                            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination.", svc))
        return out

    closing = [n for n in RESTRICTION_LISTS if results[n].decision == "reject" and not results[n].maybes]
    rejecting = [n for n in RESTRICTION_LISTS if results[n].decision == "reject"]
    if not rejecting:
        out.extend(_open_finding(cfg, svc, lists, results, ctx.classes))
    elif not closing:
        reasons = sorted({m for n in rejecting for m in results[n].maybes})
        name = rejecting[0]
        where = cfg.setting(name, svc)
        f = _finding(Severity.WEAKNESS, "postfix/relay-conditional", where, _shown(where, cfg, svc),
                     "Relaying for strangers is refused only if nothing before the refusal says OK: " + "; ".join(reasons) + ".",
                     "Put reject_unauth_destination before these checks, or make sure they cannot answer OK for outside clients.", svc)
        out.append(f)
    else:
        out.extend(_permit_before_reject(cfg, svc, lists, results, closing))
        for name in RELAY_LISTS:
            low = [t.lower() for t in lists[name]]
            if "permit_auth_destination" in low and not _has_required(lists[name], ctx.classes) and results[name].decision == "permit":
                where = cfg.setting(name, svc)
                others = ", ".join(n for n in closing if n != name)
                out.append(_finding(Severity.WEAKNESS, "postfix/permit-auth-destination", where, _shown(where, cfg, svc),
                                    f"permit_auth_destination only permits your own and relay domains and refuses nothing, so {name} "
                                    f"lets strangers through; only {others} keeps them from relaying.",
                                    f"End {name} with reject_unauth_destination.", svc))
        for domain, place in sorted(ctx.specific_domains.items()):
            ctx2 = Context(cfg, svc, source, ctx.stranger_trusted, wide, domain, ctx.classes, _tables=ctx._tables)
            res2 = {name: evaluate(tokens, ctx2) for name, tokens in lists.items()}
            if not any(r.decision == "reject" and not r.maybes for r in res2.values()):
                where = cfg.setting("smtpd_recipient_restrictions", svc)
                out.append(_downgrade(_finding(Severity.WEAKNESS, "postfix/relay-to-domain", where, f"OK for {domain} ({place})",
                                               f"Anyone may relay mail to {domain}: the recipient access table answers OK before any relay check.",
                                               f"If you are {domain}'s backup MX or gateway, list it in relay_domains instead; otherwise remove the entry.", svc), cfg, svc))
    for name in RESTRICTION_LISTS:
        for n in results[name].neutered:
            where = cfg.setting(name, svc)
            out.append(_finding(Severity.WEAKNESS, "postfix/warn-if-reject", where, _shown(where, cfg, svc),
                                f"warn_if_reject turns '{n}' into a log line: it never refuses anything.",
                                "Remove warn_if_reject once the test period is over.", svc))
    return out


def _has_required(tokens: list[str], classes: dict[str, list[str]], depth: int = 0) -> bool:
    for t in tokens:
        if t.lower() in REQUIRED:
            return True
        if t in classes and depth < 10 and _has_required(classes[t], classes, depth + 1):
            return True
    return False


def _open_finding(cfg: PostfixConfig, svc: Service, lists: dict[str, list[str]], results: dict[str, Outcome], classes: dict[str, list[str]]) -> list[Finding]:
    causes = [(n, results[n]) for n in RELAY_LISTS if _has_required(lists[n], classes)]
    if causes and all(r.explicit and (r.via_mynetworks or r.via_relay_domains) for _, r in causes):
        return []  # mynetworks or relay_domains opens it; those rules report it
    name, res = next(((n, r) for n, r in causes if not (r.via_mynetworks or r.via_relay_domains)), causes[0] if causes else ("smtpd_recipient_restrictions", results["smtpd_recipient_restrictions"]))
    where = cfg.setting(name, svc)
    on = f" on the {svc.name} service" if is_submission(svc) else ""
    if res.neutered:
        why = f"warn_if_reject turns {', '.join(res.neutered)} into a warning, so nothing refuses mail for other domains{on}: anyone can relay."
    elif res.explicit:
        why = f"Before the relay check{on}, {res.reason}; so anyone can relay."
    else:
        why = f"No restriction list refuses mail for other domains{on}, so anyone can relay."
    fix = ("Make the relay list end in a refusal: smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
           "reject_unauth_destination, with every other permit after it.")
    rule = "postfix/relay-open"
    if "permit_auth_destination" in (t.lower() for t in lists[name]):
        rule = "postfix/permit-auth-destination"
        why = ("permit_auth_destination only permits mail for your own and relay domains; it refuses nothing, "
               f"and the rest of the list lets everything else through: {why[0].lower()}{why[1:]}")
        fix = "Use reject_unauth_destination (which refuses other destinations) where permit_auth_destination stands, or after it."
    if is_submission(svc):
        fix = f"On {svc.name} require authentication: -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject."
    return [_downgrade(_finding(Severity.OPEN_RELAY, rule, where, _shown(where, cfg, svc), why, fix, svc), cfg, svc)]


def _permit_before_reject(cfg: PostfixConfig, svc: Service, lists: dict[str, list[str]], results: dict[str, Outcome], closing: list[str]) -> list[Finding]:
    out = []
    for name in RELAY_LISTS:
        res = results[name]
        if res.decision != "permit" or not res.explicit or res.via_mynetworks or res.via_relay_domains:
            continue
        if not any(t.lower() in UNAUTH_CHECKS for t in lists[name]):
            continue
        where = cfg.setting(name, svc)
        others = ", ".join(n for n in closing if n != name)
        out.append(_downgrade(_finding(Severity.WEAKNESS, "postfix/permit-before-reject", where, _shown(where, cfg, svc),
                                       f"'{res.at}' permits before reject_unauth_destination ({res.reason}); only {others} keeps strangers from relaying.",
                                       "Move reject_unauth_destination before that entry.", svc), cfg, svc))
    return out


def _tls_auth(cfg: PostfixConfig, svc: Service) -> list[Finding]:
    if not _yes(cfg.value("smtpd_sasl_auth_enable", svc)):
        return []
    if _yes(cfg.value("smtpd_tls_auth_only", svc)) or _yes(cfg.value("smtpd_tls_wrappermode", svc)):
        return []
    if cfg.value("smtpd_tls_security_level", svc).strip().lower() == "encrypt" or _yes(cfg.value("smtpd_enforce_tls", svc)):
        return []
    if not exposed(cfg, svc):
        return []
    where = cfg.setting("smtpd_tls_auth_only", svc)
    return [_finding(Severity.WEAKNESS, "postfix/tls-auth-only", where, f"smtpd_tls_auth_only = {cfg.value('smtpd_tls_auth_only', svc) or 'no'} with AUTH on",
                     "AUTH is offered before STARTTLS, so passwords can cross the network in clear text and be reused to relay.",
                     "Set smtpd_tls_auth_only = yes (or -o smtpd_tls_security_level=encrypt on the submission service).", svc)]


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = [int(p) for p in text.split(".") if p.isdigit()]
    return tuple(parts) or None


def bare_newline_support(version: tuple[int, ...]) -> tuple[bool, bool]:
    """(has smtpd_forbid_bare_newline, on by default) for a Postfix version."""
    v = (version + (0, 0, 0))[:3]
    if v >= (3, 9, 0):
        return True, True
    for since in ((3, 8, 5), (3, 7, 10), (3, 6, 14), (3, 5, 24)):
        if v[:2] == since[:2] and v >= since:
            return True, False
    return False, False


def _bare_newline(cfg: PostfixConfig, svc: Service, mta_version: str | None) -> list[Finding]:
    if not exposed(cfg, svc):
        return []
    where = cfg.setting("smtpd_forbid_bare_newline", svc)
    value = cfg.value("smtpd_forbid_bare_newline", svc).strip().lower()
    fix = "Set smtpd_forbid_bare_newline = normalize (the Postfix 3.9 default)."
    why_smuggle = "a bare LF in DATA lets a sender smuggle a second message past this server (SMTP smuggling, CVE-2023-51764)"
    if not where.is_default:
        if value in ("no", "false"):
            return [_finding(Severity.WEAKNESS, "postfix/bare-newline", where, _shown(where, cfg, svc), f"Accepting {why_smuggle}.", fix, svc)]
        return []
    version = _version(mta_version)
    if version is None:
        return [_finding(Severity.INFO, "postfix/bare-newline", where, "smtpd_forbid_bare_newline (not set)",
                         f"Unless this Postfix is 3.9 or later, {why_smuggle}; 3.5.24, 3.6.14, 3.7.10 and 3.8.5 have the setting but leave it off.",
                         fix + " Give --mta-version to check against your release.", svc)]
    has, default_on = bare_newline_support(version)
    if default_on:
        return []
    if has:
        return [_finding(Severity.WEAKNESS, "postfix/bare-newline", where, f"smtpd_forbid_bare_newline = no (default in {mta_version})",
                         f"This release has the protection but leaves it off: {why_smuggle}.", fix, svc)]
    return [_finding(Severity.WEAKNESS, "postfix/bare-newline", where, f"Postfix {mta_version}",
                     f"This release predates smtpd_forbid_bare_newline: {why_smuggle}.",
                     "Upgrade to 3.5.24, 3.6.14, 3.7.10, 3.8.5 or later; meanwhile set smtpd_data_restrictions = reject_unauth_pipelining.", svc)]


def _submission(cfg: PostfixConfig, svc: Service) -> list[Finding]:
    if not is_submission(svc) or _yes(cfg.value("smtpd_sasl_auth_enable", svc)):
        return []
    where = cfg.setting("smtpd_sasl_auth_enable", svc)
    return [Finding(Severity.WEAKNESS, "postfix/submission-no-auth", svc.file, svc.line, f"{svc.name} service without smtpd_sasl_auth_enable=yes",
                    "The submission service offers no AUTH, so mail users cannot authenticate; they end up in mynetworks or relaying is refused.",
                    f"Add -o smtpd_sasl_auth_enable=yes and -o smtpd_relay_restrictions=permit_sasl_authenticated,reject to {svc.name} (was {where.value or 'no'}).",
                    svc.key)]


def _unknown_parameters(cfg: PostfixConfig) -> list[Finding]:
    used = cfg.referenced_names()
    classes = set(split_list(cfg.value("smtpd_restriction_classes")))
    service_names = {s.name.rsplit(":", 1)[-1] for s in cfg.services}
    out = []

    def unknown(name: str) -> bool:
        if cfg.known(name) or name in used or name in classes:
            return False
        return not any(name.startswith(s + "_") for s in service_names)

    for name, s in cfg.main.settings.items():
        if unknown(name):
            out.append(Finding(Severity.INFO, "postfix/unknown-parameter", s.file, s.line, _shown(s),
                               f"'{name}' is not a Postfix parameter and nothing refers to it, so it has no effect (postconf reports it as unused).",
                               "Check the spelling, or remove it."))
    for svc in cfg.services:
        for name, s in svc.overrides.items():
            if unknown(name) and name not in cfg.main.settings:
                out.append(Finding(Severity.INFO, "postfix/unknown-parameter", s.file, s.line, f"-o {name}={s.value}",
                                   f"'{name}' is not a Postfix parameter, so this override has no effect.",
                                   "Check the spelling, or remove it.", svc.key))
    return out


def _undefined(cfg: PostfixConfig) -> list[Finding]:
    out = []
    for name, where in sorted(cfg.undefined.items()):
        out.append(Finding(Severity.INFO, "postfix/undefined-parameter", where.file, where.line, f"${name} in {where.name}",
                           f"${name} is used but defined nowhere, so it expands to nothing.",
                           f"Define {name} in main.cf, or remove the reference."))
    return out
