"""sendmail: read a .mc (m4 source) or .cf (compiled) configuration, plus the access and
relay-domains files beside it, and find the relay holes (cf/README, "Anti-Spam Configuration
Control").

sendmail 8.9 and later refuse to relay by default: the check_rcpt ruleset ends in
`550 Relaying denied` unless the recipient's domain is ours ($=w) or in class R
(relay-domains), the client is in class R or has a RELAY entry in the access map, or it
authenticated. The FEATUREs below loosen that rule; broad RELAY entries widen it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import nets
from .model import AuditError, Finding, Severity
from .source import Source, locate

SENDMAIL_HOMES = ("/etc/mail", "/usr/local/etc/mail", "/etc/sendmail")

# FEATURE(name): (severity, why, fix). relay_mail_from is handled with the access map.
RELAY_FEATURES: dict[str, tuple[Severity, str, str]] = {
    "promiscuous_relay": (Severity.OPEN_RELAY,
                          "sendmail relays mail from any client to any destination (its own build prints: 'configures your system as open relay').",
                          "Remove FEATURE(`promiscuous_relay'); list the hosts that may relay in the access map (Connect:host RELAY)."),
    "relay_local_from": (Severity.OPEN_RELAY,
                         "Any client that writes one of your domains in MAIL FROM may relay anywhere, and spammers forge exactly that.",
                         "Remove FEATURE(`relay_local_from'); let your users authenticate (SMTP AUTH) or list their hosts in the access map."),
    "loose_relay_check": (Severity.OPEN_RELAY,
                          "user%elsewhere@yourdomain is accepted as local mail and then forwarded to elsewhere: the classic percent-hack relay.",
                          "Remove FEATURE(`loose_relay_check')."),
    "relay_entire_domain": (Severity.WEAKNESS,
                            "Every host whose name is in your domain ($=m) may relay; if $m is ever a top-level domain that is the whole Internet.",
                            "List the hosts that may relay in the access map (Connect:host RELAY) instead."),
    "relay_based_on_MX": (Severity.WEAKNESS,
                          "sendmail relays for any domain whose MX points at this host, and anyone can point a domain's MX here.",
                          "Remove FEATURE(`relay_based_on_MX'); list the domains you are backup MX for in relay-domains."),
    "accept_unresolvable_domains": (Severity.WEAKNESS,
                                    "MAIL FROM domains that do not exist in DNS are accepted: forged senders and their bounces get through.",
                                    "Remove FEATURE(`accept_unresolvable_domains')."),
    "accept_unqualified_senders": (Severity.INFO,
                                   "MAIL FROM addresses without a domain are accepted from the network.",
                                   "Remove FEATURE(`accept_unqualified_senders') unless a local client needs it."),
}
KNOWN_FEATURES = set(RELAY_FEATURES) | {
    "access_db", "allmasquerade", "always_add_domain", "authinfo", "badmx", "bestmx_is_local", "bitdomain",
    "blacklist_recipients", "blocklist_recipients", "block_bad_helo", "check_cert_altnames", "compat_check",
    "conncontrol", "delay_checks", "dnsbl", "domaintable", "enhdnsbl", "generics_entire_domain", "genericstable",
    "greet_pause", "ldap_routing", "limited_masquerade", "local_lmtp", "local_no_masquerade", "local_procmail",
    "lookupdotdomain", "mailertable", "masquerade_entire_domain", "masquerade_envelope", "msp", "mtamark",
    "no_default_msa", "nocanonify", "nopercenthack", "notsticky", "nouucp", "nullclient", "preserve_local_plus_detail",
    "preserve_luser_host", "prefixmod", "queuegroup", "ratecontrol", "redirect", "relay_hosts_only", "relay_mail_from",
    "require_rdns", "smrsh", "stickyhost", "sts", "tls_failures", "tls_session_features", "use_client_ptr",
    "use_ct_file", "use_cw_file", "uucpdomain", "virtuser_entire_domain", "virtusertable", "delay_checks",
    "relay_entire_domain", "local_smrsh", "require_rdns",
}
_ACCESS_TAGS = {"connect", "from", "to", "spam", "greetpause", "clientrate", "clientconn", "srv_features",
                "try_tls", "tls_clt", "tls_srv", "tls_rcpt", "auth", "mail", "rcpt", "cert", "ehlo", "helo"}
_CF_COMMANDS = set("VDCFOHMPRSTKELQXG")
_ID_LINE = re.compile(r"#####\s+\$Id:\s+([A-Za-z0-9_]+)\.m4")


@dataclass
class Place:
    file: str
    line: int | None


@dataclass
class SendmailConfig:
    file: str
    kind: str  # "mc" or "cf"
    features: dict[str, tuple[Place, list[str]]] = field(default_factory=dict)  # name -> (where, args)
    unknown_features: dict[str, Place] = field(default_factory=dict)
    defines: dict[str, tuple[Place, str]] = field(default_factory=dict)  # confX / cf option -> value
    relay_domains: list[tuple[str, Place]] = field(default_factory=list)  # class R entries
    relay_domain_files: list[tuple[str, Place]] = field(default_factory=list)
    access_map: tuple[str, Place] | None = None  # path of the access map source
    daemon_addrs: list[tuple[str, Place]] = field(default_factory=list)
    relay_denied: Place | None = None  # .cf: the "Relaying denied" rule
    has_check_rcpt: bool = True  # .cf: a check_rcpt ruleset exists (sendmail 8.9+)


# -- .mc (m4) -------------------------------------------------------------------------------


def _m4_calls(text: str, file: str) -> list[tuple[str, list[str], int]]:
    """Macro calls NAME(args) with m4 quoting (`...'), `dnl` and `#` comments honoured."""
    calls: list[tuple[str, list[str], int]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == "`":
            i, line = _skip_quote(text, i, line, file)
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word == "dnl":
                k = text.find("\n", j)
                i = n if k < 0 else k + 1
                line += 0 if k < 0 else 1
            elif j < n and text[j] == "(":
                args, i, end_line = _m4_args(text, j, line, file, word)
                calls.append((word, args, line))
                line = end_line
            else:
                i = j
        else:
            i += 1
    return calls


def _skip_quote(text: str, i: int, line: int, file: str) -> tuple[int, int]:
    depth, start_line = 0, line
    while i < len(text):
        c = text[i]
        if c == "`":
            depth += 1
        elif c == "'":
            depth -= 1
            if depth == 0:
                return i + 1, line
        elif c == "\n":
            line += 1
        i += 1
    raise AuditError(file, start_line, "unterminated m4 quote: ` without a closing '")


def _m4_args(text: str, i: int, line: int, file: str, name: str) -> tuple[list[str], int, int]:
    start_line = line
    args: list[str] = []
    buf: list[str] = []
    depth = 0
    i += 1  # past "("
    while i < len(text):
        c = text[i]
        if c == "`":
            j, line = _skip_quote(text, i, line, file)
            buf.append(text[i + 1:j - 1])
            i = j
            continue
        if c == "\n":
            line += 1
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                args.append("".join(buf).strip())
                return args, i + 1, line
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(buf).strip())
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    raise AuditError(file, start_line, f"unterminated {name}(: missing ')'")


def read_mc(text: str, file: str) -> SendmailConfig:
    cfg = SendmailConfig(file, "mc")
    has_access_db = False
    for name, args, line in _m4_calls(text, file):
        place = Place(file, line)
        if name == "FEATURE":
            if not args or not args[0]:
                raise AuditError(file, line, "FEATURE() without a feature name")
            feature = args[0]
            cfg.features[feature] = (place, args[1:])
            if feature not in KNOWN_FEATURES:
                cfg.unknown_features[feature] = place
            if feature == "access_db":
                has_access_db = True
                spec = args[1] if len(args) > 1 and args[1] else "hash /etc/mail/access"
                cfg.access_map = (_map_path(spec), place)
        elif name == "define" and args:
            cfg.defines[args[0]] = (place, args[1] if len(args) > 1 else "")
        elif name == "RELAY_DOMAIN":
            for arg in args:
                for item in arg.split():
                    cfg.relay_domains.append((item, place))
        elif name == "RELAY_DOMAIN_FILE" and args:
            cfg.relay_domain_files.append((args[-1].split()[-1] if args[-1].split() else "", place))
        elif name == "DAEMON_OPTIONS" and args:
            cfg.daemon_addrs.append((_daemon_addr(",".join(args)), place))
        elif name == "TRUST_AUTH_MECH" and args:
            cfg.defines.setdefault("confAUTH_MECHANISMS", (place, args[0]))
    crfile = cfg.defines.get("confCR_FILE")
    cfg.relay_domain_files.append((crfile[1].split()[-1] if crfile and crfile[1].split() else "/etc/mail/relay-domains",
                                   crfile[0] if crfile else Place(file, None)))
    if not has_access_db:
        cfg.access_map = None
    return cfg


def _map_path(spec: str) -> str:
    words = spec.split()
    path = words[-1] if words else "/etc/mail/access"
    return path[:-3] if path.endswith(".db") else path


def _daemon_addr(options: str) -> str:
    for part in options.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() in ("addr", "a"):
            return value.strip()
    return ""


# -- .cf (compiled) -------------------------------------------------------------------------


def read_cf(text: str, file: str) -> SendmailConfig:
    cfg = SendmailConfig(file, "cf")
    ruleset = ""
    rules: dict[str, list[tuple[int, str]]] = {}
    have_rulesets: set[str] = set()
    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        m = _ID_LINE.match(raw)
        if m:
            name = m.group(1)
            cfg.features.setdefault(name, (Place(file, number), []))
            continue
        c = raw[0]
        if c == "#" or c in " \t":
            continue
        if c not in _CF_COMMANDS:
            raise AuditError(file, number, f"unknown configuration line {raw[:40]!r} (a .cf line starts with one of {''.join(sorted(_CF_COMMANDS))})")
        body = raw[1:]
        if c == "S":
            ruleset = body.split("=")[0].strip()
            have_rulesets.add(ruleset)
        elif c == "R":
            rules.setdefault(ruleset, []).append((number, body))
        elif c in "CF":
            cls, rest = _class_name(body)
            if cls == "R":
                if c == "C":
                    for item in rest.split():
                        cfg.relay_domains.append((item, Place(file, number)))
                else:
                    path = rest.split()[-1] if rest.split() else ""
                    if path and not path.startswith("|"):
                        cfg.relay_domain_files.append((path, Place(file, number)))
        elif c == "K":
            words = body.split()
            if words and words[0] == "access":
                cfg.access_map = (_map_path(" ".join(words[1:])), Place(file, number))
        elif c == "O":
            key, _, value = body.strip().partition("=")
            key = key.strip()
            cfg.defines[key] = (Place(file, number), value.strip())
            if key == "DaemonPortOptions":
                cfg.daemon_addrs.append((_daemon_addr(value), Place(file, number)))
    cfg.has_check_rcpt = "check_rcpt" in have_rulesets
    for name in ("Basic_check_rcpt", "check_rcpt"):
        for number, body in rules.get(name, []):
            if "$#error" in body and ("5.7.1" in body or "relay" in body.lower()):
                cfg.relay_denied = Place(file, number)
                break
        if cfg.relay_denied:
            break
    # FEATUREs leave their rules behind even when the header comments were stripped.
    signatures = {
        "relay_entire_domain": ("Rcpt_ok", r"\$=m\s*>\s+\$@\s*RELAY"),
        "relay_based_on_MX": ("Rcpt_ok", r"\$\(\s*mxserved"),
        "relay_local_from": ("Relay_ok", r"<\?>\s*\$\+\s*<\s*@\s*\$=w\s*>\s+\$@\s*RELAY"),
        "relay_mail_from": ("Relay_ok", r"<!\s*From>"),
        "loose_relay_check": ("Rcpt_ok", r"^\$\*\s+\$:\s*\$>\s*CanonAddr"),
    }
    for feature, (rs, pattern) in signatures.items():
        if feature in cfg.features:
            continue
        for number, body in rules.get(rs, []):
            if re.search(pattern, body):
                cfg.features[feature] = (Place(file, number), [])
                break
    for name in list(cfg.features):
        if name not in KNOWN_FEATURES:
            del cfg.features[name]  # mailer, ostype and other m4 files
    return cfg


def _class_name(body: str) -> tuple[str, str]:
    if body.startswith("{"):
        close = body.find("}")
        return (body[1:close], body[close + 1:]) if close > 0 else ("", body)
    return (body[:1], body[1:])


# -- access and relay-domains files ---------------------------------------------------------


@dataclass(frozen=True)
class AccessEntry:
    tag: str  # "" for untagged
    key: str
    value: str
    line: int


def parse_access(text: str, file: str) -> list[AccessEntry]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise AuditError(file, number, f"no value for key {parts[0]!r} (expected: key whitespace value)")
        key = parts[0]
        tag, sep, rest = key.partition(":")
        if sep and tag.lower() in _ACCESS_TAGS:
            out.append(AccessEntry(tag.lower(), rest, parts[1].strip(), number))
        else:
            out.append(AccessEntry("", key, parts[1].strip(), number))
    return out


def _address_network(key: str) -> nets.Network | None:
    if key.lower().startswith("ipv6:"):
        groups = [g for g in key[5:].split(":") if g]
        try:
            if "::" in key[5:]:
                return nets.parse_network(key[5:])
            full = ":".join(groups + ["0"] * (8 - len(groups)))
            return nets.parse_network(f"{full}/{16 * len(groups)}")
        except ValueError:
            return None
    return nets.octet_prefix(key)


def _is_tld(name: str) -> bool:
    name = name.strip().strip(".").lower()
    return bool(name) and "." not in name and not name.isdigit() and name != "localhost"


# -- rules -----------------------------------------------------------------------------------


def check(cfg: SendmailConfig, source: Source) -> list[Finding]:
    out: list[Finding] = []
    local_only = bool(cfg.daemon_addrs) and all(_loopback(a) for a, _ in cfg.daemon_addrs)

    def add(severity: Severity, rule: str, place: Place, setting: str, why: str, fix: str) -> None:
        if local_only and severity is Severity.OPEN_RELAY:
            severity, why = Severity.INFO, why.rstrip(".") + "; but sendmail listens on loopback only."
        out.append(Finding(severity, rule, place.file, place.line, setting, why, fix))

    if cfg.kind == "cf":
        if not cfg.has_check_rcpt:
            add(Severity.OPEN_RELAY, "sendmail/no-relay-check", Place(cfg.file, None), "no check_rcpt ruleset",
                "This sendmail.cf predates sendmail 8.9's relay control: it relays for anyone.",
                "Regenerate sendmail.cf from a current .mc with sendmail 8.9 or later.")
        elif cfg.relay_denied is None and "promiscuous_relay" not in cfg.features:
            add(Severity.OPEN_RELAY, "sendmail/no-relay-check", Place(cfg.file, None), "check_rcpt without 'Relaying denied'",
                "check_rcpt never refuses a recipient for relaying (the rule built from confRELAY_MSG is missing), as with FEATURE(`promiscuous_relay').",
                "Regenerate sendmail.cf without FEATURE(`promiscuous_relay').")

    access, apath = _load_access(cfg, source, out)
    from_relay = [e for e in access if e.tag == "from" and e.value.split()[0].upper() == "RELAY"] if access else []

    for feature, (place, _) in cfg.features.items():
        if feature in RELAY_FEATURES:
            severity, why, fix = RELAY_FEATURES[feature]
            add(severity, f"sendmail/{feature}", place, f"FEATURE(`{feature}')", why, fix)
    if "relay_mail_from" in cfg.features:
        place = cfg.features["relay_mail_from"][0]
        if from_relay:
            add(Severity.OPEN_RELAY, "sendmail/relay_mail_from", place, "FEATURE(`relay_mail_from')",
                f"Any client that writes a sender matching a From:... RELAY entry ({len(from_relay)} in the access map) relays anywhere, and senders are forged at will.",
                "Remove FEATURE(`relay_mail_from'); use SMTP AUTH for roaming users.")
        else:
            add(Severity.WEAKNESS, "sendmail/relay_mail_from", place, "FEATURE(`relay_mail_from')",
                "A From:... RELAY entry in the access map would let anyone forging that sender relay.",
                "Remove FEATURE(`relay_mail_from'); use SMTP AUTH for roaming users.")
    for name, place in cfg.unknown_features.items():
        add(Severity.INFO, "sendmail/unknown-feature", place, f"FEATURE(`{name}')",
            f"'{name}' is not a FEATURE relayguard knows; m4 stops with an error if sendmail does not know it either.",
            "Check the spelling against cf/README.")

    if access:
        for e in access:
            if e.value.split()[0].upper() != "RELAY":
                continue
            place = Place(apath, e.line)
            shown = f"{e.tag.capitalize() + ':' if e.tag else ''}{e.key} {e.value}"
            if e.tag == "from":
                if "relay_mail_from" not in cfg.features:
                    add(Severity.INFO, "sendmail/access-relay", place, shown,
                        "From: RELAY entries do nothing without FEATURE(`relay_mail_from').", "Remove the entry.")
                continue
            if e.tag in ("", "connect"):
                net = _address_network(e.key)
                if net is not None:
                    w = nets.width(net)
                    if w.severity is not None:
                        add(w.severity, "sendmail/access-relay", place, shown,
                            f"Every client in {e.key} ({w.text}) may relay through this server.",
                            "List only your own hosts or networks with RELAY; let others authenticate.")
                    continue
                if _is_tld(e.key):
                    add(Severity.OPEN_RELAY, "sendmail/access-relay", place, shown,
                        f"'{e.key}' is a whole top-level domain: every client whose host name ends in .{e.key} may relay"
                        + (", and mail to any .{0} domain is relayed.".format(e.key) if not e.tag else "."),
                        "Use full host or domain names with RELAY.")
                    continue
            if e.tag == "to" and _is_tld(e.key.split("@")[-1]):
                add(Severity.OPEN_RELAY, "sendmail/access-relay", place, shown,
                    f"Mail to any .{e.key.split('@')[-1]} domain is relayed for anyone.",
                    "List only the domains you relay for (backup MX, gateway) with To:domain RELAY.")
    elif cfg.access_map is None and source.exists(source.root / "access"):
        add(Severity.INFO, "sendmail/access-unused", Place(str(source.root / "access"), None), "access file without FEATURE(`access_db')",
            "An access file exists but FEATURE(`access_db') is not enabled, so sendmail ignores its entries.",
            "Add FEATURE(`access_db') if the entries are meant to apply.")

    entries = list(cfg.relay_domains)
    for ref, place in cfg.relay_domain_files:
        path = locate(source, ref, SENDMAIL_HOMES) if ref else None
        text = source.read(path) if path else None
        if text is None:
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            word = raw.split("#", 1)[0].strip()
            if word:
                entries.append((word.split()[0], Place(str(path), number)))
    for item, place in entries:
        net = _address_network(item)
        shown = f"relay-domains: {item}"
        if net is not None:
            w = nets.width(net)
            if w.severity is not None:
                add(w.severity, "sendmail/relay-domains-wide", place, shown,
                    f"Class R holds {item} ({w.text}): every client there may relay.",
                    "List only your own hosts and the domains you relay for in relay-domains.")
        elif _is_tld(item):
            add(Severity.OPEN_RELAY, "sendmail/relay-domains-wide", place, shown,
                f"Class R holds the top-level domain '{item}': mail to any .{item} domain, and from any host named *.{item}, is relayed.",
                "List only your own hosts and the domains you relay for in relay-domains.")

    mechs = cfg.defines.get("confAUTH_MECHANISMS") or cfg.defines.get("AuthMechanisms")
    if mechs and re.search(r"\b(PLAIN|LOGIN)\b", mechs[1], re.I):
        opts = cfg.defines.get("confAUTH_OPTIONS") or cfg.defines.get("AuthOptions")
        if not opts or "p" not in re.sub(r"[^A-Za-z]", " ", opts[1]).split():
            place = opts[0] if opts else mechs[0]
            add(Severity.WEAKNESS, "sendmail/auth-plaintext", place, f"AUTH mechanisms {mechs[1].strip()} without AuthOptions p",
                "PLAIN/LOGIN passwords are accepted without TLS, so they can be sniffed and reused to relay.",
                "define(`confAUTH_OPTIONS', `A p') so plain-text mechanisms are offered only after STARTTLS.")
    return out


def _load_access(cfg: SendmailConfig, source: Source, out: list[Finding]) -> tuple[list[AccessEntry], str]:
    if cfg.access_map is None:
        return [], ""
    ref, place = cfg.access_map
    path = locate(source, ref, SENDMAIL_HOMES)
    text = source.read(path) if path else None
    if text is None:
        out.append(Finding(Severity.INFO, "sendmail/access-missing", place.file, place.line, f"access map {ref}",
                           f"The access map source {ref} is not in the audited folder, so its RELAY entries were not checked.",
                           "Audit a folder that holds the access file (the text source of access.db)."))
        return [], ""
    return parse_access(text, str(path)), str(path)


def _loopback(addr: str) -> bool:
    addr = addr.strip().strip("[]")
    if addr.lower() in ("localhost",):
        return True
    try:
        return nets.parse_network(addr).is_loopback
    except ValueError:
        return False


def read(text: str, file: str, suffix: str) -> SendmailConfig:
    """A .cf (compiled, `V10/Berkeley`) or .mc (m4 source) file, told apart by suffix or content."""
    is_cf = suffix == ".cf" or (suffix != ".mc" and re.search(r"^V\d+", text, re.M) is not None)
    return read_cf(text, file) if is_cf else read_mc(text, file)
