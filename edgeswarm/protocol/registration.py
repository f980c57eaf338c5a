"""What the router is told about edges: a registration, an ``--edge`` flag, an ``--edge-list`` file, each checked.

The router's wire and configuration format; the policy that ranks the edges
(edgeswarm.policy.routing) takes the checked ``EdgeSpec`` and reads nothing.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from edgeswarm.policy.regions import url_host
from edgeswarm.policy.routing import EdgeSpec, RoutingError
from edgeswarm.protocol.units import UnitError, link_local_problem, parse_rate
from edgeswarm.protocol.yamlfile import YamlFileError, read_yaml


def edge_spec(doc: object, regions: Iterable[str], listed: bool, where: str = "registration") -> EdgeSpec:
    """``{url, region, capacity}`` checked: an http(s) URL with a host, a region of the map, a positive rate."""
    if not isinstance(doc, dict):
        raise RoutingError(f"{where}: expected a JSON object with url, region and capacity")
    url, region, capacity = doc.get("url"), doc.get("region"), doc.get("capacity")
    problem = base_url_problem(url)
    if problem is not None:
        raise RoutingError(f"{where}: {problem}")
    assert isinstance(url, str)
    known = sorted(regions)
    if not isinstance(region, str) or region not in known:
        raise RoutingError(f"{where}: unknown region {str(region)[:100]!r} (the region map has: {', '.join(known)})")
    return EdgeSpec(canonical_url(url), region, _capacity(capacity, where), listed)


def canonical_url(url: str) -> str:
    """One spelling of an edge's base URL (checked by base_url_problem): the scheme and host in lower case, an IP
    address as ``ipaddress`` writes it, no default port, no trailing slash.  The router took [fd00::11] and
    [FD00:0:0:0:0:0:0:11] for two edges, one machine given twice the weight, and a registration in one spelling of
    an edge listed in the other for a second, unlisted edge (an adversarial session)."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    try:
        ip = ipaddress.ip_address(host)
        host = url_host(str(ip))
    except ValueError:
        pass
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def base_url_problem(url: object) -> str | None:
    """Why ``url`` is not an edge's base URL (http or https, a host, a port if any, nothing after them, no user or
    password: a router hands it to every client, in /status, redirects and logs); None if it is one.  The router's
    registrations and flags, and the clients reading a router's list, check alike."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
        return "'url' must be an http(s) URL such as http://10.1.0.5:8080"
    try:
        parts = urlsplit(url)  # raises on a bracketed host left open (http://[::1)
    except ValueError:
        return f"'url' must be an http(s) URL such as http://10.1.0.5:8080, not {url[:200]!r}"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return f"{url[:200]!r} has a bad port"
    if "@" in parts.netloc:
        return f"'url' must not carry a user or password ({parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}...): every client would see it"
    if not parts.hostname or " " in url or parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"'url' must be an edge's base URL (scheme, host, port), not {url[:200]!r}"
    if (problem := link_local_problem(parts.hostname)) is not None:
        return f"{url[:200]!r}: {problem}"
    return None


MIN_CAPACITY, MAX_CAPACITY = 1e3, 1e13  # bytes per second: outside, a typo or a lie that would skew every share of load


def _capacity(value: object, where: str) -> float:
    """A rate such as ``100MB/s`` or ``1Gbit/s``, or a number of bytes per second."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RoutingError(f"{where}: 'capacity' must be a rate such as 100MB/s or a number of bytes per second")
    try:
        rate = float(value) if not isinstance(value, str) else float(parse_rate(value))
    except UnitError as exc:
        raise RoutingError(f"{where}: capacity: {exc}") from None
    except OverflowError:  # hundreds of digits
        rate = math.inf
    if not rate > 0:  # NaN too
        raise RoutingError(f"{where}: 'capacity' must be above zero")
    if not MIN_CAPACITY <= rate <= MAX_CAPACITY:
        raise RoutingError(f"{where}: 'capacity' must be between 1kB/s and 10TB/s, not {rate:.3g} B/s")
    return rate


def parse_edge_flag(text: str, regions: Iterable[str]) -> EdgeSpec:
    """``--edge URL,REGION,CAPACITY`` (such as ``http://10.1.0.5:8080,east,1Gbit/s``)."""
    parts = text.split(",")
    if len(parts) != 3:
        raise RoutingError(f"--edge {text!r}: expected URL,REGION,CAPACITY such as http://10.1.0.5:8080,east,100MB/s")
    url, region, capacity = (p.strip() for p in parts)
    return edge_spec({"url": url, "region": region, "capacity": capacity}, regions, True, f"--edge {text!r}")


def load_edge_list(path: Path, regions: Iterable[str]) -> list[EdgeSpec]:
    """``--edge-list FILE``: YAML or JSON ``{edges: [{url, region, capacity}, ...]}``."""
    try:
        doc = read_yaml(path, "edge list")
    except YamlFileError as exc:
        raise RoutingError(str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list):
        raise RoutingError(f"{path}: expected a top-level 'edges' list of {{url, region, capacity}}")
    known = list(regions)
    return [edge_spec(item, known, True, f"{path}: edge #{n}") for n, item in enumerate(doc["edges"], 1)]
