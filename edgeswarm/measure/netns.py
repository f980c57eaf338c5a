"""The lab's real network: a namespace per host behind one bridge, access links shaped with tc.

Why this topology.  The lab's model gives every host an access link (an upload
and a download rate, as an ISP sells them) and every region a latency; the
core is assumed fast.  So every host gets a network namespace and a veth pair
whose other end is a port of one Linux bridge, and shaping sits on the two
ends of that pair, one per direction:

- on the host's end (``eth0`` in its namespace), egress is what the host
  sends: its upload cap, and its one-way delay (netem) if it has one;
- on the bridge's end, egress is what the host receives: its download cap.

The bridge lives in a namespace of its own (the "switch"), joined to the root
namespace by one more veth whose root end holds ``<base>.0.1/16``: the lab and
its HTTP clients, in the root namespace, reach every host through it, and every
host reaches every other over the bridge.  Keeping the bridge out of the root
namespace lets us turn br_netfilter off for *our* bridge only (its sysctls are
per namespace), so a host firewall that drops forwarded traffic (Docker sets
FORWARD to DROP) cannot drop swarm traffic, while Docker's own bridges keep the
filtering they rely on.  It also makes teardown simple: deleting the
namespaces deletes every veth with them.

Limits.  Caps are per host, not per link: two peers of a region share no
bottleneck beyond their own access links, and there is no core congestion.
Latency is per host too: the one-way delay of a path is the sender's delay, a
round trip is the sum of both ends' delays (plus a few microseconds), and
there is no separate inter-region latency.  Delay needs the kernel's netem
qdisc (CONFIG_NET_SCH_NETEM); where it is missing, caps still work and asking
for a delay raises NetnsUnavailable saying so.  Rates are rates of Ethernet
frames (the L2 wire rate, like an ISP's), so a bulk TCP transfer's payload gets
about 95.5% of the cap (1448 payload bytes per 1514-byte frame).

Shaping is a token bucket filter (tbf), chosen over htb because it cuts
oversized GSO super-packets into real frames, so a 64 kB burst cannot pass a
128 kbit/s link at once.  See _tbf for the burst and queue sizes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeswarm.errors import EdgeswarmError
from edgeswarm.processes import pid_alive

PREFIX = "esw"  # every namespace and root-namespace link we make starts with this, then the tag
STATE = Path("/run/edgeswarm-netns")  # one file per live tag, holding its owner's pid
TAG = re.compile(r"[a-z0-9]{1,6}")  # short enough that "esw<tag>-r" fits a 15-character link name
OURS = re.compile(rf"{PREFIX}([a-z0-9]{{1,6}})-")

FRAME = 1514  # a full Ethernet frame without FCS: what tbf counts for a 1500-byte MTU
BURST_S = 0.010  # tbf bucket: 10 ms at the rate...
MIN_BURST = 2 * FRAME  # ...but never less than two frames, or tbf could not pass a single one
QUEUE_S = 0.2  # tbf queue (beyond the bucket): 200 ms at the rate...
MIN_QUEUE = 64 * 1024  # ...but at least one GSO super-packet, which tbf cuts into frames before queueing

_seq = itertools.count()
_open: set[str] = set()  # tags of this process's live Netns


class NetnsUnavailable(EdgeswarmError, RuntimeError):
    """This machine cannot build (a part of) the namespace network; the message says why and what to do."""


@dataclass
class NetHost:
    name: str
    region: int  # region index, 1-based; 0 for infrastructure such as the origin
    address: str  # the host's IPv4 address, on eth0 in its namespace
    netns: str
    prefix: list[str] = field(default_factory=list)  # ["ip", "netns", "exec", netns]: run a command there


def unavailable_reason() -> str | None:
    """None when namespaces, veth pairs, a bridge and tbf all work here, else why not.

    Actually builds and removes a throwaway network (no root-namespace link, so
    it cannot clash with a running lab's addresses): a kernel or container may
    have the tools and still refuse.
    """
    reason = _privilege_reason()
    if reason:
        return reason
    probe = Netns(root_link=False)
    try:
        probe.add("probe", 1, up_bps=1e6, down_bps=1e6)
    except NetnsUnavailable as exc:
        return str(exc)
    finally:
        probe.close()
    return None


class Netns:
    """Hosts in namespaces behind one bridge; a context manager whose exit removes everything."""

    def __init__(self, tag: str | None = None, base: str = "10.77", *, root_link: bool = True):
        """tag keeps names apart between runs (default: from the pid); base is the /16 the hosts live in.

        root_link=False leaves the root namespace untouched (no route to the
        hosts): for probes, which must not clash with a running lab.
        """
        self.tag = tag or _fresh_tag()
        if not TAG.fullmatch(self.tag):
            raise ValueError(f"tag {self.tag!r}: 1 to 6 characters from a-z and 0-9, so link names fit 15 characters")
        self.network = ipaddress.IPv4Network(f"{base}.0.0/16")  # ValueError unless base is "A.B"
        self.base = base
        self.gateway = f"{base}.0.1"
        self.switch = f"{PREFIX}{self.tag}-switch"  # the bridge's namespace
        self.bridge = f"{PREFIX}{self.tag}-b"  # in the switch namespace
        self.uplink = f"{PREFIX}{self.tag}-r" if root_link else None  # the root namespace's end, holding the gateway address
        self.hosts: list[NetHost] = []
        self._count: Counter[int] = Counter()
        self._started = False

    def region_network(self, region: int) -> str:
        """The /24 a region's hosts get addresses from: how an edge tells a peer's region from its address."""
        return f"{self.base}.{region}.0/24"

    def add(self, name: str, region: int, up_bps: float | None = None, down_bps: float | None = None, delay_ms: float = 0.0) -> NetHost:
        """A new host in region (0..255): its namespace, address <base>.<region>.<k>, caps in bits/s, one-way delay."""
        k = self._count[region] + 2
        if not 0 <= region <= 255 or k > 254:
            raise NetnsUnavailable(f"no address for {name!r}: region {region} must be 0..255 and holds at most 253 hosts")
        if not self._started:
            self._start()
        ns = f"{PREFIX}{self.tag}-{len(self.hosts)}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:40]}"
        port = f"h{len(self.hosts)}"  # the bridge's end, in the switch namespace
        host = NetHost(name, region, f"{self.base}.{region}.{k}", ns, ["ip", "netns", "exec", ns])
        self._count[region] += 1
        self.hosts.append(host)  # before anything exists: close() removes a half-made host too
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.switch, "link", "set", port, "master", self.bridge, "up")
        _run("ip", "-n", ns, "addr", "add", f"{host.address}/16", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
        _shape(ns, "eth0", up_bps, delay_ms)
        _shape(self.switch, port, down_bps, 0.0)
        return host

    def _start(self) -> None:
        """The switch namespace, its bridge and the root namespace's link to it."""
        if self.uplink:
            _check_free(self.network)
        _claim(self.tag)
        self._started = True  # from here on close() cleans up, whatever fails below
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", self.bridge, "up")
        _run("ip", "netns", "exec", self.switch, "sh", "-c", BRIDGE_NF_OFF)
        if self.uplink:
            _run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "root", "netns", self.switch)
            _run("ip", "-n", self.switch, "link", "set", "root", "master", self.bridge, "up")
            _run("ip", "addr", "add", f"{self.gateway}/16", "dev", self.uplink)
            _run("ip", "link", "set", self.uplink, "up")

    def block_inbound(self, host: NetHost) -> None:
        """A firewall in ``host``'s namespace, as a NAT or a home router keeps: no TCP connection may be opened to it.

        Its own connections out (and their answers) pass; so does its loopback,
        where a relayed peer's relay client reaches its own upload server, and
        the root namespace (the gateway address: the lab's player and its
        ``/status`` reads stand for the user's own machine behind the NAT).
        Needs iptables (Debian: the ``iptables`` package), else NetnsUnavailable.
        """
        if shutil.which("iptables") is None:
            raise NetnsUnavailable("blocking inbound connections needs iptables (apt-get install iptables)")
        _run(*host.prefix, "iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
        _run(*host.prefix, "iptables", "-A", "INPUT", "-s", f"{self.gateway}/32", "-j", "ACCEPT")
        _run(*host.prefix, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP")

    def close(self) -> None:
        """Remove every namespace and link this made (and kill what still runs in them); idempotent, never raises."""
        if not self._started:
            return
        with contextlib.suppress(Exception):
            _remove_tag(self.tag)
        self.hosts.clear()
        self._count.clear()
        self._started = False

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cleanup_stale(tag_prefix: str = "") -> list[str]:
    """Remove leftovers of crashed runs whose tag starts with tag_prefix; the names removed.

    A tag is left alone while its owner (the pid in STATE/<tag>) is alive, so
    this is safe to call while other labs run.
    """
    tags = {m.group(1) for name in _namespaces() + _root_links() if (m := OURS.match(name))}
    removed: list[str] = []
    for tag in sorted(t for t in tags if t.startswith(tag_prefix)):
        owner = _owner(tag)
        if tag in _open or (owner not in (None, os.getpid()) and pid_alive(owner)):
            continue
        removed += _remove_tag(tag)
    return removed


# -- shaping ---------------------------------------------------------------------------------


def _shape(ns: str, dev: str, bps: float | None, delay_ms: float) -> None:
    """Egress of dev in ns: netem for the delay (root), tbf for the rate (root, or netem's child)."""
    if delay_ms > 0:
        cmd = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", f"{delay_ms:g}ms"]
        cmd += ["limit", str(_netem_limit(bps, delay_ms))]
        done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
        if done.returncode != 0:
            raise NetnsUnavailable(
                f"a delay needs tc's netem qdisc, which this kernel refuses (CONFIG_NET_SCH_NETEM); "
                f"`{' '.join(cmd)}`: {done.stderr.strip().rstrip('.')}. Set the latency to 0, or use a kernel with sch_netem"
            )
        if bps:
            _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *_tbf(bps))
    elif bps:
        _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", *_tbf(bps))


def _tbf(bps: float) -> list[str]:
    """tbf arguments for bps bits/s of Ethernet frames.

    burst (the bucket): what may leave at once after an idle spell.  10 ms at
    the rate, the tbf rule of thumb (rate/HZ): the bucket must hold the tokens
    that pile up while the qdisc's timer fires late, or the link loses them;
    on this 2-core VM under CPU steal 2 ms lost up to 40% at 8 Mbit/s and
    1 Gbit/s, 10 ms kept 80-95%.  Below 2.4 Mbit/s the floor of two frames
    (3 kB) takes over, so at 128 kbit/s a burst is 0.19 s of sending, not
    more: short exchanges pay the rate too.
    limit (the queue, in bytes): 200 ms at the rate, but never under 64 kB.
    A forwarded GSO super-packet (up to 64 kB) is cut into frames and queued
    whole; with a 6-16 kB floor TCP lost tails and timed out, getting 60-85%
    of 1 and 8 Mbit/s at times.  The price is buffer bloat at low rates,
    as on a real DSL line: under load a 128 kbit/s link queues about 1 s,
    1 Mbit/s about 0.4 s.
    """
    burst = max(MIN_BURST, int(bps / 8 * BURST_S))
    limit = burst + max(MIN_QUEUE, int(bps / 8 * QUEUE_S))
    return ["tbf", "rate", f"{int(bps)}bit", "burst", str(burst), "limit", str(limit)]


def _netem_limit(bps: float | None, delay_ms: float) -> int:
    """Packets netem may hold: twice what the delay line carries at the rate (10 Gbit/s uncapped), at least 1000."""
    in_flight = (bps or 10e9) / 8 * delay_ms / 1000 / FRAME
    return max(1000, int(2 * in_flight))


# -- ownership, leftovers and teardown -------------------------------------------------------

BRIDGE_NF_OFF = 'for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e "$f" ] && echo 0 > "$f"; done; true'


def _fresh_tag() -> str:
    """The pid in base 36 (at most 5 characters) and a per-process counter: unique among live processes."""
    return _base36(os.getpid()) + _base36(next(_seq) % 36)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


def _claim(tag: str) -> None:
    """Make tag ours: refuse a live owner's, clear a dead one's leftovers, record our pid."""
    owner = _owner(tag)
    if tag in _open or (owner not in (None, os.getpid()) and pid_alive(owner)):
        raise NetnsUnavailable(f"network tag {tag!r} is in use (pid {owner or os.getpid()}): wait for that run to end, or stop it")
    _remove_tag(tag)
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / tag).write_text(f"{os.getpid()}\n")
    _open.add(tag)


def _remove_tag(tag: str) -> list[str]:
    """Kill what runs in tag's namespaces, delete them and its root link; the names removed.  Best effort."""
    namespaces = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{tag}-")]
    links = [link for link in _root_links() if link == f"{PREFIX}{tag}-r"]
    for ns in namespaces:
        _kill_all_in(ns)
    for link in links:  # synchronously: deleting its peer's namespace would remove it only later
        _quiet("ip", "link", "del", link)
    for ns in namespaces:
        _quiet("ip", "netns", "del", ns)
    (STATE / tag).unlink(missing_ok=True)
    _open.discard(tag)
    return namespaces + links


def _kill_all_in(ns: str) -> None:
    """SIGKILL whatever still runs in ns (a daemon outliving the lab would keep the namespace alive, unreachable)."""
    for pid in _quiet("ip", "netns", "pids", ns).split():
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _owner(tag: str) -> int | None:
    try:
        return int((STATE / tag).read_text())
    except (OSError, ValueError):
        return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _quiet("ip", "netns", "list").splitlines() if line.startswith(PREFIX)]


def _root_links() -> list[str]:
    try:
        links = json.loads(_quiet("ip", "-j", "link", "show") or "[]")
    except ValueError:
        return []
    return [link["ifname"] for link in links if OURS.match(link.get("ifname", ""))]


def _check_free(network: ipaddress.IPv4Network) -> None:
    """Refuse a /16 that the root namespace already uses: another lab's, a leftover, or a real network."""
    try:
        interfaces = json.loads(_quiet("ip", "-j", "-4", "addr", "show") or "[]")
    except ValueError:
        return
    for interface in interfaces:
        for a in interface.get("addr_info", []):
            mine = ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            if mine.network.overlaps(network) and (mine.network.prefixlen >= network.prefixlen or mine.ip in network):
                raise NetnsUnavailable(
                    f"{network} is already in use in the root namespace ({interface['ifname']} has {mine}): another --netns run "
                    f"(one at a time on a machine: wait for it to end, or stop it), a leftover (the next run removes those of dead "
                    f"runs) or a real network on this machine"
                )


def _privilege_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces and tc need root: run as root (e.g. sudo), or use the loopback network"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install iproute2"
    return None


def _run(*cmd: str) -> str:
    """Run cmd; its output, or NetnsUnavailable naming the command and its stderr."""
    try:
        # its own session: a Ctrl-C while the lab builds its network stops the lab, which undoes it, rather than
        # killing this command and failing the run with "exit status -2" (an adversarial session)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsUnavailable(f"`{' '.join(cmd)}` could not run: {exc}") from None
    if done.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def _quiet(*cmd: str) -> str:
    """Run cmd for cleanup or a look: its output, or "" whatever goes wrong."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, start_new_session=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
