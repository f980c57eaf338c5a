"""edgeswarm.protocol.httpspec: RFC 9110 ranges and conditionals, as pure functions."""

from __future__ import annotations

import calendar
import email
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edgeswarm.errors import HttpError
from edgeswarm.protocol.httpspec import (
    MAX_PARTS,
    Validators,
    byteranges,
    check_json_body,
    coalesce,
    content_type,
    http_date,
    not_modified,
    parse_ranges,
    precondition_failed,
    range_applies,
    served_type,
)

# RFC 9110 5.6.7: the same instant in the three formats a recipient must accept.
RFC_INSTANT = calendar.timegm((1994, 11, 6, 8, 49, 37))
IMF_FIXDATE = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850_DATE = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME_DATE = "Sun Nov  6 08:49:37 1994"

ETAG = '"' + "ab" * 32 + '"'
V = Validators(ETAG, RFC_INSTANT)


def range_error(header: str, size: int) -> HttpError:
    with pytest.raises(HttpError) as err:
        parse_ranges(header, size)
    return err.value


# -- parse_ranges: what is served ---------------------------------------------


def test_no_range_header_means_the_whole_file():
    assert parse_ranges(None, 100) is None


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=0-0", (0, 0)),
        ("bytes=99-99", (99, 99)),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 99)),
        ("bytes=99-", (99, 99)),
        ("bytes=90-500", (90, 99)),  # last clamped to the file
        ("bytes=-10", (90, 99)),  # suffix: the last 10 bytes
        ("bytes=-1", (99, 99)),
        ("bytes=-100", (0, 99)),
        ("bytes=-1000", (0, 99)),  # a suffix longer than the file is the whole file
        ("BYTES=0-9", (0, 9)),  # the unit is case-insensitive
        ("Bytes=0-9", (0, 9)),
        ("  bytes=0-9  ", (0, 9)),
        ("bytes = 0-9", (0, 9)),
        ("bytes= 5-6 ", (5, 6)),
        ("bytes=0-9,", (0, 9)),  # empty list elements are allowed and ignored
        ("bytes=, 0-9 ,", (0, 9)),
    ],
)
def test_parse_range_satisfiable(header, span):
    assert parse_ranges(header, 100) == [span]


@pytest.mark.parametrize("header", ["items=0-9", "none=0-1", "pages=1-2,4-5", "x=garbage"])
def test_parse_range_ignores_other_units(header):
    """RFC 9110 14.2: a Range with an unknown unit is ignored; the whole file is served."""
    assert parse_ranges(header, 100) is None


# -- parse_ranges: what is refused --------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "0-9",
        "bytes 0-9",
        "bytes=",
        "bytes=,",
        "bytes= , ,",
        "bytes=-",
        "bytes=5",
        "bytes=a-b",
        "bytes=0x1-2",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=-5-",
        "bytes=1-2-3",
        "bytes=1.5-2",
        "bytes=1 - 2",
        "bytes=--5",
        "bytes=9-3",  # last before first
        "bytes=1-0",
    ],
)
def test_parse_range_malformed_is_400(header):
    err = range_error(header, 100)
    assert err.status == 400
    assert "Content-Range" not in err.headers


def test_a_last_byte_of_many_digits_is_the_end():
    """30 nines got a 400 (a cap of 19 digits against huge numbers): RFC 9110 makes a last byte past the end the end,
    and a suffix longer than the file the whole file (an adversarial session)."""
    nines = "9" * 30
    assert parse_ranges(f"bytes=0-{nines}", 100) == [(0, 99)]
    assert parse_ranges(f"bytes=-{nines}", 100) == [(0, 99)]
    assert range_error(f"bytes={nines}-", 100).status == 416
    assert range_error(f"bytes=0-{'9' * 101}", 100).status == 400  # a hundred digits at most: no one means more


def test_parse_range_last_before_first_says_so():
    assert "last byte before first" in range_error("bytes=9-3", 100).message


def test_parse_range_error_message_does_not_echo_a_huge_header():
    for header in ["x" * 10_000, "bytes=" + "y" * 10_000]:
        assert len(range_error(header, 100).message) < 200


# -- parse_ranges: several ranges (RFC 9110 14.2, 15.3.7) -----------------------


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-1,5-6", [(0, 1), (5, 6)]),
        ("bytes=0-9,20-29", [(0, 9), (20, 29)]),
        ("bytes=20-29,0-9", [(20, 29), (0, 9)]),  # disjoint: the request's order is kept
        ("bytes=-5,0-4", [(95, 99), (0, 4)]),
        ("bytes=0-0,2-2,4-4", [(0, 0), (2, 2), (4, 4)]),
        ("bytes=0-9, 90-", [(0, 9), (90, 99)]),
    ],
)
def test_several_disjoint_ranges_are_each_a_part(header, spans):
    assert parse_ranges(header, 100) == spans


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-1, 0-1", [(0, 1)]),  # the same range twice: one plain 206
        ("bytes=0-9,5-14", [(0, 14)]),  # overlapping
        ("bytes=0-9,10-19", [(0, 19)]),  # touching
        ("bytes=-5,0-", [(0, 99)]),  # the whole file, asked for twice over
        ("bytes=0-0,1-1,2-2", [(0, 2)]),
        ("bytes=50-59,0-9,55-70", [(0, 9), (50, 70)]),  # coalesced: ascending order
        ("bytes=30-39,0-49", [(0, 49)]),  # one inside another
    ],
)
def test_overlapping_or_touching_ranges_are_coalesced(header, spans):
    """RFC 9110 15.3.7.2: a server may coalesce overlapping ranges; a multipart body then never repeats a byte."""
    assert parse_ranges(header, 100) == spans


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-9,200-300", [(0, 9)]),
        ("bytes=500-,-0,90-", [(90, 99)]),
        ("bytes=100-,0-0,20-29", [(0, 0), (20, 29)]),
    ],
)
def test_unsatisfiable_ranges_beside_satisfiable_ones_are_dropped(header, spans):
    """Never 416 while one range can be served (RFC 9110 15.5.17: 416 only when none overlaps the file)."""
    assert parse_ranges(header, 100) == spans


@pytest.mark.parametrize("header", ["bytes=100-,200-300", "bytes=-0,100-", "bytes=150-160, 101-"])
def test_several_ranges_all_unsatisfiable_is_416(header):
    err = range_error(header, 100)
    assert err.status == 416
    assert err.headers == {"Content-Range": "bytes */100"}


@pytest.mark.parametrize("header", ["bytes=0-9,abc", "bytes=0-9,9-3", "bytes=xyz,0-9", "bytes=0-1,5"])
def test_a_malformed_range_among_others_is_400(header):
    assert range_error(header, 100).status == 400


def test_more_parts_than_the_cap_give_the_whole_file():
    """RFC 9110 14.2: a server may ignore a Range of many small ranges; the whole file with 200 is a valid answer."""
    many = ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_PARTS + 1))
    assert parse_ranges(f"bytes={many}", 10_000) is None
    at_cap = ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_PARTS))
    assert len(parse_ranges(f"bytes={at_cap}", 10_000)) == MAX_PARTS


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)).map(sorted), min_size=1, max_size=12))
def test_coalesce_keeps_exactly_the_bytes_asked_for(pairs):
    spans = [(a, b) for a, b in pairs]
    merged = coalesce(spans)
    covered = {x for a, b in spans for x in range(a, b + 1)}
    assert {x for a, b in merged for x in range(a, b + 1)} == covered
    assert all(merged[k][1] + 1 < merged[k + 1][0] for k in range(len(merged) - 1))  # sorted, apart, never touching


def test_byteranges_framing_as_nginx_lays_it_out():
    heads, close = byteranges([(0, 9), (20, 29)], 100, "video/mp4", "B0UND")
    assert heads == [
        b"\r\n--B0UND\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/100\r\n\r\n",
        b"\r\n--B0UND\r\nContent-Type: video/mp4\r\nContent-Range: bytes 20-29/100\r\n\r\n",
    ]
    assert close == b"\r\n--B0UND--\r\n"


def test_byteranges_body_reads_back_with_pythons_email_parser():
    """The body a node builds from the framing parses, part by part, with the standard library's MIME parser."""
    data = bytes(range(100))
    spans = [(0, 9), (20, 29), (95, 99)]
    heads, close = byteranges(spans, len(data), "application/octet-stream", "xyz123")
    body = b"".join(h + data[a : b + 1] for h, (a, b) in zip(heads, spans, strict=True)) + close
    msg = email.message_from_bytes(b"Content-Type: multipart/byteranges; boundary=xyz123\r\n\r\n" + body)
    parts = msg.get_payload()
    assert [p["Content-Range"] for p in parts] == ["bytes 0-9/100", "bytes 20-29/100", "bytes 95-99/100"]
    assert [p.get_payload(decode=True) for p in parts] == [data[0:10], data[20:30], data[95:100]]


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=5000-", 100),
        ("bytes=-0", 100),  # an empty suffix selects nothing
        ("bytes=0-", 0),  # nothing can be selected from an empty file
        ("bytes=0-0", 0),
        ("bytes=-1", 0),
    ],
)
def test_parse_range_unsatisfiable_is_416_with_the_size(header, size):
    err = range_error(header, size)
    assert err.status == 416
    assert err.headers == {"Content-Range": f"bytes */{size}"}
    assert f"({size} bytes)" in err.message


@pytest.mark.parametrize("header", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000])
def test_parse_range_absurdly_long_numbers_are_an_http_error(header):
    with pytest.raises(HttpError):
        parse_ranges(header, 100)


# -- parse_ranges: properties --------------------------------------------------


@given(st.integers(0, 10**15), st.text(max_size=40))
def test_parse_range_any_header_gives_a_span_inside_the_file_or_an_http_error(size, header):
    try:
        spans = parse_ranges("bytes=" + header, size)
    except HttpError as exc:
        assert exc.status in (400, 416)
        if exc.status == 416:
            assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    assert spans  # the unit was bytes, so it was not ignored
    for first, last in spans:
        assert 0 <= first <= last < size


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**12))
def test_parse_range_first_last_matches_rfc_9110(size, first, last):
    header = f"bytes={first}-{last}"
    if last < first:
        assert range_error(header, size).status == 400
    elif first >= size:
        assert range_error(header, size).status == 416
    else:
        assert parse_ranges(header, size) == [(first, min(last, size - 1))]


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_parse_range_open_and_suffix_match_rfc_9110(size, n):
    if n >= size:
        assert range_error(f"bytes={n}-", size).status == 416
    else:
        assert parse_ranges(f"bytes={n}-", size) == [(n, size - 1)]
    if n == 0 or size == 0:
        assert range_error(f"bytes=-{n}", size).status == 416
    else:
        [(first, last)] = parse_ranges(f"bytes=-{n}", size)
        assert last == size - 1 and last - first + 1 == min(n, size)


# -- HttpError ------------------------------------------------------------------


def test_http_error_carries_status_message_and_its_own_headers():
    a, b = HttpError(404, "no such file"), HttpError(400, "bad")
    assert (a.status, a.message, str(a)) == (404, "no such file", "no such file")
    a.headers["X"] = "1"
    assert b.headers == {}


# -- content_type and http_date ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("films/a.mkv", "video/x-matroska"),
        ("A.MKV", "video/x-matroska"),
        ("a.webm", "video/webm"),
        ("seg/1.m4s", "video/iso.segment"),
        ("live/0001.ts", "video/mp2t"),
        ("live/index.m3u8", "application/vnd.apple.mpegurl"),
        ("dash/manifest.mpd", "application/dash+xml"),
        ("a.flac", "audio/flac"),
        ("a.opus", "audio/ogg"),
        ("a.mp4", "video/mp4"),
        ("page.html", "text/html"),
        ("notes.txt", "text/plain"),
        ("blob", "application/octet-stream"),
        ("a.unknownext", "application/octet-stream"),
        ("a.mts.bin", "application/octet-stream"),
    ],
)
def test_content_type(path, ctype):
    assert content_type(path) == ctype


@pytest.mark.parametrize(
    ("ctype", "sent"),
    [
        ("text/plain", "text/plain; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        ("text/vtt", "text/vtt; charset=utf-8"),
        ("TEXT/CSS", "TEXT/CSS; charset=utf-8"),
        ("text/plain; charset=iso-8859-1", "text/plain; charset=iso-8859-1"),  # a known charset is kept
        ('text/csv;CHARSET="utf-8"', 'text/csv;CHARSET="utf-8"'),
        ("video/mp4", "video/mp4"),  # binary types have no charset
        ("application/vnd.apple.mpegurl", "application/vnd.apple.mpegurl"),
        ("application/octet-stream", "application/octet-stream"),
        ("textual/x", "textual/x"),
    ],
)
def test_text_is_served_with_a_charset(ctype, sent):
    assert served_type(ctype) == sent


def test_every_text_type_the_origin_guesses_is_served_with_a_charset():
    for path in ("a.txt", "a.html", "a.css", "a.csv", "a.vtt", "a.srt", "a.xml", "a.md"):
        ctype = content_type(path)
        sent = served_type(ctype)
        assert ("charset=utf-8" in sent) == ctype.startswith("text/"), (path, ctype, sent)


@pytest.mark.parametrize(
    ("ts", "text"), [(0, "Thu, 01 Jan 1970 00:00:00 GMT"), (RFC_INSTANT, IMF_FIXDATE), (RFC_INSTANT + 0.9, IMF_FIXDATE)]
)
def test_http_date_is_imf_fixdate_in_gmt(ts, text):
    assert http_date(ts) == text


# -- not_modified (If-None-Match / If-Modified-Since) ---------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, False),
        ({"If-None-Match": ETAG}, True),
        ({"If-None-Match": "W/" + ETAG}, True),  # weak comparison
        ({"If-None-Match": f'"other", {ETAG}'}, True),
        ({"If-None-Match": f' "other" ,W/{ETAG} '}, True),
        ({"If-None-Match": "*"}, True),
        ({"If-None-Match": " * "}, True),
        ({"If-None-Match": '"other"'}, False),
        ({"If-None-Match": ETAG.strip('"')}, False),  # unquoted is a different tag
        ({"If-None-Match": ""}, False),
        ({"If-Modified-Since": IMF_FIXDATE}, True),
        ({"If-Modified-Since": RFC850_DATE}, True),
        ({"If-Modified-Since": http_date(RFC_INSTANT + 3600)}, True),
        ({"If-Modified-Since": http_date(RFC_INSTANT - 1)}, False),
        ({"If-Modified-Since": "yesterday"}, False),
        ({"If-Modified-Since": ""}, False),
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3), in both directions
        ({"If-None-Match": '"other"', "If-Modified-Since": IMF_FIXDATE}, False),
        ({"If-None-Match": ETAG, "If-Modified-Since": http_date(RFC_INSTANT - 1)}, True),
    ],
)
def test_not_modified(headers, expected):
    assert not_modified(headers, V) is expected


def test_not_modified_reads_case_insensitive_request_headers():
    assert not_modified(CIMultiDict({"if-none-match": ETAG}), V) is True
    assert not_modified(CIMultiDict({"if-modified-since": http_date(RFC_INSTANT - 1)}), V) is False


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, False),
        ({"If-Match": ETAG}, False),
        ({"If-Match": f'"other", {ETAG}'}, False),
        ({"If-Match": " * "}, False),
        ({"If-Match": "W/" + ETAG}, True),  # strong comparison: a weak tag never matches
        ({"If-Match": '"other"'}, True),
        ({"If-Match": ""}, True),
        ({"If-Unmodified-Since": IMF_FIXDATE}, False),
        ({"If-Unmodified-Since": http_date(RFC_INSTANT + 3600)}, False),
        ({"If-Unmodified-Since": http_date(RFC_INSTANT - 1)}, True),
        ({"If-Unmodified-Since": "yesterday"}, False),  # not a date: ignored
        # If-Match wins over If-Unmodified-Since (RFC 9110 13.2.2), in both directions
        ({"If-Match": ETAG, "If-Unmodified-Since": http_date(RFC_INSTANT - 1)}, False),
        ({"If-Match": '"other"', "If-Unmodified-Since": IMF_FIXDATE}, True),
    ],
)
def test_precondition_failed(headers, expected):
    assert precondition_failed(headers, V) is expected


# -- range_applies (If-Range) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, True),
        ({"If-Range": ETAG}, True),
        ({"If-Range": f" {ETAG} "}, True),
        ({"If-Range": "W/" + ETAG}, False),  # If-Range needs a strong match
        ({"If-Range": '"other"'}, False),
        ({"If-Range": IMF_FIXDATE}, True),
        ({"If-Range": RFC850_DATE}, True),
        ({"If-Range": http_date(RFC_INSTANT + 1)}, False),  # a date must match exactly, not be later
        ({"If-Range": http_date(RFC_INSTANT - 1)}, False),
        ({"If-Range": "not a date"}, False),
        ({"If-Range": ""}, False),
    ],
)
def test_range_applies(headers, expected):
    assert range_applies(headers, V) is expected


def test_a_file_without_a_date_ignores_date_conditions_and_keeps_its_etag():
    """A file dated ahead of the clock has no date (serving.file_date): RFC 9110 13.1.3-5 ignore date conditions."""
    undated = Validators(ETAG, None)
    date = {"If-Modified-Since": IMF_FIXDATE, "If-Unmodified-Since": http_date(RFC_INSTANT - 1)}
    assert not not_modified(date, undated) and not precondition_failed(date, undated)
    assert not range_applies({"If-Range": IMF_FIXDATE}, undated) and range_applies({"If-Range": ETAG}, undated)
    assert not_modified({"If-None-Match": ETAG}, undated) and precondition_failed({"If-Match": '"other"'}, undated)


def test_range_applies_reads_case_insensitive_request_headers():
    assert range_applies(CIMultiDict({"if-range": ETAG}), V) is True
    assert range_applies(CIMultiDict({"if-range": '"stale"'}), V) is False


@pytest.fixture
def utc():
    """Run with the process's local time zone set to UTC (and restore it after)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "UTC")
    time.tzset()
    yield
    mp.undo()
    time.tzset()


@pytest.fixture
def new_york():
    """A server whose local time zone is five hours behind GMT (POSIX TZ, needs no tzdata)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "EST5")
    time.tzset()
    yield
    mp.undo()
    time.tzset()


def test_asctime_dates_are_read_as_gmt_on_a_utc_server(utc):
    assert range_applies({"If-Range": ASCTIME_DATE}, V) is True
    assert not_modified({"If-Modified-Since": ASCTIME_DATE}, V) is True


def test_zoned_dates_do_not_depend_on_the_server_time_zone(new_york):
    assert range_applies({"If-Range": IMF_FIXDATE}, V) is True
    assert not_modified({"If-Modified-Since": http_date(RFC_INSTANT - 1)}, V) is False


def test_asctime_dates_are_read_as_gmt_whatever_the_server_time_zone(new_york):
    assert range_applies({"If-Range": ASCTIME_DATE}, V) is True
    modified_an_hour_later = Validators(ETAG, RFC_INSTANT + 3600)
    assert not_modified({"If-Modified-Since": ASCTIME_DATE}, modified_an_hour_later) is False


# -- JSON request bodies ------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": 'application/json;charset="UTF-8"'},
        {"Content-Encoding": "identity"},
        {"Content-Encoding": " Identity "},
    ],
)
def test_json_body_in_utf8_without_coding_is_read(headers):
    check_json_body(CIMultiDict(headers))


@pytest.mark.parametrize("charset", ["bogus", "latin-1", "utf-16", "", "utf-8x"])
def test_json_body_in_another_charset_is_a_400(charset):
    with pytest.raises(HttpError) as err:
        check_json_body(CIMultiDict({"Content-Type": f"application/json; charset={charset}"}))
    assert err.value.status == 400 and "UTF-8" in err.value.message


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "x-bogus", "gzip, identity"])
def test_compressed_json_body_is_a_415(coding):
    with pytest.raises(HttpError) as err:
        check_json_body(CIMultiDict({"Content-Encoding": coding}))
    assert err.value.status == 415 and "Content-Encoding" in err.value.message
    assert err.value.headers == {"Accept-Encoding": "identity"}  # RFC 9110 15.5.16: say what would do
