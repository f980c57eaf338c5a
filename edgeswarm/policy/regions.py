"""The region map: which ISP and region an address belongs to (a coverage zone file).

An edge places each peer by the address it sees, with longest-prefix match,
never by what the peer says about itself.  The file is YAML or JSON::

    regions:
      - name: east
        isp: att
        networks: [127.1.0.0/16, 10.1.0.0/16]

Nested prefixes are fine (the longest wins: a /24 carved out of another
region's /16); the very same prefix in two regions is an error, since no rule
could say which was meant.  IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``,
what a dual-stack socket reports) are looked up as the IPv4 address.

Sans-IO like every policy: ``RegionMap.from_doc`` takes the parsed document;
the tracker service reads the file (``roles.announce.load_region_map``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from edgeswarm.errors import EdgeswarmError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Region:
    name: str
    isp: str


class RegionMapError(EdgeswarmError, ValueError):
    """A region map that cannot be used; the message says which file, which entry and what is wrong."""


SEEN = 1 << 16  # addresses whose region a map remembers (about 6 MB at most)


class RegionMap:
    def __init__(self, entries: list[tuple[Region, list[Network]]]):
        self._regions = [r for r, _ in entries]
        # per (version, prefix length): network address as int -> region; searched longest first,
        # so a lookup costs one dict probe per distinct prefix length, whatever the number of prefixes
        self._tables: dict[tuple[int, int], dict[int, Region]] = {}
        for region, nets in entries:
            for net in nets:
                self._tables.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = region
        self._order = sorted(self._tables, key=lambda k: -k[1])
        self._seen: dict[str, Region | None] = {}  # address -> its region: a peer announces again and again from one address

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    @classmethod
    def from_doc(cls, doc: object, source: str = "<map>") -> RegionMap:
        if not isinstance(doc, dict) or not isinstance(doc.get("regions"), list):
            raise RegionMapError(f"{source}: expected a top-level 'regions' list")
        if not doc["regions"]:  # every client unmapped, under any locality: no map at all says so (one region for all)
            raise RegionMapError(f"{source}: 'regions' is empty: list at least one, or give no map (one region for all)")
        extra = sorted(set(doc) - {"regions"}, key=str)
        if extra:
            raise RegionMapError(f"{source}: unknown key {extra[0]!r} (a map has 'regions' only)")
        entries: list[tuple[Region, list[Network]]] = []
        owner: dict[Network, str] = {}
        for n, item in enumerate(doc["regions"], 1):
            region, nets = _entry(item, f"{source}: region #{n}")
            if any(r.name == region.name for r, _ in entries):
                raise RegionMapError(f"{source}: region #{n}: region {region.name!r} is defined twice")
            for net in nets:
                if owner.setdefault(net, region.name) != region.name:
                    raise RegionMapError(f"{source}: region #{n} ({region.name}): {net} is already in region {owner[net]!r}")
            entries.append((region, nets))
        return cls(entries)

    def lookup(self, addr: str) -> Region | None:
        """The region of the longest matching prefix, or None (unmapped, or not an IP address).

        Remembered for the last SEEN addresses (a map never changes: a
        reloaded one is a new map), as every announce looks its sender up.
        """
        seen = self._seen
        if addr in seen:
            return seen[addr]
        if len(seen) >= SEEN:
            seen.clear()
        region = seen[addr] = self._lookup(addr)
        return region

    def _lookup(self, addr: str) -> Region | None:
        value = ipv4_value(addr)
        if value is not None:
            ip_version, bits = 4, 32
        else:
            try:
                ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
            except ValueError:
                return None
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            ip_version, bits, value = ip.version, 32 if ip.version == 4 else 128, int(ip)
        for version, length in self._order:
            if version == ip_version:
                region = self._tables[(version, length)].get(value >> (bits - length) << (bits - length))
                if region is not None:
                    return region
        return None


def url_host(host: str) -> str:
    """A host as a URL or HOST:PORT writes it: an IPv6 address in brackets (``::1:53`` names no port)."""
    return f"[{host}]" if ":" in host else host


def ipv4_value(text: str) -> int | None:
    """A plain dotted-quad IPv4 address as an integer, in a microsecond; None for anything else.

    Every announce needs its sender's address parsed (region, per-address
    limits), and ``ipaddress`` takes ten times as long.  Only the canonical
    form passes (it must print back as given), so what is accepted here is
    exactly what ``ipaddress`` would accept and print alike; callers fall back
    on ``ipaddress`` for the rest (IPv6, mapped IPv4, zone ids, errors).
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError, ValueError):  # ValueError: an embedded NUL, or a character past ASCII
        return None
    return int.from_bytes(packed, "big") if socket.inet_ntoa(packed) == text else None


ENTRY_KEYS = frozenset({"name", "isp", "networks"})


def _entry(item: object, where: str) -> tuple[Region, list[Network]]:
    """One ``{name, isp, networks}`` entry, checked; errors name the entry."""
    if not isinstance(item, dict):
        raise RegionMapError(f"{where} is not a mapping with name, isp and networks")
    extra = sorted(set(item) - ENTRY_KEYS, key=str)
    if extra:  # a misspelt key (netwroks) was refused as missing; any other was read as nothing, without a word
        raise RegionMapError(f"{where}: unknown key {extra[0]!r} (an entry has {', '.join(sorted(ENTRY_KEYS))})")
    name, isp, nets = item.get("name"), item.get("isp"), item.get("networks")
    if not isinstance(name, str) or not name:
        raise RegionMapError(f"{where}: 'name' is missing or not a non-empty string")
    if not isinstance(isp, str) or not isp:
        raise RegionMapError(f"{where} ({name}): 'isp' is missing or not a non-empty string")
    if not isinstance(nets, list) or not nets:
        raise RegionMapError(f"{where} ({name}): 'networks' is missing or not a non-empty list")
    return Region(name, isp), [_network(net, f"{where} ({name})") for net in nets]


def _network(net: object, where: str) -> Network:
    """A network of the map; an IPv4-mapped one (::ffff:10.0.0.0/104) is its IPv4 network, as clients' addresses are
    (``region_of``): written so, it was taken and never matched a client (an adversarial session)."""
    # strict=False: host bits are cleared (10.1.2.3/16 means 10.1.0.0/16), as routers read prefixes
    try:
        network = ipaddress.ip_network(net if isinstance(net, str) else "", strict=False)
    except ValueError:
        raise RegionMapError(f"{where}: {net!r} is not a network such as 10.0.0.0/8 or 2001:db8::/32") from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    written = ipaddress.ip_interface(net).ip if isinstance(net, str) else None
    if isinstance(written, ipaddress.IPv6Address) and written.ipv4_mapped is not None and network.prefixlen < 96:
        # an IPv4 network meant, written mapped with a prefix too short for it: ::ffff:127.1.0.0/90 placed nobody
        raise RegionMapError(f"{where}: {net!r} is an IPv4-mapped network shorter than /96: write it as IPv4 (such as 127.1.0.0/16)")
    if mapped is None:
        return network
    return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
