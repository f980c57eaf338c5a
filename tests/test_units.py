"""edgeswarm.protocol.units: sizes, rates and listen addresses as operators type them."""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.protocol.units import UnitError, ascii_decimal, format_bytes, parse_duration, parse_listen, parse_rate, parse_size

DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


# -- parse_size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("10B", 10),
        ("1k", 1000),
        ("1K", 1000),
        ("1kB", 1000),
        ("1KB", 1000),
        ("512KiB", 512 * 1024),
        ("512kib", 512 * 1024),
        ("512Ki", 512 * 1024),
        ("10GB", 10 * 10**9),
        ("10G", 10 * 10**9),
        ("1.5G", 1_500_000_000),
        ("1.5GiB", 3 * 2**29),
        ("2TB", 2 * 10**12),
        ("1PiB", 2**50),
        ("  64 MiB  ", 64 * 2**20),
        ("1.9KiB", 1945),  # fractional bytes are dropped, not rounded up
        ("0.5B", 0),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "MB", "-1MB", "+1MB", "1e3", "1,5GB", "1.GB", ".5GB", "5 parsecs", "10XB", "10GBB", "10 G B", "1/2GB", "0x10", "ten"],
)
def test_parse_size_rejects(text):
    with pytest.raises(UnitError) as err:
        parse_size(text)
    assert repr(text) in str(err.value)
    assert "512MiB" in str(err.value)  # the message shows what would have worked


def test_unit_error_is_a_value_error():
    """argparse and generic callers catch ValueError; UnitError must be one."""
    assert issubclass(UnitError, ValueError)


@given(st.integers(0, 10**5), st.sampled_from(sorted(DECIMAL)), st.sampled_from(["", "b", "B"]), st.booleans())
def test_parse_size_decimal_integers_are_exact(n, prefix, suffix, upper):
    unit = (prefix.upper() if upper else prefix) + suffix
    assert parse_size(f"{n}{unit}") == n * DECIMAL[prefix]


@given(st.integers(0, 2**40), st.sampled_from(sorted(BINARY)), st.sampled_from(["", "B", "b"]))
def test_parse_size_binary_integers_are_exact(n, prefix, suffix):
    assert parse_size(f"{n}{prefix}{suffix}") == n * BINARY[prefix]


@given(st.integers(0, 10**6), st.integers(0, 999), st.sampled_from(["k", "M", "G", "KiB", "MiB"]))
def test_parse_size_fractions_round_down_by_at_most_one_byte(whole, frac, unit):
    """Never more than asked for, and never a byte less."""
    mult = {"k": 10**3, "M": 10**6, "G": 10**9, "KiB": 2**10, "MiB": 2**20}[unit]
    exact = Fraction(f"{whole}.{frac:03d}") * mult
    assert exact - 1 <= parse_size(f"{whole}.{frac:03d}{unit}") <= exact


@given(st.text(max_size=20))
def test_parse_size_either_reads_a_nonnegative_int_or_raises_unit_error(text):
    try:
        value = parse_size(text)
    except UnitError:
        return
    assert isinstance(value, int) and value >= 0


@pytest.mark.parametrize(
    ("func", "text", "expected"),
    [
        (parse_size, "1.001KB", 1001),
        (parse_size, "1.003kB", 1003),
        (parse_size, "9007199254740993", 9007199254740993),
        (parse_rate, "1.001KB/s", 1001),
    ],
)
def test_decimal_quantities_are_exact(func, text, expected):
    assert func(text) == expected


# -- parse_rate ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2MB/s", 2_000_000),
        ("500KB/s", 500_000),
        ("500kB/s", 500_000),
        ("20Mbit/s", 2_500_000),
        ("20Mbits/s", 2_500_000),
        ("800kbps", 100_000),
        ("100Mbps", 12_500_000),
        ("2MBps", 2_000_000),
        ("1MiB/s", 2**20),
        ("8Kibit/s", 1024),
        ("1GB/s", 10**9),
        ("1Gbit/s", 125_000_000),
        ("100bytes/s", 100),
        ("100byte/s", 100),
        ("800bits/s", 100),
        ("8b/s", 1),
        ("2mb/s", 250_000),  # a lower-case b is bits, whatever the prefix's case
        ("1.5MB/s", 1_500_000),
        ("  2 MB/s ", 2_000_000),
        ("0MB/s", 0),
    ],
)
def test_parse_rate_accepts(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "2MB", "2Mbit", "MB/s", "2 MB /s", "2MB/h", "2MB/S", "2XB/s", "-2MB/s", "2PB/s", "2Bytes/s", "2MB/ss", "fast", "2MB/s/s"],
)
def test_parse_rate_rejects(text):
    with pytest.raises(UnitError) as err:
        parse_rate(text)
    assert repr(text) in str(err.value)
    assert "2MB/s" in str(err.value)


@given(st.integers(0, 10**5), st.sampled_from(["", "k", "K", "M", "G"]), st.booleans(), st.sampled_from(["/s", "ps"]))
def test_parse_rate_bits_are_an_eighth_of_bytes(n, prefix, binary, per):
    p = prefix + ("i" if binary and prefix else "")
    in_bytes = parse_rate(f"{n}{p}B{per}")
    in_bits = parse_rate(f"{n}{p}bit{per}")
    mult = (1024 if binary and prefix else 1000) ** ["", "k", "m", "g"].index(prefix.lower())
    assert in_bytes == n * mult
    assert in_bits == n * mult // 8


# -- parse_listen -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":6881", ("127.0.0.1", 6881)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:65535", ("::", 65535)),
        ("edge.example:80", ("edge.example", 80)),
    ],
)
def test_parse_listen_accepts(text, expected):
    assert parse_listen(text) == expected


def test_parse_listen_default_host_only_fills_an_empty_host():
    assert parse_listen(":1", default_host="0.0.0.0") == ("0.0.0.0", 1)
    assert parse_listen("10.0.0.1:1", default_host="0.0.0.0") == ("10.0.0.1", 1)


@pytest.mark.parametrize(
    "text", ["", "8080", "host", "host:", "host:65536", "host:99999", "host:-1", "host:80a", "host: 80", "host:0x50", ":"]
)
def test_parse_listen_rejects(text):
    with pytest.raises(UnitError) as err:
        parse_listen(text)
    assert "HOST:PORT" in str(err.value)


@pytest.mark.parametrize("text", ["::1", "fd00::1:8080", "[::1:80", "::1]:80"])
def test_parse_listen_wants_an_ipv6_address_in_brackets(text):
    """``::1`` was host ``:`` and port 1 ("Name or service not known"), ``fd00::1:8080`` silently [fd00::1]:8080."""
    with pytest.raises(UnitError, match=r"an IPv6 address goes in brackets, e.g. \[::1\]:8080"):
        parse_listen(text)


def test_a_link_local_address_is_refused_for_a_listener_or_a_nodes_url_saying_why():
    """A peer on ``--listen '[fe80::b%v1]:0'`` reached no edge, its log blaming the network, and every node listening
    on one logged a URL without its zone, which no client can use (an adversarial session)."""
    from edgeswarm.cli import options
    from edgeswarm.protocol.registration import base_url_problem

    said = "a link-local address (fe80::/10) needs its zone in every URL"
    for text in ("[fe80::b%v1]:0", "[FE80::b]:8080"):
        with pytest.raises(UnitError, match=re.escape(said)):
            parse_listen(text)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(said)):
        options.url("http://[fe80::a%25v1]:8080")
    assert said in (base_url_problem("http://[fe80::a]:8080") or "")
    assert (
        parse_listen("[fd00::1]:0") == ("fd00::1", 0) and options.url("http://[fd00::1]:80") and base_url_problem("http://[::1]:80") is None
    )


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_parse_listen_ascii_either_reads_a_valid_port_or_raises_unit_error(text):
    try:
        host, port = parse_listen(text)
    except UnitError:
        return
    assert 0 <= port <= 65535 and host


@pytest.mark.parametrize("text", ["host:²", "host:٨٠"])
def test_parse_listen_non_ascii_digits_are_a_unit_error(text):
    with pytest.raises(UnitError):
        parse_listen(text)


@pytest.mark.parametrize(("func", "text"), [(parse_size, "١٠MB"), (parse_size, "１0MB"), (parse_size, "10\u212aB"), (parse_rate, "٢MB/s")])
def test_sizes_and_rates_are_ascii_only(func, text):
    """``\\d`` and IGNORECASE match far more than 0-9 and k in a str pattern: ١٠MB was 10 MB, and the Kelvin sign a k."""
    with pytest.raises(UnitError):
        func(text)


# -- ascii_decimal ------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("7", 7), ("0042", 42), ("9" * 18, 10**18 - 1)])
def test_ascii_decimal_reads_ascii_digits(text, expected):
    assert ascii_decimal(text) == expected


@pytest.mark.parametrize("text", ["", "²", "①", "⁰", "١", "१", "１", "𝟙", "1²", "-1", "+1", " 1", "1 ", "1_0", "1.0", "0x1", "9" * 19])
def test_ascii_decimal_refuses_everything_else(text):
    """int() takes '١', ' 1' and '1_0'; str.isdigit() takes '²' (which int() then refuses): neither is how a number is sent."""
    assert ascii_decimal(text) is None


def test_ascii_decimal_bounds_the_digits():
    assert ascii_decimal("123", max_digits=3) == 123
    assert ascii_decimal("1234", max_digits=3) is None


@given(st.text(max_size=12))
def test_ascii_decimal_is_int_of_ascii_digits_or_none(text):
    expected = int(text) if text and all(c in "0123456789" for c in text) else None
    assert ascii_decimal(text) == expected


# -- format_bytes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 2**20, "10.0 MiB"),
        (5 * 2**30, "5.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
        (2**50, "1024.0 TiB"),  # TiB is the largest unit
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@given(st.integers(0, 2**45))
def test_format_bytes_reads_back_within_rounding(n):
    text = format_bytes(n)
    number, unit = text.split(" ")
    back = parse_size(number + unit)
    mult = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    assert abs(back - n) <= mult * 0.05 + 1


# -- durations: one grammar for token lifetimes and --since ------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),  # token --ttl took bare seconds
        ("90s", 90),
        ("15m", 900),
        ("1.5h", 5400),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),  # --since took weeks
        ("24H", 86400),  # --since took either case
        (" 2 h ", 7200),  # both took spaces around and between
        ("0s", 0),  # a bound is the caller's business
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5s", "5y", "5mm", "1e3", "nan", "inf", "٣h", "1,5h", "2 hours", ".5h"])
def test_parse_duration_refuses(text):
    with pytest.raises(UnitError, match="duration"):
        parse_duration(text)


def test_parse_duration_with_a_unit_required_leaves_bare_numbers_to_dates():
    """--since 20240501 is a date (ISO 8601 basic form), not 20 million seconds ago."""
    assert parse_duration("90m", unit_required=True) == 5400
    with pytest.raises(UnitError, match="with a unit"):
        parse_duration("20240501", unit_required=True)
