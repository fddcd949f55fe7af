"""dnsbl_sites in Postfix postscreen syntax (pure): parsing, filters, weights, errors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.config import ConfigError, load_text
from relayguard.dnsbl.sites import DEFAULT_CHECK_SITES, Filter, Site, SiteError, parse_filter, parse_site, parse_sites, zones


def test_plain_zone_counts_any_listing_with_weight_one() -> None:
    s = parse_site("zen.spamhaus.org")
    assert s == Site("zen.spamhaus.org", None, 1)
    assert s.matches("127.0.0.2") and s.matches("127.0.0.200")
    assert str(s) == "zen.spamhaus.org"


def test_filter_and_weight() -> None:
    s = parse_site("zen.spamhaus.org=127.0.0.[2..11]*3")
    assert s.zone == "zen.spamhaus.org" and s.weight == 3
    assert [s.matches(f"127.0.0.{n}") for n in (1, 2, 11, 12)] == [False, True, True, False]
    assert not s.matches("127.0.1.2")
    assert str(s) == "zen.spamhaus.org=127.0.0.[2..11]*3"


def test_semicolon_lists_mixed_with_ranges_in_any_octet() -> None:
    s = parse_site("list.dnswl.org=127.0.[2..15].[0;2..3]*-2")
    assert s.weight == -2
    assert s.matches("127.0.2.0") and s.matches("127.0.15.3") and s.matches("127.0.9.2")
    assert not s.matches("127.0.9.1") and not s.matches("127.0.1.0") and not s.matches("127.0.0.255")
    assert parse_site("wl.mailspike.net=127.0.0.[17;18]*-1").matches("127.0.0.18")


def test_allowlist_weights_and_signs() -> None:
    assert parse_site("swl.spamhaus.org*-4").weight == -4
    assert parse_site("a.test*+2").weight == 2
    assert parse_site("a.test*0").weight == 0


def test_zone_is_normalised() -> None:
    assert parse_site("  BL.Example.TEST.=127.0.0.2 ").zone == "bl.example.test"


def test_entries_split_on_commas_and_whitespace_and_zones_deduplicate() -> None:
    sites = parse_sites(["a.test*2, b.test=127.0.0.4", "a.test=127.0.0.[5;6]*-1\n\tc.test", ""])
    assert [str(s) for s in sites] == ["a.test*2", "b.test=127.0.0.4", "a.test=127.0.0.[5;6]*-1", "c.test"]
    assert zones(sites) == ["a.test", "b.test", "c.test"]


@pytest.mark.parametrize("entry, message", [
    ("", "empty"),
    ("a.test=", "'=' without a filter"),
    ("a.test=127.0.0", "four dot-separated parts"),
    ("a.test=127.0.0.0.1", "four dot-separated parts"),
    ("a.test=127.0.0.256", "out of range"),
    ("a.test=127.0.0.[2..1]", "runs backwards"),
    ("a.test=127.0.0.[]", "empty pattern"),
    ("a.test=127.0.0.[2..11", "unbalanced"),
    ("a.test=127.0.0.2..11]", "unbalanced"),
    ("a.test=127.0.0.[[2]]", "unbalanced"),
    ("a.test=127.0.0.[2;;3]", "not a number"),
    ("a.test=127.0.0.x", "not a number"),
    ("a.test=127.0.0.-1", "not a number"),
    ("a.test*", "not an integer"),
    ("a.test*1.5", "not an integer"),
    ("a.test*two", "not an integer"),
    ("=127.0.0.2", "no zone name"),
    ("a..test", "not a valid DNS label"),
    ("-a.test", "not a valid DNS label"),
    ("a b.test=127.0.0.2", "not a valid DNS label"),
    ("a" * 64 + ".test", "not a valid DNS label"),
    (".".join(["abcdefgh"] * 30), "longer than 253"),
])
def test_errors_quote_the_entry_and_say_why(entry: str, message: str) -> None:
    with pytest.raises(SiteError) as e:
        parse_site(entry)
    assert message in str(e.value)
    if entry:
        assert repr(entry.strip()) in str(e.value)


def test_config_errors_name_file_line_and_key() -> None:
    text = '[reject]\nthreshold = 2\ndnsbl_sites = ["ok.test", "bad.test=127.0.0.[9..2]"]\n'
    with pytest.raises(ConfigError) as e:
        load_text(text, "relayguard.toml")
    assert "relayguard.toml:3: reject.dnsbl_sites: 'bad.test=127.0.0.[9..2]': range '9..2' runs backwards" in str(e.value)
    ok = load_text('[reject]\ndnsbl_sites = ["a.test=127.0.0.[2..11]*3", "b.test*-2"]\n', "x")
    assert ok.reject.dnsbl_sites == ["a.test=127.0.0.[2..11]*3", "b.test*-2"]


def test_default_public_set_parses_and_never_matches_error_codes() -> None:
    sites = parse_sites(DEFAULT_CHECK_SITES)
    assert len(zones(sites)) == len(sites)
    for s in sites:
        for code in ("127.255.255.252", "127.255.255.254", "127.255.255.255", "127.0.0.255" if s.weight > 0 else "0.0.0.0"):
            assert not s.matches(code), (s, code)


# Properties ---------------------------------------------------------------------------------------

octet_spec = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: (min(t), max(t))),
                      min_size=1, max_size=4).map(tuple)
filters = st.tuples(octet_spec, octet_spec, octet_spec, octet_spec).map(Filter)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
zone_names = st.lists(labels, min_size=1, max_size=4).map(".".join)
site_values = st.builds(Site, zone_names, st.none() | filters, st.integers(-99, 99))


@given(site_values)
def test_rendering_round_trips(site: Site) -> None:
    again = parse_site(str(site))
    assert again.zone == site.zone and again.weight == site.weight
    assert (again.filter is None) == (site.filter is None)
    if site.filter is not None:
        assert again.filter is not None
        for octet in range(4):  # the same sets of numbers (rendering may merge equal one-number ranges)
            want = {n for lo, hi in site.filter.octets[octet] for n in range(lo, hi + 1)}
            got = {n for lo, hi in again.filter.octets[octet] for n in range(lo, hi + 1)}
            assert got == want


@given(filters, st.integers(0, 2**32 - 1))
def test_filter_matches_exactly_the_octet_sets(f: Filter, value: int) -> None:
    ip = ipaddress.IPv4Address(value)
    expected = all(any(lo <= b <= hi for lo, hi in spec) for b, spec in zip(ip.packed, f.octets))
    assert f.matches(str(ip)) is expected
    assert parse_filter(str(f)).matches(ip) is expected


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_site_error(text: str) -> None:
    try:
        sites = parse_sites([text])
    except SiteError as e:
        assert str(e)
        return
    for s in sites:
        assert parse_site(str(s)) == s or s.filter is not None


@given(st.text(alphabet="0123456789.[];*=-abc", max_size=40))
def test_filter_like_text_never_crashes(text: str) -> None:
    try:
        parse_site("z.test=" + text)
    except SiteError:
        pass
