"""The streaming filter that removes a client's own X-Relayguard-DNSBL fields (issue 6):
fixed cases, then arbitrary chunking and arbitrary header sections (hypothesis)."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.mta.header_filter import MAX_HELD, HeaderFilter


def run(data: bytes, cuts: list[int] | None = None, f: HeaderFilter | None = None) -> bytes:
    """Feed `data` cut at the given offsets; the stored message."""
    f = f or HeaderFilter()
    edges = [0, *sorted(c for c in (cuts or []) if 0 < c < len(data)), len(data)]
    out = b"".join(f.feed(data[a:b]) for a, b in zip(edges, edges[1:]))
    return out + f.flush()


def reference(data: bytes, names: tuple[str, ...] = ("x-relayguard-dnsbl",)) -> bytes:
    """The same rules, on the whole message at once, line by line."""
    out, dropping, in_headers = [], False, True
    for line in data.splitlines(keepends=True):
        if not in_headers:
            out.append(line)
            continue
        if line in (b"\r\n", b"\n"):
            in_headers = False
            out.append(line)
            continue
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        name, colon, _ = line.partition(b":")
        dropping = bool(colon) and name.rstrip(b" \t").lower().decode("latin-1") in names
        if not dropping:
            out.append(line)
    return b"".join(out)


SPAM = (b"From: a@example.org\r\n"
        b"X-Relayguard-DNSBL: score=0 threshold=3\r\n"
        b"Subject: hello\r\n"
        b"x-relayguard-dnsbl :score=0\r\n"
        b"\tthreshold=3 folded\r\n"
        b" more\r\n"
        b"To: b@example.net\r\n"
        b"X-RELAYGUARD-DNSBL:\r\n"
        b"X-Relayguard-DNSBL-Note: kept (another name)\r\n"
        b"\r\n"
        b"X-Relayguard-DNSBL: in the body, kept\r\n"
        b"body\r\n")

CLEAN = (b"From: a@example.org\r\n"
         b"Subject: hello\r\n"
         b"To: b@example.net\r\n"
         b"X-Relayguard-DNSBL-Note: kept (another name)\r\n"
         b"\r\n"
         b"X-Relayguard-DNSBL: in the body, kept\r\n"
         b"body\r\n")


def test_forged_fields_are_removed_with_their_folds_body_untouched():
    f = HeaderFilter()
    assert run(SPAM, f=f) == CLEAN
    assert f.removed == 3 and f.done


@pytest.mark.parametrize("size", [1, 2, 3, 7, 19, 20, 21, 64])
def test_any_fixed_chunk_size(size):
    assert run(SPAM, list(range(size, len(SPAM), size))) == CLEAN


def test_after_the_header_section_chunks_pass_as_they_are():
    f = HeaderFilter()
    assert f.feed(b"Subject: x\r\n\r\n") == b"Subject: x\r\n\r\n" and f.done
    body = b"X-Relayguard-DNSBL: score=0\r\n"
    assert f.feed(body) is body


def test_no_header_section_and_messages_without_a_final_line_end():
    assert run(b"\r\nX-Relayguard-DNSBL: 0\r\n") == b"\r\nX-Relayguard-DNSBL: 0\r\n"
    assert run(b"") == b""
    assert run(b"X-Relayguard-DNS", [3, 9]) == b"X-Relayguard-DNS"  # unfinished, no colon: flush keeps it
    assert run(b"X-Relayguard-DNSBL: 0") == b""


def test_lines_without_colon_are_kept_and_do_not_end_the_header_section():
    data = b"Subject: a\r\nnot a field\r\nX-Relayguard-DNSBL: 0\r\n\r\nb\r\n"
    assert run(data, [5, 15, 22]) == b"Subject: a\r\nnot a field\r\n\r\nb\r\n"


def test_a_continuation_of_a_kept_field_is_kept():
    data = b"Subject: a\r\n b\r\nX-Relayguard-DNSBL: 0\r\n c\r\nTo: d\r\n e\r\n\r\n"
    assert run(data) == b"Subject: a\r\n b\r\nTo: d\r\n e\r\n\r\n"


def test_cr_and_lf_split_across_chunks():
    data = b"X-Relayguard-DNSBL: 0\r\n\r\nbody\r\n"
    for cut in range(len(data) + 1):
        assert run(data, [cut]) == b"\r\nbody\r\n", cut


def test_held_back_bytes_are_bounded():
    f = HeaderFilter()
    line = b"X-Relayguard-DNSBL" + b" " * (3 * MAX_HELD) + b": 0\r\n"
    out = b"".join(f.feed(line[i:i + 1]) for i in range(len(line)))
    assert out == b"" and f.removed == 1
    f = HeaderFilter()
    for i in range(len(line)):
        f.feed(line[i:i + 1])
        assert len(f._held) <= MAX_HELD + 1


def test_other_names_and_bad_names():
    f = HeaderFilter(["X-Spam-Score", "X-Relayguard-DNSBL"])
    assert run(b"x-spam-score: 9\r\nX-Relayguard-DNSBL: 0\r\nA: b\r\n\r\n", [4], f) == b"A: b\r\n\r\n"
    for bad in ([], [""], ["a b"], ["a:"]):
        with pytest.raises(ValueError):
            HeaderFilter(bad)


# Hypothesis ------------------------------------------------------------------------------------

_NAMES = st.sampled_from(["X-Relayguard-DNSBL", "x-relayguard-dnsbl", "X-RELAYGUARD-dnsbl", "X-Relayguard-DNSB",
                          "X-Relayguard-DNSBLX", "Subject", "Received", "X-Relayguard"])
_TEXT = st.text(st.sampled_from("abc =;:-.\t0123"), max_size=30).map(lambda s: s.encode())


def _fields(blanks: list[bytes]) -> st.SearchStrategy[bytes]:
    """A field: name, blanks before the colon, value, folded continuation lines."""
    return st.builds(lambda name, blank, value, folds: name.encode() + blank + b":" + value + b"\r\n"
                     + b"".join(ws + fold + b"\r\n" for ws, fold in folds),
                     _NAMES, st.sampled_from(blanks), _TEXT,
                     st.lists(st.tuples(st.sampled_from([b" ", b"\t"]), _TEXT), max_size=3))


_FIELD = _fields([b"", b" ", b"\t ", b"  "])
_ODD = st.sampled_from([b"no colon here\r\n", b"X-Relayguard-DNSBL\r\n", b" stray fold\r\n"])
_MESSAGE = st.builds(lambda lines, body: b"".join(lines) + b"\r\n" + body,
                     st.lists(st.one_of(_FIELD, _FIELD, _FIELD, _ODD), max_size=12),
                     st.lists(st.one_of(_FIELD, _TEXT.map(lambda t: t + b"\r\n")), max_size=4).map(b"".join))


@settings(max_examples=400, deadline=None)
@given(_MESSAGE, st.lists(st.integers(0, 400), max_size=40))
def test_any_chunking_gives_the_reference_result(data, cuts):
    want = reference(data)
    assert run(data, cuts) == want
    assert run(data, list(range(len(data)))) == want  # byte by byte


@settings(max_examples=300, deadline=None)
@given(st.lists(_fields([b""]), max_size=10).map(b"".join), st.lists(st.integers(0, 300), max_size=20))
def test_no_parser_finds_the_field_afterwards(headers, cuts):
    """Python's email parser (no blanks before the colon: it takes those for the body)."""
    out = run(headers + b"\r\nbody\r\n", cuts)
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    assert msg.get_all("X-Relayguard-DNSBL") is None
    kept = [line for line in headers.split(b"\r\n") if line and line[:1] not in b" \t"
            and line.partition(b":")[0].rstrip(b" \t").lower() != b"x-relayguard-dnsbl"]
    assert len(msg.items()) == len(kept)
    assert out.endswith(b"\r\nbody\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=20))
def test_arbitrary_bytes_chunking_does_not_matter(data, cuts):
    assert run(data, cuts) == run(data)
