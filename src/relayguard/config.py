"""Configuration: one TOML file validated by pydantic models, the only place settings are defined.

Errors name the file, the dotted key and its line, so an administrator can fix them at once.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import config_file
from .addr import AddressError, normalise_domain
from .config_file import DEFAULT_FILE as DEFAULT_FILE, ConfigError as ConfigError  # where they always were
from .hostport import parse_hostport


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)  # field docstrings: docs/configuration.md


def _check_cidrs(values: list[str]) -> list[str]:
    for net in values:
        ipaddress.ip_network(net, strict=False)
    return values


def _check_dns_servers(values: list[str]) -> list[str]:
    for server in values:
        ipaddress.ip_address(parse_hostport(server, 53)[0])
    return values


def _check_listen(values: list[str]) -> list[str]:
    for v in values:
        parse_hostport(v)
    return values


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ServerSettings(_Section):
    """The process: its name, data folder, logs and shutdown."""

    hostname: str = Field(default_factory=socket.getfqdn)
    """Name in the greeting, EHLO and Received headers; default: this host's fully qualified name."""
    data_dir: str = "var"
    """Maildirs (mail/), queue, users file, TLS pair and other state; relative to the working directory."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_file: str = ""
    """Append the log to this file (re-opened on SIGHUP, for logrotate); "" = standard error."""
    log_format: Literal["kv", "json"] = "kv"
    """"kv": one `key=value` line per event; "json": one JSON object per line."""
    shutdown_timeout: Annotated[float, Field(ge=0)] = 30.0
    """SIGTERM: seconds for sessions in flight to finish."""

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()


class SMTPSettings(_Section):
    """The SMTP (MX) and submission listeners and their limits."""

    listen: list[str] = ["127.0.0.1:2525"]
    """Inbound (MX) addresses, "host:port"; use ["0.0.0.0:25"] in production."""
    submission_listen: list[str] = ["127.0.0.1:2587"]
    """Submission addresses: AUTH (over TLS) required before MAIL."""
    max_message_size: PositiveInt = 50 * 1024 * 1024
    """Bytes; SIZE is advertised and enforced while streaming (552 beyond)."""
    max_recipients: PositiveInt = 100
    """Recipients per message; more get 452 4.5.3."""
    max_line_length: Annotated[int, Field(ge=512)] = 2048
    """Command line limit in bytes; longer lines get 500 5.5.2."""
    soft_error_limit: PositiveInt = 10
    """After this many error replies in a session, each further one waits error_sleep."""
    hard_error_limit: PositiveInt = 20
    """After this many error replies in a session: 421 and disconnect."""
    error_sleep: Annotated[float, Field(ge=0)] = 1.0
    """Seconds of delay before each error reply past soft_error_limit."""
    timeout: PositiveFloat = 300.0
    """Idle seconds before 421 4.4.2 and disconnect."""
    session_timeout: PositiveFloat = 1800.0
    """Seconds a whole session may last."""
    max_connections: PositiveInt = 200
    """Sessions at once in total; more get 421 4.3.2."""
    max_connections_per_ip: PositiveInt = 20
    """Sessions at once per client address; more get 421 4.7.0."""
    auth_attempts_per_minute: PositiveInt = 10
    """AUTH attempts per client address and minute, failed or not; more get 421 and disconnect."""
    greet_pause: Annotated[float, Field(ge=0)] = 0.0
    """Seconds to wait before the greeting; clients that talk first are refused."""
    reverse_dns: bool = False
    """Look up the client's forward-confirmed reverse DNS name (for the Received header)."""

    _v_listen = field_validator("listen", "submission_listen")(_check_listen)


class TLSSettings(_Section):
    """The certificate and key of STARTTLS on the SMTP and submission listeners."""

    cert: str = ""
    """PEM certificate chain; "" = <data_dir>/tls/cert.pem (self-signed, made by `relayguard init` or the first start)."""
    key: str = ""
    """PEM private key; "" = <data_dir>/tls/key.pem."""


class DomainSettings(_Section):
    """The domains whose mail is delivered here."""

    local: list[str] = ["localhost"]
    """Mail for these is delivered to <data_dir>/mail/<domain>/<user>/; the first one is Postmaster's."""

    @field_validator("local")
    @classmethod
    def _normalise(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            if not d.strip():
                raise ValueError("empty domain name")
            out.append(normalise_domain(d.strip()))
        return out


class RelaySettings(_Section):
    """Who may relay (send to other domains) without AUTH."""

    trusted_networks: list[str] = []
    """CIDRs allowed to relay without AUTH; keep empty unless you must."""

    _v_cidrs = field_validator("trusted_networks")(_check_cidrs)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]


class DeliverySettings(_Section):
    """Outbound delivery and the queue; durations in seconds (Postfix's defaults)."""

    transport: dict[str, str] = {}
    """Per-domain next hop, "host:port", used instead of the MX lookup."""
    smarthost: str = ""
    """"host:port": send all outbound mail there (over STARTTLS, with AUTH when a user is set); "" = MX delivery."""
    smarthost_user: str = ""
    """AUTH user at the smarthost; "" = no AUTH."""
    smarthost_password: str = ""
    """AUTH password at the smarthost (never logged)."""
    require_tls: list[str] = []
    """Domains whose MX must offer STARTTLS with a valid certificate."""
    dns_servers: list[str] = []
    """"ip:port" resolvers for MX lookups; empty = the system resolver."""
    port: Annotated[int, Field(gt=0, lt=65536)] = 25
    """TCP port of MX hosts."""
    connect_timeout: PositiveFloat = 30.0
    """Seconds to connect to a remote host."""
    command_timeout: PositiveFloat = 300.0
    """Seconds to wait for each reply of a remote host."""
    min_backoff: PositiveFloat = 300.0
    """First retry delay in seconds; delays double up to max_backoff (with jitter)."""
    max_backoff: PositiveFloat = 4000.0
    """Longest retry delay in seconds."""
    max_lifetime: PositiveFloat = 5 * 86400.0
    """Seconds a message may stay queued (5 days); then the sender gets a bounce."""
    delay_warning: Annotated[float, Field(ge=0)] = 0.0
    """Seconds before the sender gets a "delayed" notice; 0 = never."""
    max_connections: PositiveInt = 50
    """Outbound connections at once in total."""
    max_connections_per_destination: PositiveInt = 10
    """Outbound connections at once per destination."""
    scan_interval: PositiveFloat = 60.0
    """Seconds between full rescans of the queue folder."""

    @field_validator("transport")
    @classmethod
    def _hops(cls, v: dict[str, str]) -> dict[str, str]:
        for hop in v.values():
            parse_hostport(hop, 25)
        return {normalise_domain(k): hop for k, hop in v.items()}

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, v: str) -> str:
        if v:
            parse_hostport(v, 25)
        return v

    _v_dns = field_validator("dns_servers")(_check_dns_servers)


class RelayTestSettings(_Section):
    """Defaults of `relayguard relaytest` (its options override them)."""

    helo: str = "relaytest.relayguard.invalid"
    """EHLO name of the tester."""
    canary_domain: str = "example.com"
    """The outside domain of the test addresses ({X} in the catalogue)."""
    canary_listen: str = ""
    """Confirm mode: the built-in receiver of relayed test mail, "IP:PORT"."""
    canary_maildir: str = ""
    """Confirm mode: or watch this Maildir for relayed test mail."""
    timeout: PositiveFloat = 30.0
    """Seconds per stage (connect, greeting, each command)."""
    confirm_timeout: PositiveFloat = 60.0
    """Seconds to wait for relayed test mail at the canary."""
    connections: PositiveInt = 4
    """Sessions per target at once."""
    concurrency: PositiveInt = 20
    """Targets tested at once."""
    self_check: bool = False
    """`serve` tests its own SMTP listeners at start-up."""
    self_check_interval: Annotated[float, Field(ge=0)] = 0.0
    """And then every this many seconds; 0 = at start only."""
    self_check_from: str = ""
    """Untrusted source address of the self-check; "" = 127.0.0.2 for loopback listeners."""

    @field_validator("canary_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v

    @field_validator("self_check_from")
    @classmethod
    def _source(cls, v: str) -> str:
        if v:
            ipaddress.ip_address(v)
        return v


class DNSBLSettings(_Section):
    """The blacklist zone relayguard serves over DNS (RFC 5782)."""

    zone: str = "bl.relayguard.test"
    """The list's DNS zone: clients ask <reversed IP>.<zone> (RFC 5782)."""
    dns_listen: str = "127.0.0.1:5300"
    """UDP and TCP address of the DNS server; "" = no DNS server."""
    ttl: Annotated[int, Field(ge=0)] = 2100
    """TTL in seconds of the listed answers (A, TXT) and of SOA and NS."""
    negative_ttl: Annotated[int, Field(ge=0)] = 2100
    """SOA minimum: how long resolvers may cache "not listed", in seconds."""
    nameservers: list[str] = []
    """NS records; default ns1.<zone>."""
    hostmaster: str = ""
    """SOA contact; default hostmaster.<zone>."""
    axfr_allow: list[str] = []
    """CIDRs allowed to transfer the zone (AXFR over TCP)."""
    notify: list[str] = []
    """"ip:port" secondaries told of every change (NOTIFY)."""
    # the list's lifecycle: tests, limits, removal, export (issue 5; docs/dnsbl.md)
    txt: str = "Open relay: listed after a confirmed relay test; see https://bl.relayguard.test/lookup?ip=$"
    """TXT answer of listed addresses; $ = the IP."""
    contact: str = ""
    """Published contact for listing questions (RFC 6471); default postmaster@<server.hostname>."""
    test_port: Annotated[int, Field(gt=0, lt=65536)] = 25
    """SMTP port nominated hosts are tested on."""
    test_concurrency: PositiveInt = 4
    """Relay tests at once."""
    retest_days: PositiveFloat = 90.0
    """Listed hosts are re-tested this often."""
    expire_days: PositiveFloat = 180.0
    """A listing not re-confirmed for this long expires."""
    retry_hours: PositiveFloat = 24.0
    """Next try after a re-test that could not reach the host."""
    cooldown: Annotated[float, Field(ge=0)] = 3600.0
    """Seconds: no second test of one host within this."""
    requests_per_hour: PositiveInt = 10
    """Nominations + removal requests per requester."""
    host_requests_per_day: PositiveInt = 50
    """Nominations + removal requests per host, from anyone."""
    removal_confirm: bool = False
    """Mail a confirmation token to the contact before the re-test."""
    confirm_hours: PositiveFloat = 48.0
    """Hours a mailed removal confirmation stays valid."""
    confirm_url: str = ""
    """Link in the confirmation mail; "{token}" is replaced."""
    mail_via: str = ""
    """relayguard's SMTP listener for that mail; "" = the first [smtp] listen."""
    mail_from: str = ""
    """Sender of that mail; default dnsbl@<server.hostname>."""
    allow_private: bool = False
    """Test and list private and loopback addresses (labs and tests only)."""
    export_dir: str = ""
    """`dnsbl export` default folder; "" = <data_dir>/dnsbl."""

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        v = v.lower().rstrip(".")
        if not v or any(not label or len(label) > 63 for label in v.split(".")):
            raise ValueError(f"{v!r} is not a DNS zone name")
        return v

    @field_validator("dns_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v

    _v_cidrs = field_validator("axfr_allow")(_check_cidrs)
    _v_notify = field_validator("notify")(_check_dns_servers)


class StoreSettings(_Section):
    """The DNSBL database (issue 5): an SQLite file, or PostgreSQL shared by several nodes."""

    url: str = "sqlite:///var/relayguard.db"
    """SQLAlchemy URL: "sqlite:///PATH" or "postgresql+psycopg://user:password@host/db"."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith("postgresql+psycopg://")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return v


class AuthSettings(_Section):
    """SMTP AUTH users and the addresses they may send as."""

    users_file: str = ""
    """The users file (`relayguard user add/del/list`); "" = <data_dir>/users."""
    enforce_sender: bool = True
    """A logged-in user may use only their own address (and `senders`) in MAIL FROM."""
    senders: dict[str, list[str]] = {}
    """Extra addresses (or "@domain") a user may send as: { "alice@localhost" = ["@localhost"] }."""


def _check_address(value: str) -> str:
    from .addr import parse_path

    try:
        box = parse_path(value, allow_null=False)
    except AddressError as e:
        raise ValueError(f"{value!r}: {e}") from None
    if not box.domain:
        raise ValueError(f"{value!r}: an address needs a domain")
    return value


Address = Annotated[str, AfterValidator(_check_address)]


class TraceSettings(_Section):
    """`relayguard trace`: where trust ends, whom to tell (docs/trace.md)."""

    trusted_networks: list[str] = []
    """Hosts that never forge Received fields (SpamAssassin's trusted_networks)."""
    internal_networks: list[str] = []
    """Your own MXes and relays; default: trusted_networks."""
    msa_networks: list[str] = []
    """Submission hosts: every older hop is trusted too."""
    originating_ip_headers: list[str] = []
    """Headers taken as the oldest hop, e.g. ["X-Originating-IP"]."""
    max_time_skew: Annotated[float, Field(ge=0)] = 600.0
    """Seconds before an older, later hop is "time travel"."""
    abuse_contacts_file: str = ""
    """abuse.net style "domain: address" overrides."""
    network_lookups: bool = False
    """RDAP abuse contacts and reverse DNS over the network."""
    rdap_url: str = "https://rdap.org/"
    """RDAP service (the rdap.org redirector sends each query to the right registry)."""
    reporter: str = ""
    """From of ARF reports; default postmaster@<server.hostname>."""

    _v_cidrs = field_validator("trusted_networks", "internal_networks", "msa_networks")(_check_cidrs)


def _check_sites(v: list[str]) -> list[str]:
    from .dnsbl.sites import parse_sites

    parse_sites(v)  # SiteError (a ValueError) names the entry and the problem
    return v


class RejectSettings(_Section):
    """Reject before receiving: DNSBL checks of the connecting client (docs/reject.md)."""

    dnsbl_sites: list[str] = []
    """Lists to check, postscreen syntax: "zone=127.0.0.[2..11]*3", "allow.zone*-2"."""
    threshold: int = 1
    """Reject when the summed weights reach this."""
    check_at: Literal["rcpt", "connect"] = "rcpt"
    """"rcpt": at RCPT TO; "connect": before the greeting, postscreen-style."""
    on_unknown: Literal["accept", "defer"] = "accept"
    """Lists that did not answer could change the outcome: accept, or defer (450)."""
    score_header: bool = True
    """X-Relayguard-DNSBL on accepted mail that scored."""
    dns_servers: list[str] = []
    """"ip:port"; empty = [delivery] dns_servers, else the system resolver."""
    timeout: PositiveFloat = 5.0
    """Seconds to wait for the lists' answers."""
    cache_size: Annotated[int, Field(ge=0)] = 10000
    """Answers kept (LRU)."""
    min_ttl: Annotated[float, Field(ge=0)] = 60.0
    """Answers are cached for their TTL, at least this many seconds..."""
    max_ttl: Annotated[float, Field(ge=0)] = 3600.0
    """...and at most this many."""
    health_check: bool = True
    """RFC 5782 test points: unhealthy lists are skipped."""
    health_interval: PositiveFloat = 3600.0
    """Seconds between health checks of each list."""
    check_sites: list[str] = Field(default_factory=lambda: list(_default_check_sites()))
    """What `dnsbl check` asks when neither --zone nor dnsbl_sites is set."""

    _v_sites = field_validator("dnsbl_sites", "check_sites")(_check_sites)
    _v_dns = field_validator("dns_servers")(_check_dns_servers)


def _default_check_sites() -> tuple[str, ...]:
    from .dnsbl.sites import DEFAULT_CHECK_SITES

    return DEFAULT_CHECK_SITES


class PolicydSettings(_Section):
    """The Postfix policy server (`relayguard policyd`; `serve` starts it when [policyd] is configured)."""

    enabled: bool = True
    """false: `serve` does not run the policy server even with a [policyd] table."""
    listen: str = "127.0.0.1:10040"
    """Address Postfix connects to: check_policy_service inet:host:port."""
    idle_timeout: PositiveFloat = 600.0
    """Seconds an idle connection is kept (Postfix keeps idle policy connections for 300 s)."""
    max_connections: PositiveInt = 200
    """Policy connections at once."""

    @field_validator("listen")
    @classmethod
    def _policyd_listen(cls, v: str) -> str:
        parse_hostport(v)
        return v


class WebSettings(_Section):
    """The DNSBL's web pages and JSON API (issue 5; docs/web.md). `serve` runs it when the file has a [web] table."""

    listen: str = "127.0.0.1:8025"
    """Address of the web pages and API; "" = no web server."""
    admins: list[str] = []
    """Users (of the SMTP AUTH users file) who may use /admin."""
    trusted_proxies: list[str] = []
    """CIDRs whose X-Forwarded-For names the client."""
    requests_per_minute: PositiveInt = 6
    """Nominations + removal requests per client IP (web and API)."""
    logins_per_minute: PositiveInt = 10
    """Admin login attempts per client IP."""
    session_hours: PositiveFloat = 12.0
    """Admin sessions last this long."""
    secure_cookies: bool = False
    """Mark cookies Secure (set it behind an HTTPS proxy)."""
    max_jobs: PositiveInt = 100
    """Web-triggered tests queued or running at once."""

    @field_validator("listen")
    @classmethod
    def _web_listen(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v

    _v_cidrs = field_validator("trusted_proxies")(_check_cidrs)


class MetricsSettings(_Section):
    """Prometheus metrics (prometheus-client; names in docs/operations.md)."""

    listen: str = ""
    """Own address for GET /metrics, e.g. "127.0.0.1:9125"; "" = none."""
    web: bool = True
    """Also serve /metrics on the [web] listener."""

    @field_validator("listen")
    @classmethod
    def _metrics_listen(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    smtp: SMTPSettings = SMTPSettings()
    tls: TLSSettings = TLSSettings()
    domains: DomainSettings = DomainSettings()
    relay: RelaySettings = RelaySettings()
    relaytest: RelayTestSettings = RelayTestSettings()
    auth: AuthSettings = AuthSettings()
    delivery: DeliverySettings = DeliverySettings()
    dnsbl: DNSBLSettings = DNSBLSettings()
    store: StoreSettings = StoreSettings()
    trace: TraceSettings = TraceSettings()
    reject: RejectSettings = RejectSettings()
    policyd: PolicydSettings = PolicydSettings()
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()
    aliases: dict[Address, list[Address]] = {}
    """Aliases: "address" = ["target", ...] (or one "target"), expanded recursively up to 10 levels."""

    @field_validator("aliases", mode="before")
    @classmethod
    def _one_target(cls, v: Any) -> Any:
        """`"a@x" = "b@y"` is shorthand for a one-element list."""
        return {k: [t] if isinstance(t, str) else t for k, t in v.items()} if isinstance(v, dict) else v

    # Paths derived from data_dir, so that one setting moves everything.
    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def users_path(self) -> Path:
        return Path(self.auth.users_file) if self.auth.users_file else self.data_path / "users"

    @property
    def tls_paths(self) -> tuple[Path, Path]:
        if self.tls.cert:
            return Path(self.tls.cert), Path(self.tls.key)
        return self.data_path / "tls" / "cert.pem", self.data_path / "tls" / "key.pem"


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a dotted key in TOML text: the table header, then the key inside it."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    table: list[str] = []
    best = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            table = [p.strip().strip('"') for p in line.strip("[]").split(".")]
            if table == keys[: len(table)] and best is None and len(table) == len(keys):
                best = n
            continue
        m = re.match(r'"([^"]+)"\s*=|([A-Za-z0-9_.-]+)\s*=', line)
        if m:
            full = table + ([m.group(1)] if m.group(1) else m.group(2).split("."))
            if full == keys[: len(full)]:
                return n
    return best


def load_text(text: str, source: str, only: str = "") -> Settings:
    """Validate TOML text; with `only`, just that table (every other one takes its defaults)."""
    data = config_file.parse(text, source)
    if only:
        data = {only: data[only]} if only in data else {}
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top)"
            line = _line_of(text, err["loc"])
            where = f"{source}:{line}" if line else source
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{where}: {key}: {msg}")
        raise ConfigError("\n".join(problems)) from None


def load(path: str | Path | None = None) -> Settings:
    """Read `path`, else ./relayguard.toml when present, else the built-in defaults."""
    found = config_file.read(path)
    return Settings() if found is None else load_text(*found)
