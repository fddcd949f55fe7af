"""The DNSBL's web pages and JSON API through FastAPI's TestClient, with real relay tests:
FakeMTAs on loopback addresses (one relays to the canary), the lifecycle's own canary, a real
SQLite store. CSRF, rate limits, escaping, error pages, admin login, background tests."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from relay_fixtures import FakeMTA

from relayguard.config import load_text
from relayguard.dnsbl.lifecycle import Lifecycle, Policy
from relayguard.dnsbl.store import LISTED, Store
from relayguard.mta.users import UserDB
from relayguard.relaytest import RelayTestOptions
from relayguard.web import WebContext, create_app

CANARY = "canary.test"
ADMIN, ADMIN_PW = "alice@localhost", "alice-secret"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Web:
    """A TestClient on the app, with FakeMTAs on the app's own event loop."""

    def __init__(self, client: TestClient, ctx: WebContext) -> None:
        self.c, self.ctx, self.store = client, ctx, ctx.store
        self.ports: dict[str, int] = {}
        self.mtas: list[FakeMTA] = []

    def relay(self, ip: str, open_: bool = True, **kw) -> FakeMTA:
        """An SMTP server on `ip` that relays everything to the canary (or nothing)."""
        canary = self.ctx.lifecycle.canary
        assert canary is not None
        mta = FakeMTA(host=ip, accepts=lambda rcpt: open_, forward_to=canary.address,
                      forward_rcpt=f"relaytest@{CANARY}", **kw)
        self.ports[ip] = self.c.portal.call(mta.start)
        self.mtas.append(mta)
        return mta

    def token(self, path: str = "/nominate") -> str:
        r = self.c.get(path)
        m = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
        assert m, r.text
        return m.group(1)

    def post(self, path: str, data: dict, **kw):
        return self.c.post(path, data=dict(data, csrf_token=self.token()), follow_redirects=False, **kw)

    def wait_job(self, location: str, timeout: float = 20.0) -> dict:
        job_id = location.rsplit("/", 1)[1]
        deadline = time.monotonic() + timeout
        while True:
            j = self.c.get(f"/api/v1/jobs/{job_id}").json()
            if j["status"] != "running" or time.monotonic() > deadline:
                return j
            time.sleep(0.05)

    def login(self, user: str = ADMIN, password: str = ADMIN_PW):
        return self.post("/admin/login", {"user": user, "password": password, "next": "/admin"})


def settings_text(root: Path, web: str = "") -> str:
    return f"""
[server]
hostname = "mx.relayguard.test"
data_dir = "{root}/var"
[store]
url = "sqlite:///{root}/bl.db"
[dnsbl]
ttl = 600
negative_ttl = 300
[web]
admins = ["{ADMIN}"]
{web}
"""


@pytest.fixture
def make_web(tmp_path):
    opened: list[tuple[TestClient, Web]] = []

    def make(web: str = "", *, max_jobs: int | None = None, timeout: float = 5.0, **policy) -> Web:
        root = tmp_path / f"w{len(opened)}"
        settings = load_text(settings_text(root, web), "test.toml")
        users = UserDB(settings.users_path)
        users.set(ADMIN, ADMIN_PW)
        users.set("bob@localhost", "bob-secret")
        store = Store(settings.store.url)
        policy.setdefault("allow_private", True)
        policy.setdefault("cooldown", timedelta(0))
        policy.setdefault("zone", "bl.relayguard.test")
        w: Web | None = None
        lc = Lifecycle(store, Policy(ttl=600, negative_ttl=300, **policy),
                       RelayTestOptions(mode="confirm", canary_domain=CANARY, canary_listen="127.0.0.1:0",
                                        timeout=timeout, confirm_timeout=timeout),
                       targets=lambda ip: f"{ip}:{w.ports[ip]}")
        ctx = WebContext.open(settings, lifecycle=lc)
        ctx.own_lifecycle = ctx.own_store = True  # the app's lifespan starts and stops them
        if max_jobs is not None:
            ctx.jobs.max_running = max_jobs
        client = TestClient(create_app(ctx), raise_server_exceptions=False)
        client.__enter__()
        w = Web(client, ctx)
        opened.append((client, w))
        return w

    yield make
    for client, w in opened:
        for m in w.mtas:
            client.portal.call(m.stop)
        client.__exit__(None, None, None)


# Lookup ------------------------------------------------------------------------------------------


def test_lookup_listed_unlisted_and_unknown(make_web):
    w = make_web()
    w.ctx.lifecycle.add("192.0.2.7", reason="spam seen via it")
    w.ctx.lifecycle.add("198.51.100.0/24", reason="whole range relays")

    r = w.c.get("/lookup", params={"ip": "192.0.2.7"})
    assert r.status_code == 200 and 'id="status">LISTED' in r.text
    assert "manual: spam seen via it" in r.text and "7.2.0.192.bl.relayguard.test" in r.text
    assert "Seen by every resolver by" in r.text and "Request removal" in r.text

    j = w.c.get("/api/v1/lookup/192.0.2.7").json()
    assert j["listed"] and j["state"] == LISTED and j["code"] == "127.0.0.2" and j["listed_as"] == "192.0.2.7/32"
    assert "192.0.2.7" in j["txt"] and "$" not in j["txt"]
    change = j["last_change"]
    assert change["action"] == "listed" and not change["in_effect"]
    # effective = the change + TTL + negative TTL (600 + 300 s)
    from datetime import datetime
    at, eff = (datetime.fromisoformat(change[k].replace("Z", "+00:00")) for k in ("at", "effective_at"))
    assert eff - at == timedelta(seconds=900) and j["propagation_seconds"] == 900
    assert [e["action"] for e in j["history"]] == ["listed"]
    assert "actor" not in j["history"][0]  # who did it is for administrators

    net = w.c.get("/api/v1/lookup/198.51.100.77").json()
    assert net["listed"] and net["listed_as"] == "198.51.100.0/24" and net["reason"] == "manual: whole range relays"
    assert "Listed as part of" in w.c.get("/lookup?ip=198.51.100.77").text

    clean = w.c.get("/api/v1/lookup/203.0.113.5").json()
    assert not clean["listed"] and clean["state"] == "unknown" and clean["last_change"] is None
    r = w.c.get("/lookup?ip=203.0.113.5")
    assert 'id="status">NOT LISTED' in r.text and "never been nominated" in r.text

    v6 = w.c.get("/api/v1/lookup/2001:db8::25").json()
    assert v6["query"].endswith(".8.b.d.0.1.0.0.2.bl.relayguard.test") and len(v6["query"].split(".")) == 32 + 3

    status = w.c.get("/api/v1/status").json()
    assert status["counts"]["listed"] == 2 and status["propagation_seconds"] == 900


# Nominate and remove through forms and API, with real tests ---------------------------------------


def test_nomination_form_lists_an_open_relay_with_its_transcript(make_web):
    w = make_web()
    w.relay("127.0.0.5")
    r = w.post("/nominate", {"ip": "127.0.0.5", "reason": "spam via it"})
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    job = w.wait_job(r.headers["location"])
    assert job["status"] == "done" and job["answer"]["action"] == "listed" and job["answer"]["relays"]
    page = w.c.get(r.headers["location"]).text
    assert 'data-action="listed"' in page and "Takes effect everywhere by" in page

    look = w.c.get("/lookup?ip=127.0.0.5").text
    assert 'id="status">LISTED' in look and "open relay confirmed" in look
    assert 'class="outcome relayed"' in look and "arrived at the canary" in look  # the evidence transcript
    j = w.c.get("/api/v1/lookup/127.0.0.5").json()
    assert j["last_test"]["verdict"] == "open" and j["last_test"]["result"]["cases"]
    assert "requested_by" not in j["last_test"]
    (nom,) = w.store.nominations("127.0.0.5")
    assert (nom.via, nom.requester, nom.reason, nom.outcome) == ("web", "testclient", "spam via it", "listed")


def test_api_nominate_then_removal_after_the_fix(make_web):
    w = make_web()
    mta = w.relay("127.0.0.6")
    r = w.c.post("/api/v1/nominations", json={"ip": "127.0.0.6", "reason": "relay"})
    assert r.status_code in (200, 202), r.text
    job = r.json() if r.status_code == 200 else w.wait_job(r.headers["location"])
    assert job["answer"]["action"] == "listed"

    # still relaying: the removal request keeps it listed and says why
    r = w.c.post("/api/v1/removals", json={"ip": "127.0.0.6", "contact": "postmaster@example.net"})
    job = r.json() if r.status_code == 200 else w.wait_job(r.json()["location"])
    assert job["answer"]["action"] == "still-listed" and job["answer"]["listed"]

    mta.accepts = lambda rcpt: False  # the administrator closes the relay
    r = w.c.post("/api/v1/removals", json={"ip": "127.0.0.6", "contact": "postmaster@example.net", "reason": "fixed"})
    job = r.json() if r.status_code == 200 else w.wait_job(r.json()["location"])
    a = job["answer"]
    assert a["action"] == "delisted" and not a["listed"] and a["effective_at"]
    j = w.c.get("/api/v1/lookup/127.0.0.6").json()
    assert not j["listed"] and j["last_change"]["action"] == "delisted"
    assert j["last_test"]["verdict"] == "closed"
    (req1, req2) = w.store.removal_requests("127.0.0.6")
    assert (req1.outcome, req2.outcome) == ("still-listed", "delisted") and req2.contact == "postmaster@example.net"


def test_removal_form_answers_and_refusals(make_web):
    w = make_web()
    r = w.post("/removal", {"ip": "203.0.113.9"})  # not listed: answered at once, no test
    assert r.status_code == 303
    page = w.c.get(r.headers["location"]).text
    assert 'data-action="not-listed"' in page and "nothing to remove" in page
    r = w.post("/removal", {"ip": "not-an-ip"})
    assert r.status_code == 422 and "is not an IP address" in r.text and 'value="not-an-ip"' in r.text
    r = w.post("/removal", {"ip": "192.0.2.1", "contact": "nobody"})
    assert r.status_code == 422 and "contact" in r.text


def test_removal_confirmation_by_mailed_token(make_web):
    w = make_web(removal_confirm=True)
    sent: list[bytes] = []

    async def mailer(sender: str, rcpt: str, message: bytes) -> None:
        sent.append(message)

    w.ctx.lifecycle.mailer = mailer
    w.relay("127.0.0.8", open_=False)
    w.ctx.lifecycle.add("127.0.0.8", reason="was open")
    r = w.post("/removal", {"ip": "127.0.0.8", "contact": "postmaster@example.net"})
    job = w.wait_job(r.headers["location"])
    assert job["answer"]["action"] == "awaiting-confirmation" and len(sent) == 1
    token = re.search(rb"relayguard dnsbl confirm (\S+)", sent[0]).group(1).decode()
    page = w.c.get("/removal/confirm", params={"token": token})
    assert page.status_code == 200 and w.store.get("127.0.0.8").state == LISTED  # a GET never acts
    r = w.post("/removal/confirm", {"token": token})
    job = w.wait_job(r.headers["location"])
    assert job["answer"]["action"] == "delisted"
    r = w.post("/removal/confirm", {"token": "bogus"})
    assert r.status_code == 422 and "unknown confirmation token" in r.text


def test_tests_run_in_the_background_and_the_web_stays_responsive(make_web):
    w = make_web(timeout=3.0, max_jobs=1)
    w.relay("127.0.0.10", silent=True)  # never greets: the test waits for its timeout
    t0 = time.monotonic()
    r = w.c.post("/api/v1/nominations", json={"ip": "127.0.0.10"})
    assert r.status_code == 202 and time.monotonic() - t0 < 2.5
    job_url = r.json()["location"]
    assert w.c.get(job_url).json()["status"] == "running"
    t1 = time.monotonic()
    look = w.c.get("/lookup?ip=127.0.0.10")
    assert time.monotonic() - t1 < 1.0 and 'id="status">BEING TESTED' in look.text and "in progress" in look.text
    page = w.c.get("/jobs/" + job_url.rsplit("/", 1)[1]).text
    assert 'http-equiv="refresh"' in page and 'data-action="running"' in page
    busy = w.c.post("/api/v1/nominations", json={"ip": "127.0.0.11"})  # max_jobs = 1
    assert busy.status_code == 503
    job = w.wait_job(job_url)
    assert job["status"] == "done" and job["answer"]["action"] == "not-listed"
    assert w.c.get("/api/v1/lookup/127.0.0.10").json()["state"] == "not-listed"


# Guards ------------------------------------------------------------------------------------------


def test_forms_refuse_posts_without_a_valid_csrf_token(make_web):
    w = make_web()
    for path, data in (("/nominate", {"ip": "192.0.2.1"}), ("/removal", {"ip": "192.0.2.1"}),
                       ("/removal/confirm", {"token": "x"}), ("/admin/login", {"user": ADMIN, "password": ADMIN_PW})):
        r = w.c.post(path, data=data, follow_redirects=False)
        assert r.status_code == 403 and "The form was not sent from this site" in r.text, path
    good = w.token()
    r = w.c.post("/nominate", data={"ip": "192.0.2.1", "csrf_token": good + "x"})
    assert r.status_code == 403
    # a token we did not sign, planted in both places (cookie injection), is refused
    w.c.cookies.set("rg_csrf", "forged")
    r = w.c.post("/nominate", data={"ip": "192.0.2.1", "csrf_token": "forged"})
    assert r.status_code == 403
    w.c.cookies.clear()
    good = w.token()
    r = w.c.post("/nominate", data={"ip": "192.0.2.1", "csrf_token": good}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    # logged in, an admin action without the token does nothing
    assert w.login().status_code == 303
    r = w.c.post("/admin/list", data={"entry": "192.0.2.99", "reason": "csrf"})
    assert r.status_code == 403 and w.store.get("192.0.2.99") is None
    assert w.store.nominations("192.0.2.1") == []


def test_rate_limit_per_client_address(make_web):
    w = make_web('requests_per_minute = 3\ntrusted_proxies = ["127.0.0.0/8"]')
    for _ in range(3):
        assert w.c.post("/api/v1/removals", json={"ip": "203.0.113.1"}).status_code == 200
    r = w.c.post("/api/v1/removals", json={"ip": "203.0.113.1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "too many requests" in r.json()["detail"]
    r = w.post("/nominate", {"ip": "203.0.113.2"})  # forms share the limit
    assert r.status_code == 429 and "too many requests" in r.text
    # the TestClient's peer ("testclient") is no trusted proxy: X-Forwarded-For changes nothing
    r = w.c.post("/api/v1/removals", json={"ip": "203.0.113.1"}, headers={"X-Forwarded-For": "198.51.100.1"})
    assert r.status_code == 429
    assert len(w.store.removal_requests("203.0.113.1")) == 3


def test_rate_limit_behind_a_trusted_proxy_counts_each_client(make_web):
    import ipaddress

    from relayguard.web.security import RateLimiter, client_address

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("10.0.0.1", "198.51.100.1, 10.0.0.2", trusted) == "198.51.100.1"
    assert client_address("192.0.2.9", "198.51.100.1", trusted) == "192.0.2.9"  # untrusted peer: its own address
    assert client_address("10.0.0.1", "garbage", trusted) == "10.0.0.1"
    lim = RateLimiter(2, 60.0)
    assert lim.hit("a", 0) == 0 and lim.hit("a", 1) == 0 and lim.hit("a", 2) == pytest.approx(58)
    assert lim.hit("b", 2) == 0 and lim.hit("a", 61) == 0  # a sliding window per key


def test_hostile_input_is_escaped_everywhere(make_web):
    w = make_web()
    w.ctx.lifecycle.add("192.0.2.50", reason=HOSTILE)
    pages = [w.c.get("/lookup?ip=192.0.2.50"), w.c.get("/lookup", params={"ip": HOSTILE}),
             w.c.get("/nominate", params={"ip": HOSTILE}), w.c.get("/removal", params={"ip": '"><b>x'}),
             w.post("/removal", {"ip": "192.0.2.50", "contact": HOSTILE}),
             w.post("/nominate", {"ip": HOSTILE, "reason": HOSTILE}),
             w.c.get("/removal/confirm", params={"token": HOSTILE})]
    w.login()
    pages += [w.c.get("/admin"), w.c.get("/admin/audit"), w.c.get("/admin/listings"), w.c.get("/lookup?ip=192.0.2.50"),
              w.post("/admin/list", {"entry": HOSTILE, "reason": "x"}),
              w.post("/admin/delist", {"entry": "192.0.2.51", "reason": HOSTILE})]
    for r in pages:
        assert "<script>" not in r.text and "<img src=x" not in r.text and "<b>x" not in r.text, r.request.url
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "&lt;script&gt;" in pages[0].text and pages[1].status_code == 422 and "is not an IP address" in pages[1].text


def test_not_found_invalid_and_server_errors(make_web, monkeypatch):
    w = make_web()
    r = w.c.get("/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html") and "no such page" in r.text
    r = w.c.get("/api/v1/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert w.c.get("/api/v1/lookup/999.1.1.1").status_code == 422
    assert w.c.get("/api/v1/jobs/nope").status_code == 404
    assert w.c.get("/jobs/nope").status_code == 404
    r = w.c.post("/api/v1/nominations", json={"reason": "no ip"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ip"]
    r = w.c.post("/api/v1/nominations", json={"ip": "x" * 100})
    assert r.status_code == 422
    r = w.c.post("/api/v1/removals", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert w.c.get("/admin/listings?page_no=abc").status_code in (303, 422)
    assert w.c.put("/nominate").status_code == 405

    def boom(*a, **kw):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(w.ctx.store, "counts", boom)
    r = w.c.get("/")
    assert r.status_code == 500 and "Server error" in r.text
    assert "Traceback" not in r.text and "secret internals" not in r.text and "RuntimeError" not in r.text
    r = w.c.get("/api/v1/status")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}


def test_the_lists_refusals_are_shown_plainly(make_web):
    w = make_web(allow_private=False)
    r = w.c.post("/api/v1/nominations", json={"ip": "10.0.0.1"})
    assert r.status_code == 400 and "not a public address" in r.json()["detail"] and r.json()["status"] == "error"
    r = w.post("/nominate", {"ip": "10.0.0.1"})
    assert r.status_code == 422 and "not a public address" in r.text and 'value="10.0.0.1"' in r.text
    # no canary configured for a public address: the answer says what is missing
    w.ctx.lifecycle.canary, canary = None, w.ctx.lifecycle.canary
    r = w.c.post("/api/v1/nominations", json={"ip": "8.8.8.8"})  # never contacted: no canary, no test
    w.ctx.lifecycle.canary = canary
    assert r.status_code == 400 and "need a canary" in r.json()["detail"]


def test_openapi_schema_documents_the_api(make_web):
    w = make_web()
    schema = w.c.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {"/api/v1/status", "/api/v1/lookup/{ip}", "/api/v1/nominations", "/api/v1/removals",
                          "/api/v1/removals/confirm", "/api/v1/jobs/{job_id}"}
    assert "202" in paths["/api/v1/nominations"]["post"]["responses"]
    assert "LookupOut" in schema["components"]["schemas"]
    assert w.c.get("/docs").status_code == 404  # no page that loads scripts from elsewhere


# Admin -------------------------------------------------------------------------------------------


def test_admin_pages_need_a_login(make_web):
    w = make_web()
    for path in ("/admin", "/admin/listings", "/admin/pending", "/admin/audit"):
        r = w.c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/admin/login?next={path}", path
    r = w.post("/admin/list", {"entry": "192.0.2.1", "reason": "x"})
    assert r.status_code == 303 and "/admin/login" in r.headers["location"] and w.store.get("192.0.2.1") is None
    assert w.login(password="wrong").status_code == 401
    assert w.login("bob@localhost", "bob-secret").status_code == 401  # a user, but no administrator
    assert w.login("nobody@localhost", "x").status_code == 401
    w.c.cookies.set("rg_session", "forged.cookie.value")
    assert w.c.get("/admin", follow_redirects=False).status_code == 303
    # an open redirect through ?next= is not possible
    r = w.post("/admin/login", {"user": ADMIN, "password": ADMIN_PW, "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/admin"


def test_admin_lists_delists_and_sees_the_audit_log(make_web):
    w = make_web()
    r = w.login()
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    assert "rg_session" in w.c.cookies
    home = w.c.get("/admin")
    assert home.status_code == 200 and "Recent changes" in home.text and "Log out alice@localhost" in home.text

    r = w.post("/admin/list", {"entry": "192.0.2.0/28", "reason": "abuse desk request", "expires_days": "30"})
    assert r.status_code == 200 and 'data-action="listed"' in r.text and "Takes effect everywhere by" in r.text
    h = w.store.get("192.0.2.0/28")
    assert h.listed and h.expires_at is not None and h.reason == "manual: abuse desk request"
    r = w.post("/admin/list", {"entry": "192.0.2.1", "reason": ""})
    assert r.status_code == 422 and "needs a reason" in r.text
    r = w.post("/admin/list", {"entry": "192.0.2.1", "reason": "x", "expires_days": "-1"})
    assert r.status_code == 422
    r = w.post("/admin/delist", {"entry": "192.0.2.0/28", "reason": "listed by mistake"})
    assert r.status_code == 200 and 'data-action="delisted"' in r.text and not w.store.get("192.0.2.0/28").listed

    assert "listed by mistake" in w.c.get("/admin").text  # recent changes on the overview
    audit = w.c.get("/admin/audit").text
    assert "listed by mistake" in audit and "abuse desk request" in audit and "alice@localhost (web)" in audit
    assert audit.index("listed by mistake") < audit.index("abuse desk request")  # newest first
    listings = w.c.get("/admin/listings?state=not-listed").text
    assert "192.0.2.0/28" in listings
    assert w.c.get("/admin/pending").status_code == 200
    # the lookup page shows administrators who did what, and their actions
    assert w.post("/admin/list", {"entry": "192.0.2.77", "reason": "single host"}).status_code == 200
    look = w.c.get("/lookup?ip=192.0.2.77").text
    assert "alice@localhost (web)" in look and 'action="/admin/delist"' in look and 'action="/admin/retest"' in look

    w.relay("127.0.0.12", open_=False)
    r = w.post("/admin/retest", {"ip": "127.0.0.12"})
    assert r.status_code == 303
    assert w.wait_job(r.headers["location"])["answer"]["action"] == "not-listed"

    cookie = w.c.cookies["rg_session"]
    r = w.post("/admin/logout", {})
    assert r.status_code == 303
    w.c.cookies.set("rg_session", cookie)  # a copy of the old cookie is dead too
    assert w.c.get("/admin", follow_redirects=False).status_code == 303


def test_login_attempts_are_rate_limited(make_web):
    w = make_web("logins_per_minute = 2")
    assert w.login(password="a").status_code == 401
    assert w.login(password="b").status_code == 401
    r = w.login()
    assert r.status_code == 429 and "Retry-After" in r.headers


def test_secret_is_kept_in_the_data_folder(tmp_path):
    from relayguard.web.security import load_secret

    p = tmp_path / "var" / "web-secret"
    s1 = load_secret(p)
    assert len(s1) == 32 and load_secret(p) == s1 and (p.stat().st_mode & 0o777) == 0o600


def test_web_settings_and_when_serve_starts_it():
    from relayguard.config import ConfigError, Settings
    from relayguard.web import configured

    assert configured(Settings())  # no file at all: the built-in defaults run everything
    assert not configured(load_text('[smtp]\nlisten = ["127.0.0.1:2525"]\n', "a.toml"))  # no [web] table
    assert configured(load_text('[web]\nlisten = "127.0.0.1:8025"\n', "b.toml"))
    assert not configured(load_text('[web]\nlisten = ""\n', "c.toml"))
    with pytest.raises(ConfigError, match=r"d.toml:2: web.listen: 'nowhere' has no port"):
        load_text('[web]\nlisten = "nowhere"\n', "d.toml")
    with pytest.raises(ConfigError, match=r"web.trusted_proxies"):
        load_text('[web]\ntrusted_proxies = ["not-a-net"]\n', "e.toml")
    with pytest.raises(ConfigError, match=r"web.requests_per_minute"):
        load_text("[web]\nrequests_per_minute = 0\n", "f.toml")
