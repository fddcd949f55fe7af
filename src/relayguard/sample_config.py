"""The commented configuration `relayguard init` writes (a test checks it loads to the defaults)."""

from __future__ import annotations

_TEMPLATE = '''\
# relayguard configuration. Every setting shown is the built-in default unless noted;
# delete what you do not change. Check a file with: relayguard serve -c FILE (errors name key and line).

[server]
hostname = "{hostname}"        # used in the greeting, EHLO and Received headers
data_dir = "var"               # Maildirs (mail/), spool, queue, users file, TLS pair
log_level = "info"             # debug, info, warning, error
# log_file = "/var/log/relayguard/relayguard.log"   # default: standard error
# log_format = "json"          # default "kv": key=value lines

[smtp]
listen = ["127.0.0.1:2525"]            # inbound MX service; use ["0.0.0.0:25"] in production
submission_listen = ["127.0.0.1:2587"] # submission: AUTH (over TLS) required before MAIL
max_message_size = 52428800    # bytes; SIZE is advertised and enforced while streaming
max_recipients = 100           # per message; more get 452 4.5.3
max_line_length = 2048         # command line limit; longer lines get 500 5.5.2
soft_error_limit = 10          # after this many errors each error reply waits error_sleep
hard_error_limit = 20          # then 421 and disconnect
error_sleep = 1.0
timeout = 300.0                # idle seconds before 421 4.4.2
session_timeout = 1800.0       # whole-session limit
max_connections = 200          # in total; more get 421 4.3.2
max_connections_per_ip = 20    # per client address; more get 421 4.7.0
auth_attempts_per_minute = 10  # per client address, failed or not; more get 421 and disconnect
greet_pause = 0.0              # seconds to wait before the greeting; clients that talk first are refused
reverse_dns = false

[tls]
# cert = "/etc/relayguard/cert.pem"   # default: var/tls/cert.pem, made by `relayguard init`
# key = "/etc/relayguard/key.pem"

[domains]
local = ["localhost"]          # mail for these is delivered to var/mail/<domain>/<user>/

[relay]
trusted_networks = []          # CIDRs allowed to relay without AUTH; keep empty unless you must

[auth]
# users_file = "var/users"     # managed with `relayguard user add/del/list`
enforce_sender = true          # a logged-in user may use only their own address in MAIL FROM
# senders = {{ "alice@localhost" = ["@localhost"] }}   # extra addresses a user may send as

[delivery]
# transport = {{ "example.net" = "192.0.2.25:25" }}   # per-domain next hop, before MX lookup
smarthost = ""                 # "host:port": send all outbound mail there (AUTH below, over STARTTLS)
smarthost_user = ""
smarthost_password = ""
require_tls = []               # domains whose MX must offer STARTTLS with a valid certificate
dns_servers = []               # ["ip:port"]; empty = the system resolver
port = 25                      # port of MX hosts
connect_timeout = 30.0
command_timeout = 300.0
min_backoff = 300.0            # retry delays double from min to max (with jitter)
max_backoff = 4000.0
max_lifetime = 432000.0        # 5 days, then the sender gets a bounce
delay_warning = 0.0            # seconds before a "delayed" notice; 0 = never
max_connections = 50
max_connections_per_destination = 10
scan_interval = 60.0           # full rescan of the queue folder

[reject]                       # DNSBL checks of connecting clients (docs/reject.md)
dnsbl_sites = []               # postscreen syntax, e.g. ["zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org=127.0.[0..255].[0..3]*-2"]
threshold = 1                  # 554 when the summed weights reach this
check_at = "rcpt"              # or "connect": before the greeting, postscreen-style
on_unknown = "accept"          # or "defer": 450 when lists that did not answer could change the outcome
score_header = true            # X-Relayguard-DNSBL on accepted mail that scored
dns_servers = []               # ["ip:port"]; empty = [delivery] dns_servers, else the system resolver
timeout = 5.0
health_check = true            # RFC 5782 test points; lists that fail them are skipped
health_interval = 3600.0

# [policyd]                    # uncomment: `serve` also runs the Postfix policy server
# listen = "127.0.0.1:10040"   # Postfix: check_policy_service inet:127.0.0.1:10040

# [web]                        # uncomment: `serve` also runs the list's web pages and JSON API (docs/web.md)
# listen = "127.0.0.1:8025"
# admins = ["alice@localhost"] # users of the users file who may use /admin
# requests_per_minute = 6      # nominations + removal requests per client address
# trusted_proxies = []         # CIDRs of reverse proxies whose X-Forwarded-For is believed

# [metrics]                    # Prometheus: /metrics on the [web] listener, or on an address of its own
# listen = "127.0.0.1:9125"

[aliases]
# "postmaster@localhost" = ["alice@localhost"]
'''


def sample_config(hostname: str) -> str:
    return _TEMPLATE.format(hostname=hostname)
