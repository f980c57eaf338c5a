"""The lab's --netns network: namespaces behind a bridge, links shaped with tc; needs root."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edgeswarm.measure import netns

REASON = netns.unavailable_reason()
pytestmark = [
    pytest.mark.integration,  # starts namespaces, daemons and tools
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}"),
]


def namespaces() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line}


def leftovers(tag: str) -> set[str]:
    """Namespaces and root-namespace links that carry tag: none may outlive its Netns."""
    names = namespaces() | {
        line.split(": ")[1].split("@")[0]
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    }
    return {name for name in names if name.startswith(f"{netns.PREFIX}{tag}-")}


def serve(host: netns.NetHost, root, size: int) -> subprocess.Popen:
    (root / "blob").write_bytes(b"x" * size)
    proc = subprocess.Popen([*host.prefix, sys.executable, "-c", SERVER, host.address, str(root)])
    time.sleep(1.0)  # its own namespace: port 8000 is free there whatever runs on this machine
    return proc


# http.server, minus its server_bind, which looks the address up in DNS: there is none in a namespace
SERVER = """
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    server_bind = socketserver.TCPServer.server_bind
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
handler.log_message = lambda *a: None
Server((sys.argv[1], 8000), handler).serve_forever()
"""


def fetch_seconds(prefix: list[str], url: str) -> float:
    started = time.monotonic()
    subprocess.run([*prefix, "curl", "-sf", "-o", "/dev/null", "--max-time", "30", url], check=True)
    return time.monotonic() - started


def test_caps_shape_both_directions(tmp_path):
    with netns.Netns(tag="t1") as net:
        server = net.add("server", 1, up_bps=8e6)  # 1 MB/s up
        client = net.add("client", 2, down_bps=8e6)  # 1 MB/s down
        free = net.add("free", 2)
        proc = serve(server, tmp_path, 3_000_000)
        try:
            capped_up = fetch_seconds([], f"http://{server.address}:8000/blob")  # from the root namespace
            assert 2.4 < capped_up < 6, capped_up
            (tmp_path / "free").mkdir()
            other = serve(free, tmp_path / "free", 3_000_000)
            try:
                capped_down = fetch_seconds(client.prefix, f"http://{free.address}:8000/blob")  # host to host
                uncapped = fetch_seconds(free.prefix, f"http://{free.address}:8000/blob")
            finally:
                other.kill()
            assert 2.4 < capped_down < 6, capped_down
            assert uncapped < 1.0, uncapped
        finally:
            proc.kill()
        assert leftovers("t1")  # the check below can see what it looks for
    assert not leftovers("t1")


def test_close_after_a_failed_add_leaves_nothing():
    net = netns.Netns(tag="t2")
    net.add("a", 1)
    with pytest.raises(netns.NetnsUnavailable):
        net.add("b", 300)  # no such region address
    assert len(leftovers("t2")) >= 3  # switch, host a, root link
    net.close()
    net.close()  # idempotent
    assert not leftovers("t2")


def test_a_dead_runs_leftovers_are_removed_and_a_live_ones_kept():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    net = netns.Netns(tag="t4", base="10.252")
    net.add("a", 1)
    (netns.STATE / "t4").write_text(f"{dead.pid}\n")  # as if its owner had crashed
    netns._open.discard("t4")
    try:
        with netns.Netns(tag="t5", base="10.251", root_link=False) as live:
            live.add("b", 1)
            removed = netns.cleanup_stale("t")
            assert leftovers("t5")  # its owner (this process) is alive and holds it
        assert not leftovers("t4") and any(name.startswith("eswt4-") for name in removed)
    finally:
        net.close()


def test_a_subnet_in_use_is_refused():
    with netns.Netns(tag="t6", base="10.250") as net:
        net.add("a", 1)
        other = netns.Netns(tag="t7", base="10.250")
        with pytest.raises(netns.NetnsUnavailable, match="already in use"):
            other.add("b", 1)
        other.close()
        assert not leftovers("t7")


@pytest.mark.alone  # it checks that no namespace is left on the machine: not beside the relay test making its own
def test_lab_in_namespaces(tmp_path):
    out = tmp_path / "lab.json"
    before = namespaces()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "lab", "flash-crowd", "--netns", "--peers", "3", "--size", "4MiB", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["network"] == "netns"
    assert all(u["verified"] for u in r["users"]) and r["bytes"]["crossed_regions"] == 0
    assert r["p2p_share"] > 0  # peers found each other through their edges, by namespace address
    assert namespaces() == before


def test_latency_without_netem_is_refused_with_the_reason(tmp_path):
    probe = netns.Netns(tag="t3", base="10.253")
    try:
        probe.add("a", 1, delay_ms=5)
        pytest.skip("this kernel has netem: latency works")
    except netns.NetnsUnavailable as exc:
        assert "netem" in str(exc)
    finally:
        probe.close()
    path = tmp_path / "far.yaml"
    path.write_text("regions: [{name: far, peers: 2, latency_ms: 40}]\nsize: 1MiB\n")
    proc = subprocess.run([sys.executable, "-m", "edgeswarm", "lab", str(path), "--netns"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "netem" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr  # could not start
