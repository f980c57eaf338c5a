"""The region map: which ISP and region an address belongs to (a coverage zone file).

An edge places each peer by the address it sees, with longest-prefix match,
never by what the peer says about itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Region:
    name: str
    isp: str


class RegionMapError(ValueError):
    """A region map that cannot be used; the message says where and why."""


class RegionMap:
    def __init__(self, entries: list[tuple[Region, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]]):
        self._regions = [r for r, _ in entries]
        # per (version, prefix length): network address as int -> region; searched longest first
        self._tables: dict[tuple[int, int], dict[int, Region]] = {}
        for region, nets in entries:
            for net in nets:
                self._tables.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = region
        self._order = sorted(self._tables, key=lambda k: -k[1])

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    @classmethod
    def load(cls, path: Path) -> RegionMap:
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise RegionMapError(f"cannot read region map {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise RegionMapError(f"region map {path} is not valid YAML or JSON: {exc}") from None
        return cls.from_doc(doc, str(path))

    @classmethod
    def from_doc(cls, doc: object, source: str = "<map>") -> RegionMap:
        if not isinstance(doc, dict) or not isinstance(doc.get("regions"), list):
            raise RegionMapError(f"{source}: expected a top-level 'regions' list")
        entries, seen = [], set()
        for n, item in enumerate(doc["regions"], 1):
            where = f"{source}: region #{n}"
            if not isinstance(item, dict):
                raise RegionMapError(f"{where} is not a mapping")
            name, isp, nets = item.get("name"), item.get("isp", ""), item.get("networks")
            if not isinstance(name, str) or not name:
                raise RegionMapError(f"{where} has no 'name'")
            if name in seen:
                raise RegionMapError(f"{where}: region {name!r} is defined twice")
            seen.add(name)
            if not isinstance(nets, list) or not nets:
                raise RegionMapError(f"{where} ({name}) has no 'networks' list")
            parsed = []
            for net in nets:
                try:
                    parsed.append(ipaddress.ip_network(str(net), strict=False))
                except ValueError:
                    raise RegionMapError(f"{where} ({name}): {net!r} is not a network such as 10.0.0.0/8") from None
            entries.append((Region(name, str(isp)), parsed))
        return cls(entries)

    def lookup(self, addr: str) -> Region | None:
        """The region of the longest matching prefix, or None."""
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        for version, length in self._order:
            if version == ip.version:
                region = self._tables[(version, length)].get(value >> (bits - length) << (bits - length))
                if region is not None:
                    return region
        return None
