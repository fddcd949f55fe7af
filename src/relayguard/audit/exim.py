"""Exim: read the runtime configuration (main options, named lists, ACLs) and replay the RCPT
ACL for a stranger relaying to an outside domain (Exim spec, "Access control lists").

The audit plays the same client as for Postfix: a host on the Internet, not authenticated,
free to choose its HELO, sender and local part, asking for a recipient in a domain that is
neither in +local_domains nor in +relay_to_domains. Each ACL statement's conditions are
judged for that client as true, false, "the client's choice" or unknown; the first
statement that decides gives the verdict, and an ACL that runs off its end denies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from . import nets
from .model import AuditError, Finding, Severity
from .source import Source, locate

EXIM_HOMES = ("/etc/exim4", "/etc/exim", "/usr/exim", "/usr/local/etc/exim")
VERBS = ("accept", "defer", "deny", "discard", "drop", "require", "warn")
SECTIONS = ("acl", "authenticators", "retry", "rewrite", "routers", "transports", "local_scan")
LIST_KINDS = ("domainlist", "hostlist", "addresslist", "localpartlist")
MODIFIERS = {"message", "log_message", "logwrite", "control", "set", "delay", "add_header", "remove_header",
             "continue", "queue", "udpsend", "log_reject_target", "endpass", "debug", "seen"}
CONDITIONS = {"acl", "authenticated", "bmi_optin", "condition", "dcc", "decode", "demime", "dkim_signers", "dkim_status",
              "dmarc_status", "dnslists", "domains", "encrypted", "hosts", "local_parts", "malware", "mime_regex",
              "ratelimit", "recipients", "regex", "sender_domains", "senders", "spam", "spf", "spf_guess", "verify",
              "atrn_domains", "arc"}
MAIN_OPTIONS = set("""
accept_8bitmime acl_not_smtp acl_not_smtp_mime acl_not_smtp_start acl_smtp_atrn acl_smtp_auth acl_smtp_connect
acl_smtp_data acl_smtp_data_prdr acl_smtp_dkim acl_smtp_etrn acl_smtp_expn acl_smtp_helo acl_smtp_mail
acl_smtp_mailauth acl_smtp_mime acl_smtp_notquit acl_smtp_predata acl_smtp_quit acl_smtp_rcpt acl_smtp_starttls
acl_smtp_vrfy acl_smtp_wellknown add_environment admin_groups allow_domain_literals allow_mx_to_ip
allow_utf8_domains auth_advertise_hosts auto_thaw av_scanner bi_command bounce_message_file bounce_message_text
bounce_return_body bounce_return_linesize_limit bounce_return_message bounce_return_size_limit
bounce_sender_authentication callout_domain_negative_expire callout_domain_positive_expire
callout_negative_expire callout_positive_expire callout_random_local_part check_log_inodes check_log_space
check_rfc2047_length check_spool_inodes check_spool_space chunking_advertise_hosts commandline_checks_require_admin
daemon_smtp_port daemon_smtp_ports daemon_startup_retries daemon_startup_sleep delay_warning
delay_warning_condition deliver_drop_privilege deliver_queue_load_max delivery_date_remove disable_fsync
disable_ipv6 dkim_verify_hashes dkim_verify_keytypes dkim_verify_min_keysizes dkim_verify_minimal
dkim_verify_signers dmarc_forensic_sender dmarc_history_file dmarc_tld_file dns_again_means_nonexist
dns_check_names_pattern dns_cname_loops dns_csa_search_limit dns_csa_use_reverse dns_dnssec_ok dns_ipv4_lookup
dns_retrans dns_retry dns_trust_aa dns_use_edns0 drop_cr dsn_advertise_hosts dsn_from envelope_to_remove
errors_copy errors_reply_to event_action exim_group exim_path exim_user exim_version extra_local_interfaces
extract_addresses_remove_arguments finduser_retries freeze_tell gecos_name gecos_pattern gnutls_allow_auto_pkcs11
gnutls_compat_mode header_line_maxsize header_maxsize headers_charset helo_accept_junk_hosts helo_allow_chars
helo_lookup_domains helo_try_verify_hosts helo_verify_hosts hold_domains host_lookup host_lookup_order
host_reject_connection hosts_connection_nolog hosts_require_alpn hosts_require_helo hosts_proxy
hosts_treat_as_local ibase_servers ignore_bounce_errors_after ignore_fromline_hosts ignore_fromline_local
keep_environment keep_malformed ldap_ca_cert_dir ldap_ca_cert_file ldap_cert_file ldap_cert_key
ldap_cipher_suite ldap_default_servers ldap_require_cert ldap_start_tls ldap_version limits_advertise_hosts
local_from_check local_from_prefix local_from_suffix local_interfaces local_scan_timeout local_sender_retain
localhost_number log_file_path log_ports log_selector log_timezone lookup_open_max max_username_length
message_body_newlines message_body_visible message_id_header_domain message_id_header_text message_linelength_limit
message_logs message_size_limit mua_wrapper mysql_servers never_users notifier_socket openssl_options
oracle_servers panic_coredump percent_hack_domains perl_at_start perl_startup perl_taintmode pgsql_servers
pid_file_path pipelining_advertise_hosts pipelining_connect_advertise_hosts prdr_enable preserve_message_logs
primary_hostname print_topbitchars process_log_path prod_requires_admin proxy_protocol_timeout qualify_domain
qualify_recipient queue_domains queue_fast_ramp queue_list_requires_admin queue_only queue_only_file
queue_only_load queue_only_load_latch queue_only_override queue_run_in_order queue_run_max queue_smtp_domains
receive_timeout received_header_text received_headers_max recipient_unqualified_hosts recipients_max
recipients_max_reject redis_servers remote_max_parallel remote_sort_domains retry_data_expire
retry_interval_max return_path_remove return_size_limit rfc1413_hosts rfc1413_query_timeout
sender_unqualified_hosts slow_lookup_log smtp_accept_keepalive smtp_accept_max smtp_accept_max_nonmail
smtp_accept_max_nonmail_hosts smtp_accept_max_per_connection smtp_accept_max_per_host smtp_accept_queue
smtp_accept_queue_per_connection smtp_accept_reserve smtp_active_hostname smtp_backlog_monitor smtp_banner
smtp_check_spool_space smtp_connect_backlog smtp_enforce_sync smtp_etrn_command smtp_etrn_serialize
smtp_load_reserve smtp_max_synprot_errors smtp_max_unknown_commands smtp_ratelimit_hosts smtp_ratelimit_mail
smtp_ratelimit_rcpt smtp_receive_timeout smtp_reserve_hosts smtp_return_error_details smtputf8_advertise_hosts
spamd_address spf_guess spf_smtp_comment_template split_spool_directory spool_directory spool_wireformat
sqlite_dbfile sqlite_lock_timeout srs_config strict_acl_vars strip_excess_angle_brackets strip_trailing_dot
syslog_duplication syslog_facility syslog_pid syslog_processname syslog_timestamp system_filter
system_filter_directory_transport system_filter_file_transport system_filter_group system_filter_pipe_transport
system_filter_reply_transport system_filter_user tcp_nodelay tcp_wrappers_daemon_name timeout_frozen_after
timezone tls_advertise_hosts tls_alpn tls_certificate tls_crl tls_dh_max_bits tls_dhparam tls_eccurve
tls_ocsp_file tls_on_connect_ports tls_privatekey tls_remember_esmtp tls_require_ciphers tls_resumption_hosts
tls_try_verify_hosts tls_verify_certificates tls_verify_hosts trusted_groups trusted_users unknown_login
unknown_username untrusted_set_sender uucp_from_pattern uucp_from_sender warn_message_file wellknown_advertise_hosts
write_rejectlog
""".split())


class V(Enum):
    """A condition's value for the stranger."""

    TRUE = "true"
    FALSE = "false"
    CHOICE = "the client's choice"  # the client can make it true or false
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Option:
    name: str
    value: str
    line: int
    file: str


@dataclass
class Statement:
    verb: str
    line: int
    file: str
    conditions: list[tuple[str, bool, str, int]] = field(default_factory=list)  # (name, negated, value, line)

    def shown(self) -> str:
        parts = [self.verb] + [f"{'!' if neg else ''}{name} = {value}" for name, neg, value, _ in self.conditions]
        return " ".join(parts)


@dataclass
class EximConfig:
    file: str
    options: dict[str, Option] = field(default_factory=dict)
    lists: dict[str, tuple[str, Option]] = field(default_factory=dict)  # name -> (kind, option)
    acls: dict[str, list[Statement]] = field(default_factory=dict)
    acl_lines: dict[str, tuple[str, int]] = field(default_factory=dict)  # acl name -> (file, line)
    unknown: list[Option] = field(default_factory=list)
    unknown_conditions: list[tuple[str, str, int]] = field(default_factory=list)  # (name, file, line)

    def option(self, name: str) -> Option | None:
        return self.options.get(name)


# -- reading ---------------------------------------------------------------------------------


def _physical(text: str, file: str, source: Source, depth: int = 0) -> list[tuple[str, int, str]]:
    """(file, line, text) after .include / .ifdef handling and macro substitution."""
    out: list[tuple[str, int, str]] = []
    macros: dict[str, str] = {}
    _expand_file(text, file, source, depth, macros, out)
    return out


def _expand_file(text: str, file: str, source: Source, depth: int, macros: dict[str, str], out: list[tuple[str, int, str]]) -> None:
    stack: list[tuple[bool, bool, int]] = []  # (active, branch taken, line)
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        raw = lines[number]
        number += 1
        stripped = raw.strip()
        active = all(a for a, _, _ in stack)
        if stripped.startswith("."):
            word, _, rest = stripped[1:].partition(" ")
            rest = rest.strip()
            if word in ("ifdef", "ifndef"):
                defined = any(m in rest for m in macros) if rest else False
                cond = defined if word == "ifdef" else not defined
                stack.append((cond, cond, number))
                continue
            if word in ("elifdef", "elifndef", "else"):
                if not stack:
                    raise AuditError(file, number, f".{word} without matching .ifdef")
                _, taken, start = stack.pop()
                if word == "else":
                    cond = not taken
                else:
                    defined = any(m in rest for m in macros)
                    cond = (not taken) and (defined if word == "elifdef" else not defined)
                stack.append((cond, taken or cond, start))
                continue
            if word == "endif":
                if not stack:
                    raise AuditError(file, number, ".endif without matching .ifdef")
                stack.pop()
                continue
            if word in ("include", "include_if_exists") and active:
                ref = rest.strip('"')
                path = locate(source, ref, EXIM_HOMES)
                if path is None:
                    if word == "include":
                        raise AuditError(file, number, f".include {ref}: not found in the audited folder")
                    continue
                if depth > 10:
                    raise AuditError(file, number, ".include nested too deeply")
                inc = source.read(path)
                if inc is not None:
                    _expand_file(inc, str(path), source, depth + 1, macros, out)
                continue
        if not active:
            continue
        if not stripped or stripped.startswith("#"):
            out.append((file, number, ""))
            continue
        m = re.match(r"([A-Z][A-Za-z0-9_]*)\s*(==?)\s*(.*)$", stripped)
        if m:
            value = m.group(3)
            while value.endswith("\\") and number < len(lines):
                value = value[:-1] + lines[number].strip()
                number += 1
            macros[m.group(1)] = _substitute(value, macros)
            out.append((file, number, ""))
            continue
        out.append((file, number, _substitute(raw, macros)))
    if stack:
        raise AuditError(file, stack[-1][2], "unexpected end of configuration file: .endif missing")


def _substitute(text: str, macros: dict[str, str]) -> str:
    for name in sorted(macros, key=len, reverse=True):
        if name in text:
            text = text.replace(name, macros[name])
    return text


def _logical(physical: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Join continuation lines (a line ending in backslash continues on the next)."""
    out: list[tuple[str, int, str]] = []
    pending: list[object] | None = None
    for file, line, text in physical:
        stripped = text.strip()
        if pending is not None:
            pending[2] = f"{pending[2]}{stripped}"
        elif stripped:
            pending = [file, line, stripped]
        else:
            continue
        if pending[2].endswith("\\"):  # type: ignore[union-attr]
            pending[2] = pending[2][:-1]  # type: ignore[index]
            continue
        out.append((pending[0], pending[1], pending[2]))  # type: ignore[arg-type]
        pending = None
    if pending is not None:
        out.append((pending[0], pending[1], pending[2]))  # type: ignore[arg-type]
    return out


def read(text: str, file: str, source: Source) -> EximConfig:
    cfg = EximConfig(file)
    section = "main"
    acl_name: str | None = None
    for lfile, line, text_ in _logical(_physical(text, file, source)):
        if text_.startswith("begin ") or text_ == "begin":
            name = text_[5:].strip()
            if name not in SECTIONS:
                raise AuditError(lfile, line, f"unknown section name {name!r} after 'begin' (expected one of {', '.join(SECTIONS)})")
            section, acl_name = name, None
            continue
        if section == "main":
            _main_line(cfg, lfile, line, text_)
        elif section == "acl":
            acl_name = _acl_line(cfg, lfile, line, text_, acl_name)
    return cfg


def _main_line(cfg: EximConfig, file: str, line: int, text: str) -> None:
    words = text.split(None, 1)
    if words[0] == "hide" and len(words) > 1:
        text = words[1]
        words = text.split(None, 1)
    kind = words[0].removesuffix("_cache")
    if kind in LIST_KINDS:
        if len(words) < 2 or "=" not in words[1]:
            raise AuditError(file, line, f"malformed {words[0]}: expected '{words[0]} name = items'")
        name, _, value = words[1].partition("=")
        cfg.lists[name.strip()] = (kind, Option(name.strip(), value.strip(), line, file))
        return
    name, eq, value = text.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise AuditError(file, line, f"malformed option line {text[:60]!r}: expected 'name = value'")
    if not eq:
        # a boolean: name, no_name or not_name
        base = re.sub(r"^(no|not)_", "", name)
        value = "false" if base != name else "true"
        name = base
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    opt = Option(name, value, line, file)
    cfg.options[name] = opt
    if name not in MAIN_OPTIONS:
        cfg.unknown.append(opt)


def _acl_line(cfg: EximConfig, file: str, line: int, text: str, current: str | None) -> str | None:
    m = re.fullmatch(r"([A-Za-z0-9_\-]+):\s*", text)
    if m:
        cfg.acls[m.group(1)] = []
        cfg.acl_lines[m.group(1)] = (file, line)
        return m.group(1)
    if current is None:
        raise AuditError(file, line, f"ACL statement {text[:40]!r} before any ACL name (name:)")
    statements = cfg.acls[current]
    word = text.split(None, 1)[0]
    rest = text
    if word in VERBS:
        statements.append(Statement(word, line, file))
        rest = text[len(word):].strip()
        if not rest:
            return current
    elif not statements:
        raise AuditError(file, line, f"unknown ACL verb {word!r} (expected one of {', '.join(VERBS)})")
    _conditions(cfg, statements[-1], file, line, rest)
    return current


def _conditions(cfg: EximConfig, stmt: Statement, file: str, line: int, text: str) -> None:
    """One `[!]name = value` per logical line; the value runs to the end of the line (acl.c)."""
    m = re.match(r"(!?)\s*([a-z_0-9]+)\s*(=)?\s*", text)
    if not m or not m.group(2):
        raise AuditError(file, line, f"malformed ACL condition {text[:40]!r}")
    negated, name = bool(m.group(1)), m.group(2)
    if name == "endpass":
        stmt.conditions.append((name, negated, "", line))
        return
    if name == "set":
        m2 = re.match(r"set\s+([a-z_0-9]+)\s*=\s*(.*)$", text.lstrip("!"))
        if not m2:
            raise AuditError(file, line, f"malformed set modifier {text[:40]!r}: expected 'set acl_xx = value'")
        stmt.conditions.append(("set", False, m2.group(2), line))
        return
    if not m.group(3):
        raise AuditError(file, line, f"ACL condition {name!r}: missing '='")
    if name not in CONDITIONS and name not in MODIFIERS:
        cfg.unknown_conditions.append((name, file, line))
    stmt.conditions.append((name, negated, text[m.end():].strip(), line))


# -- Exim lists -----------------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """An Exim list: ':'-separated (a doubled '::' is a literal colon); `<c` changes the separator."""
    value = value.strip()
    sep = ":"
    if value.startswith("<") and len(value) > 1 and not value[1].isspace() and not value[1].isalnum():
        sep, value = value[1], value[2:]
    items: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == sep:
            if sep == ":" and i + 1 < len(value) and value[i + 1] == ":":
                buf.append(":")
                i += 2
                continue
            items.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
        i += 1
    items.append("".join(buf).strip())
    if items == [""]:
        return []
    return items


_SAMPLE_DOMAINS = ("gmail.com", "example.org", "mail.ru", "stranger.example.net")


class Judge:
    """Evaluate lists and conditions for the stranger (see the module docstring)."""

    def __init__(self, cfg: EximConfig) -> None:
        self.cfg = cfg

    def domain_list(self, value: str, seen: frozenset[str] = frozenset()) -> V:
        items = split_list(value)
        for k, item in enumerate(items):
            neg = item.startswith("!")
            item = item.lstrip("!").strip()
            v = self._domain_item(item, seen)
            if v is V.FALSE:
                if neg and k == len(items) - 1:
                    return V.TRUE  # a list ending in a negative item matches everything else
                continue
            if neg:
                return {V.TRUE: V.FALSE, V.CHOICE: V.CHOICE, V.UNKNOWN: V.UNKNOWN}[v]
            return v
        return V.FALSE

    def _domain_item(self, item: str, seen: frozenset[str]) -> V:
        if item.startswith("+"):
            name = item[1:]
            if name in seen or name not in self.cfg.lists:
                return V.FALSE
            return self.domain_list(self.cfg.lists[name][1].value, seen | {name})
        if item in ("*", "*.*"):
            return V.TRUE
        if item.startswith("^"):
            try:
                rx = re.compile(item, re.I)
            except re.error:
                return V.UNKNOWN
            return V.TRUE if any(rx.search(d) for d in _SAMPLE_DOMAINS) else V.FALSE
        if item.startswith("*"):
            rest = item[1:].lstrip(".")
            return V.TRUE if "." not in rest else V.FALSE
        if item in ("@mx_any", "@mx_primary", "@mx_secondary"):
            return V.CHOICE  # any domain whose MX the client's owner points here
        if "${" in item:
            return V.UNKNOWN
        return V.FALSE  # a named domain, @, @[], a lookup of the site's own domains

    def host_list(self, value: str, seen: frozenset[str] = frozenset()) -> V:
        items = split_list(value)
        for k, item in enumerate(items):
            neg = item.startswith("!")
            item = item.lstrip("!").strip()
            v = self._host_item(item, seen)
            if v is V.FALSE:
                if neg and k == len(items) - 1:
                    return V.TRUE
                continue
            if neg:
                return {V.TRUE: V.FALSE, V.CHOICE: V.CHOICE, V.UNKNOWN: V.UNKNOWN}[v]
            return v
        return V.FALSE

    def _host_item(self, item: str, seen: frozenset[str]) -> V:
        if not item:
            return V.FALSE  # the empty item matches only local -bs sessions
        if item.startswith("+"):
            name = item[1:]
            if name in seen or name not in self.cfg.lists:
                return V.FALSE
            return self.host_list(self.cfg.lists[name][1].value, seen | {name})
        if item == "*":
            return V.TRUE
        try:
            net = nets.parse_network(item)
        except ValueError:
            net = None
        if net is not None:
            return V.TRUE if nets.admits_stranger([net]) else V.FALSE
        if item.startswith("*") and "." not in item[1:].lstrip("."):
            return V.TRUE
        if "${" in item:
            return V.UNKNOWN
        return V.FALSE

    def condition(self, name: str, value: str, seen: frozenset[str], verb: str = "accept") -> V:
        v = value.strip()
        if name == "domains":
            return self.domain_list(v)
        if name == "hosts":
            return self.host_list(v)
        if name == "authenticated":
            return V.FALSE
        if name in ("senders", "sender_domains", "local_parts", "encrypted", "ratelimit", "spf", "spf_guess",
                    "dkim_signers", "dkim_status", "dmarc_status", "regex", "mime_regex", "decode", "malware", "spam", "arc"):
            return V.CHOICE
        if name == "recipients":
            return V.TRUE if v in ("*", "*@*") else V.FALSE
        if name == "verify":
            what = v.split("/", 1)[0].strip()
            if what == "certificate":
                return V.UNKNOWN
            return V.TRUE if what == "recipient" else V.CHOICE
        if name == "dnslists":
            # a stranger can stay off a block list, but cannot put itself on an allow list
            return V.FALSE if verb in ("accept", "discard", "require") else V.CHOICE
        if name == "condition":
            low = v.lower()
            if low in ("true", "yes", "1"):
                return V.TRUE
            if low in ("false", "no", "0", ""):
                return V.FALSE
            return V.UNKNOWN
        if name == "acl":
            target = v.split()[0] if v.split() else ""
            if target in self.cfg.acls and target not in seen:
                verdict = self.run(self.cfg.acls[target], seen | {target})
                return {"accept": V.TRUE, "deny": V.FALSE}.get(verdict.decision, V.UNKNOWN)
            return V.UNKNOWN
        return V.UNKNOWN

    def run(self, statements: list[Statement], seen: frozenset[str] = frozenset()) -> AclVerdict:
        maybes: list[tuple[Statement, str]] = []
        may_stop: list[str] = []  # earlier deny/require statements that may stop the stranger
        for stmt in statements:
            values: list[tuple[str, V]] = []
            after_endpass: list[tuple[str, V]] = []
            target = values
            for name, neg, value, _ in stmt.conditions:
                if name == "endpass":
                    target = after_endpass
                    continue
                if name in MODIFIERS:
                    continue
                v = self.condition(name, value, seen, stmt.verb if not neg else ("deny" if stmt.verb == "accept" else "accept"))
                if neg:
                    v = {V.TRUE: V.FALSE, V.FALSE: V.TRUE}.get(v, v)
                target.append((f"{'!' if neg else ''}{name} = {value}", v))
            kinds = {v for _, v in values}
            if stmt.verb in ("accept", "discard"):
                if V.FALSE in kinds:
                    continue
                if V.UNKNOWN in kinds:
                    maybes.append((stmt, ", ".join(t for t, v in values if v is V.UNKNOWN)))
                    continue
                if stmt.verb == "discard" or any(v is V.FALSE for _, v in after_endpass):
                    return AclVerdict("deny", stmt, values, maybes)
                if may_stop:
                    maybes.append((stmt, "; ".join(may_stop) + " letting the client through"))
                    return AclVerdict("deny", None, [], maybes)
                return AclVerdict("accept", stmt, values + after_endpass, maybes)
            if stmt.verb in ("deny", "drop", "defer"):
                if kinds <= {V.TRUE}:
                    return AclVerdict("deny", stmt, values, maybes)
                if V.UNKNOWN in kinds and not kinds & {V.FALSE, V.CHOICE}:
                    may_stop.append(f"{stmt.verb} at line {stmt.line} not applying")
                continue  # the stranger avoids it (false, its choice) or it may not apply (unknown)
            if stmt.verb == "require":
                if V.FALSE in kinds:
                    return AclVerdict("deny", stmt, values, maybes)
                if V.UNKNOWN in kinds:
                    may_stop.append(f"require at line {stmt.line} passing")
        return AclVerdict("deny", None, [], maybes)


@dataclass
class AclVerdict:
    decision: str  # "accept" or "deny"
    statement: Statement | None  # None: the implicit deny at the end
    values: list[tuple[str, V]]
    maybes: list[tuple[Statement, str]]


# -- rules -----------------------------------------------------------------------------------


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "yes", "1")


def check(cfg: EximConfig) -> list[Finding]:
    out: list[Finding] = []
    judge = Judge(cfg)
    local_only = _local_only(cfg)

    def add(severity: Severity, rule: str, file: str, line: int | None, setting: str, why: str, fix: str) -> None:
        if local_only and severity is Severity.OPEN_RELAY:
            severity, why = Severity.INFO, why.rstrip(".") + "; but Exim listens on loopback only (local_interfaces)."
        out.append(Finding(severity, rule, file, line, setting, why, fix))

    wide_lists: set[str] = set()
    for name, (kind, opt) in cfg.lists.items():
        if kind == "hostlist":
            for item in split_list(opt.value):
                if item.startswith("!") or item.startswith("+"):
                    continue
                if item == "*":
                    add(Severity.OPEN_RELAY if name == "relay_from_hosts" else Severity.WEAKNESS, "exim/hostlist-wide", opt.file, opt.line,
                        f"hostlist {name} = {opt.value}", f"{name} matches every host on the Internet.",
                        f"List only your own hosts and networks in {name}.")
                    wide_lists.add(name)
                    continue
                try:
                    net = nets.parse_network(item)
                except ValueError:
                    continue
                w = nets.width(net)
                if w.severity is None:
                    continue
                severity = w.severity if name == "relay_from_hosts" or w.severity is not Severity.OPEN_RELAY else Severity.WEAKNESS
                if w.severity is Severity.OPEN_RELAY:
                    wide_lists.add(name)
                add(severity, "exim/hostlist-wide", opt.file, opt.line, f"hostlist {name} contains {item}",
                    f"{item} is {w.text}" + (": every host in it may relay." if name == "relay_from_hosts" else f", trusted wherever +{name} is used."),
                    f"List only your own hosts and networks in {name}.")
        elif kind == "domainlist" and name in ("local_domains", "relay_to_domains"):
            v = judge.domain_list(opt.value)
            if v is V.TRUE:
                add(Severity.OPEN_RELAY, "exim/domainlist-wide", opt.file, opt.line, f"domainlist {name} = {opt.value}",
                    f"{name} matches any domain, so the relay check (domains = +local_domains : +relay_to_domains) passes for every recipient.",
                    "List your own domains in local_domains and only the domains you relay for in relay_to_domains.")
                wide_lists.add(name)
            elif v is V.CHOICE:
                add(Severity.WEAKNESS, "exim/domainlist-mx", opt.file, opt.line, f"domainlist {name} = {opt.value}",
                    f"{name} contains @mx_*: any domain whose DNS points its MX here counts as yours, and anyone can do that.",
                    f"List the domains explicitly in {name}.")

    rcpt = cfg.option("acl_smtp_rcpt")
    if rcpt is None or not rcpt.value:
        out.append(Finding(Severity.INFO, "exim/no-rcpt-acl", cfg.file, None, "acl_smtp_rcpt (not set)",
                           "Without an RCPT ACL Exim refuses every recipient: this configuration receives no mail over SMTP.",
                           "Set acl_smtp_rcpt = acl_check_rcpt with the default configuration's ACL."))
    else:
        statements = _rcpt_acl(cfg, rcpt, out)
        if statements is not None:
            verdict = judge.run(statements)
            if verdict.decision == "accept" and verdict.statement is not None:
                stmt = verdict.statement
                broad = [t for t, v in verdict.values if v is V.TRUE and any(f"+{n}" in t for n in wide_lists)]
                if not broad:
                    chosen = [t for t, v in verdict.values if v is V.CHOICE]
                    routable = [t for t, v in verdict.values if v is V.TRUE and t.startswith("verify = recipient")]
                    if routable:
                        reason = "verify = recipient succeeds for any address Exim can route, other people's domains included"
                    elif chosen:
                        reason = f"its conditions ({', '.join(chosen)}) are the client's to satisfy"
                    else:
                        reason = "it has no condition that a stranger fails"
                    add(Severity.OPEN_RELAY, "exim/rcpt-acl-open", stmt.file, stmt.line, stmt.shown(),
                        f"This accept comes before the relay check (require domains = +local_domains : +relay_to_domains) and {reason}, so recipients in any domain are accepted.",
                        "Put `require message = relay not permitted` / `domains = +local_domains : +relay_to_domains` before it, or restrict it with domains = +local_domains.")
            elif verdict.maybes:
                stmt, unknown = verdict.maybes[0]
                add(Severity.WEAKNESS, "exim/rcpt-acl-conditional", stmt.file, stmt.line, stmt.shown(),
                    f"This accept comes before the relay check and depends on {unknown}, which the audit cannot evaluate: if it is true for a stranger, Exim relays.",
                    "Put the relay check (require domains = +local_domains : +relay_to_domains) before it.")

    opt = cfg.option("percent_hack_domains")
    if opt and opt.value.strip():
        every = judge.domain_list(opt.value) is V.TRUE
        add(Severity.WEAKNESS if every else Severity.INFO, "exim/percent-hack", opt.file, opt.line, f"percent_hack_domains = {opt.value}",
            ("user%elsewhere@domain is rewritten to user@elsewhere for every domain; the RCPT ACL still sees the rewritten "
             "address, but hosts in relay_from_hosts and any accept before the relay check can use it to reach anywhere."
             if every else "The percent hack is on for these domains: user%elsewhere@domain becomes user@elsewhere, a classic relay trick."),
            "Remove percent_hack_domains (unset is the default), and keep the default ACL's deny for local parts containing %.")
    opt = cfg.option("allow_domain_literals")
    if opt and _truthy(opt.value):
        add(Severity.WEAKNESS, "exim/domain-literals", opt.file, opt.line, f"allow_domain_literals = {opt.value}",
            "Addresses like user@[192.0.2.1] are accepted and routed to that address directly, which relay tests and spammers use to pick any host as the destination.",
            "Set allow_domain_literals = false (the default).")
    for o in cfg.unknown:
        out.append(Finding(Severity.INFO, "exim/unknown-option", o.file, o.line, f"{o.name} = {o.value}",
                           f"'{o.name}' is not an Exim main option relayguard knows; Exim refuses to start on an option it does not know either.",
                           "Check the spelling against the Exim specification, chapter 14."))
    for name, file, line in cfg.unknown_conditions:
        out.append(Finding(Severity.INFO, "exim/unknown-condition", file, line, name,
                           f"'{name}' is not an ACL condition or modifier relayguard knows; the audit treated it as unknown.",
                           "Check the spelling against the Exim specification, chapter 44."))
    return out


def _rcpt_acl(cfg: EximConfig, rcpt: Option, out: list[Finding]) -> list[Statement] | None:
    """The statements of the ACL acl_smtp_rcpt names (or holds inline); None when it cannot be known."""
    value = rcpt.value.strip()
    if value in cfg.acls:
        return cfg.acls[value]
    if "$" in value:
        out.append(Finding(Severity.WEAKNESS, "exim/rcpt-acl-expanded", rcpt.file, rcpt.line, f"acl_smtp_rcpt = {value}",
                           "The RCPT ACL is chosen by an expansion, so the audit cannot tell which ACL runs.",
                           "Name the ACL directly to have it audited."))
        return None
    if value.split()[0] in VERBS:
        tmp = EximConfig(cfg.file, lists=cfg.lists, acls=dict(cfg.acls))
        tmp.acls["(inline)"] = []
        _acl_line(tmp, rcpt.file, rcpt.line, value, "(inline)")
        return tmp.acls["(inline)"]
    out.append(Finding(Severity.WEAKNESS, "exim/rcpt-acl-missing", rcpt.file, rcpt.line, f"acl_smtp_rcpt = {value}",
                       f"There is no ACL named {value!r}; Exim reads the name as an inline ACL, fails, and defers every recipient.",
                       "Define the ACL in the `begin acl` section or correct the name."))
    return None


def _local_only(cfg: EximConfig) -> bool:
    """local_interfaces lists loopback addresses only (`127.0.0.1`, `<; ::1`, `127.0.0.1.25`, `[::1]:25`)."""
    opt = cfg.option("local_interfaces")
    if opt is None:
        return False
    hosts = []
    for item in split_list(opt.value):
        m = re.fullmatch(r"\[(.+)\]:\d+", item)
        host = m.group(1) if m else item
        if not m and "." in host and host.rsplit(".", 1)[1].isdigit() and (host.count(".") == 4 or ":" in host):
            host = host.rsplit(".", 1)[0]
        hosts.append(host)
    if not hosts:
        return False
    for host in hosts:
        try:
            if not nets.parse_network(host).is_loopback:
                return False
        except ValueError:
            return False
    return True
