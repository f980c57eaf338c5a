"""Parsing of the human-friendly quantities that appear on command lines.

Operators write sizes and rates the way they read them on a plan or a
dashboard (``10GB``, ``512MiB``, ``20Mbit/s``); these helpers turn them into
plain integers so that nothing else in the code deals with strings.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal

from edgeswarm.errors import EdgeswarmError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE | re.ASCII)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


class UnitError(EdgeswarmError, ValueError):
    """A quantity that cannot be read; the message says what was expected."""


def ascii_decimal(text: str, max_digits: int = 18) -> int | None:
    """The whole number ``text`` spells in 1 to ``max_digits`` ASCII digits, else None.

    The one reader of numbers that come from the wire, a file name or a
    command line.  ``int()`` and ``str.isdigit()`` also take other scripts'
    digits ('١', '²', '①'), and ``int()`` signs, spaces and underscores: a
    node that used them would answer 500, or serve a piece nobody named.
    """
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``512KiB``, ``10GB`` or ``1.5G`` (decimal unless ``i``)."""
    m = _SIZE.match(text)
    if not m:
        raise UnitError(f"cannot read size {text!r}: expected a number with an optional unit such as 512MiB or 10GB")
    number, prefix, binary, _ = m.groups()
    base = 1024 if binary else 1000
    return int(Decimal(number) * base ** _POWERS[prefix.lower()])  # exact: floats lose bytes


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)(B|bytes?|b|bits?)(?:/s|ps)\s*$", re.ASCII)


def parse_rate(text: str) -> int:
    """Bytes per second from ``2MB/s``, ``500KB/s``, ``20Mbit/s`` or ``800kbps``.

    A capital ``B`` means bytes, ``b`` or ``bit`` means bits, the way ISPs and
    download managers write them.
    """
    m = _RATE.match(text)
    if not m:
        raise UnitError(f"cannot read rate {text!r}: expected something like 2MB/s, 500KB/s or 20Mbit/s")
    number, prefix, binary, unit = m.groups()
    value = Decimal(number) * (1024 if binary else 1000) ** _POWERS[prefix.lower()]
    return int(value if unit.startswith("B") or unit.startswith("byte") else value / 8)


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE | re.ASCII)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, unit_required: bool = False) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1.5h``, ``7d`` or ``2w``: the one grammar of durations (docs/configuration.md).

    A decimal number (ASCII digits, optional fraction) and an optional unit s, m,
    h, d or w, in either case; no unit means seconds.  ``unit_required`` is for
    options that also take a date, where ``20240501`` must stay a date.
    """
    m = _DURATION.fullmatch(text)
    if not m or (unit_required and not m.group(2)):
        units = "a unit" if unit_required else "an optional unit"
        raise UnitError(f"cannot read duration {text[:40]!r}: expected a number with {units} s, m, h, d or w (90s, 15m, 2h, 7d, 2w)")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[::1]:PORT``; port 0 asks the kernel for a free one."""
    host, sep, digits = text.rpartition(":")
    port = ascii_decimal(digits, 5)
    if not sep or port is None or port > 65535:
        raise UnitError(f"cannot read listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):  # ::1 was host ":" port 1; fd00::1:8080 a guess
        raise UnitError(f"cannot read listen address {text!r}: an IPv6 address goes in brackets, e.g. [::1]:8080")
    if (problem := link_local_problem(host.strip("[]"))) is not None:
        raise UnitError(f"cannot listen on {text!r}: {problem}")
    return host.strip("[]") or default_host, port


def link_local_problem(host: str) -> str | None:
    """Why an IPv6 link-local address (``fe80::1%eth0``) cannot be a node's: its URLs need the zone, which HTTP
    clients (aiohttp, browsers) do not take and the node's own URLs drop; a peer on one reached no edge, its log
    blaming the network (an adversarial session).  None for any other host."""
    try:
        ip = ipaddress.ip_address(host.replace("%25", "%").split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.is_link_local:
        return "a link-local address (fe80::/10) needs its zone in every URL, which HTTP clients do not take: use a global or unique-local (fd00::/8) one"
    return None


def format_bytes(n: float) -> str:
    """Binary units with one decimal, for logs and reports."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
