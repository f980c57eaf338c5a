"""The lab's real network: a namespace per node behind one bridge, links shaped with tc.

Every host gets a network namespace and a veth pair whose outer end is on one
Linux bridge in the root namespace.  The lab itself runs in the root
namespace, holds the bridge's address and reaches every daemon over it.
Shaping is per host and per direction:

- a token bucket (tbf) on the inner end shapes what the host sends (its
  upload), or netem when the host also has a one-way delay;
- a tbf on the outer end shapes what it receives (its download).

So the caps belong to a host's access link, as the tier tables mean them, and
the latency of a path is the sum of its two ends.  Limits: there is no
per-link shaping (a region's peers do not share a bottleneck beyond their own
links), and the bridge is not a router, so there is no inter-region latency
beyond what the hosts add.  netem is a separate kernel module that some
kernels lack (this project's CI VM among them): caps work without it, and a
scenario that asks for latency is then refused with the reason.  Queues hold
up to half a second (tbf) or a second (netem), so TCP sees a buffer, not drops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class NetnsUnavailable(RuntimeError):
    pass


@dataclass
class NetHost:
    name: str
    region: int
    address: str
    netns: str
    prefix: list[str] = field(default_factory=list)


def unavailable_reason() -> str | None:
    """None when namespaces, veth pairs and tc's token bucket work here; else why not, in words."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian package iproute2)"
    probe = Netns(tag=f"p{os.getpid() % 0xFFFF:x}", base="10.254")  # not a running lab's subnet
    try:
        probe.add("probe", 1, up_bps=1e6, down_bps=1e6)
    except (NetnsUnavailable, RuntimeError) as exc:
        return str(exc)
    finally:
        probe.close()
    return None


class Netns:
    def __init__(self, tag: str | None = None, base: str = "10.77"):
        self.tag = tag or f"{os.getpid() % 0xFFFFF:x}"
        self.base = base
        self.bridge = f"esbr{self.tag}"[:15]
        self.hosts: list[NetHost] = []
        self._per_region: Counter[int] = Counter()
        self._bridge_up = False
        self._nf_was: str | None = None

    def region_network(self, region: int) -> str:
        return f"{self.base}.{region}.0/24"

    def add(self, name: str, region: int, up_bps: float | None = None, down_bps: float | None = None, delay_ms: float = 0.0) -> NetHost:
        if not self._bridge_up:
            self._make_bridge()
        self._per_region[region] += 1
        k = self._per_region[region] + 1
        if k > 254 or not 0 <= region <= 255:
            raise NetnsUnavailable(f"no address left for {name}: region {region}, host {k}")
        n = len(self.hosts)
        ns, outer, inner = f"es{self.tag}-{n}", f"es{self.tag}o{n}"[:15], f"es{self.tag}i{n}"[:15]
        host = NetHost(name, region, f"{self.base}.{region}.{k}", ns, ["ip", "netns", "exec", ns])
        self.hosts.append(host)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", self.bridge, "up")
        _run("ip", "-n", ns, "addr", "add", f"{host.address}/16", "dev", inner)
        _run("ip", "-n", ns, "link", "set", inner, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", f"{self.base}.0.1")
        _shape(["-n", ns], inner, up_bps, delay_ms)
        _shape([], outer, down_bps, 0.0)
        return host

    def _make_bridge(self) -> None:
        self._bridge_up = True  # from here on close() removes it, even if a step below fails
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.base}.0.1/16", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        if BRIDGE_NF.exists():  # br_netfilter would send bridged frames through iptables
            self._nf_was = BRIDGE_NF.read_text().strip()
            BRIDGE_NF.write_text("0")

    def close(self) -> None:
        """Remove every namespace (its veth goes with it) and the bridge; never raises."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        self.hosts.clear()
        if self._bridge_up:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._bridge_up = False
        if self._nf_was is not None:
            BRIDGE_NF.write_text(self._nf_was)
            self._nf_was = None

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shape(where: list[str], dev: str, bps: float | None, delay_ms: float) -> None:
    if delay_ms:
        args = ["tc", *where, "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms:g}ms"]
        if bps:
            args += ["rate", f"{int(bps)}bit"]
        packets = int(max(1000, (bps or 1e9) / 8 / 1500))  # about a second of full-size packets
        try:
            _run(*args, "limit", str(packets))
        except NetnsUnavailable as exc:
            raise NetnsUnavailable(f"latency needs tc's netem, which this kernel lacks ({exc}); set latency_ms to 0") from None
    elif bps:
        burst = max(int(bps / 8 / 100), 32 * 1024)  # 10 ms at the rate, and never less than a few packets
        _run("tc", *where, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{int(bps)}bit", "burst", str(burst), "latency", "500ms")


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
