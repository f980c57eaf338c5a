"""The router with real daemons: regions, 302s curl follows, dig, health polls, peers with --router, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import curl, make_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.trust import tokens

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n  - {name: west, isp: verizon, networks: [127.2.0.0/16]}\n"
EAST_CLIENT, WEST_CLIENT = "127.1.0.5", "127.2.0.5"
POLL = 1.0  # the router's --poll-interval in these tests


def start_edge(nodes, tmp_path: Path, origin, name: str, host: str):
    """A plain edge on its own loopback address, so a DNS answer (an address, no port) names it."""
    return nodes.start("edge", "--cache", str(tmp_path / name), "--parent", origin.url, host=host, name=name)


def start_router(nodes, tmp_path: Path, *edges: tuple[object, str], extra: tuple[str, ...] = (), capacity: str = "10MB/s"):
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    args = ["--regions", str(regions), "--poll-interval", str(POLL), "--dns-port", "0", "--dns-name", "cdn.test", *extra]
    for node, region in edges:
        args += ["--edge", f"{node.url},{region},{capacity}"]
    return nodes.start("router", *args, name="router")


def ask(router, path: str, client: str, *extra: str) -> subprocess.CompletedProcess:
    return curl("--interface", client, *extra, router.url + path)


def location(router, path: str, client: str) -> str:
    out = ask(router, path, client, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}").stdout.decode()
    status, _, target = out.partition(" ")
    assert status == "302", out
    return target


def edges_for(router, client: str, path: str = "") -> list[str]:
    out = ask(router, f"/edges?path={path}" if path else "/edges", client)
    return [e["url"] for e in json.loads(out.stdout)["edges"]]


def up_edges(router, client: str) -> list[str]:
    """The client's up edges, or [] while the router has none (it then lists every edge of the region, ``blind``)."""
    body, _, status = ask(router, "/edges", client, "-w", "\n%{http_code}").stdout.decode().rpartition("\n")
    doc = json.loads(body) if status == "200" else {"blind": True}
    return [] if doc["blind"] else [e["url"] for e in doc["edges"]]


def dig(router_status: dict, client: str, name: str = "cdn.test", *extra: str) -> list[str]:
    port = router_status["dns"]["port"]
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "-b", client, name, "+short", "+tries=1", "+time=2", *extra],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.split()


def router_status(router) -> dict:
    return json.loads(curl(router.url + "/status").stdout)


def restart(node) -> None:
    node.port = urlsplit(node.url).port
    node.start()


needs_tools = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("dig")), reason="needs curl and dig (Debian dnsutils)")


@pytest.fixture
def deployment(nodes, tmp_path, origin, published):
    """Two edges in east, one in west, a router in front; a 3 MiB file published and seen by the origin."""
    data = make_file(published / "films" / "a.bin", 3 * 1024 * 1024)
    e1 = start_edge(nodes, tmp_path, origin, "e1", "127.10.0.1")
    e2 = start_edge(nodes, tmp_path, origin, "e2", "127.10.0.2")
    w1 = start_edge(nodes, tmp_path, origin, "w1", "127.20.0.1")
    router = start_router(nodes, tmp_path, (e1, "east"), (e2, "east"), (w1, "west"))
    deadline = time.monotonic() + 10
    while curl("-o", "/dev/null", "-w", "%{http_code}", origin.url + "/films/a.bin").stdout != b"200":
        assert time.monotonic() < deadline, "origin did not publish the file"
        time.sleep(0.1)
    return {"data": data, "east": [e1.url, e2.url], "west": [w1.url], "router": router, "edges": {"e1": e1, "e2": e2, "w1": w1}}


@needs_tools
def test_each_region_goes_to_its_edges_and_curl_follows_to_an_identical_file(deployment, tmp_path):
    router = deployment["router"]
    east = location(router, "/films/a.bin", EAST_CLIENT)
    assert east.rsplit("/films/", 1)[0] in deployment["east"] and east.endswith("/films/a.bin")
    assert all(location(router, "/films/a.bin", f"127.1.0.{n}") == east for n in range(6, 10))  # one path, one edge
    west = location(router, "/films/a.bin?token=x", WEST_CLIENT)
    assert west == deployment["west"][0] + "/films/a.bin?token=x"  # the request target kept as it came
    host, port = router.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), source_address=(EAST_CLIENT, 0), timeout=10) as raw:
        raw.sendall(b"GET /films/hash#x.bin HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")  # curl never sends a raw '#'
        head = raw.recv(4096).decode()
    assert "/films/hash%23x.bin\r\n" in head, head  # its Location started a fragment there: the client asked for /films/hash
    ranked = edges_for(router, EAST_CLIENT, "films/a.bin")
    assert sorted(ranked) == sorted(deployment["east"]) and east.startswith(ranked[0] + "/")
    out = tmp_path / "a.bin"
    got = ask(router, "/films/a.bin", EAST_CLIENT, "-L", "-o", str(out), "-w", "%{http_code} %{num_redirects}")
    assert got.stdout == b"200 1", got.stderr
    assert out.read_bytes() == deployment["data"]
    token = tokens.issue(Ed25519PrivateKey.generate(), "alice", "/users/alice/", 3600, scopes=["publish"])
    cmd = [sys.executable, "-m", "edgeswarm", "publish", str(out), "--edge", router.url, "--token", token, "--no-progress"]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # it printed "405 405: Method Not Allowed"
    assert got.returncode == 1 and "405 a router takes no uploads: publish through an edge (GET /edges" in got.stderr, got.stderr


@needs_tools
def test_a_web_page_on_another_origin_may_follow_the_routers_redirect(deployment):
    """hls.js, dash.js and <video crossorigin> failed through the router: its 302 had no Access-Control-Allow-Origin
    and a preflight (a Range request from fetch) got 405, though the edges allow both (an adversarial session)."""
    router, page = deployment["router"], "Origin: https://player.example"
    head = ask(router, "/films/a.bin", EAST_CLIENT, "-s", "-D", "-", "-o", "/dev/null", "-H", page).stdout.decode().lower()
    assert head.startswith("http/1.1 302") and "access-control-allow-origin: *" in head, head
    preflight = ["-s", "-D", "-", "-o", "/dev/null", "-X", "OPTIONS", "-H", page, "-H", "Access-Control-Request-Method: GET"]
    head = ask(router, "/films/a.bin", EAST_CLIENT, *preflight, "-H", "Access-Control-Request-Headers: range").stdout.decode().lower()
    assert head.startswith("http/1.1 204") and "access-control-allow-origin: *" in head and "range" in head, head
    got = ask(router, "/films/a.bin", EAST_CLIENT, "-s", "-L", "-D", "-", "-o", "/dev/null", "-H", page, "-H", "Range: bytes=0-99")
    assert "206" in got.stdout.decode() and got.stdout.decode().lower().count("access-control-allow-origin: *") == 2


@needs_tools
def test_dig_gets_the_chosen_edges_address(deployment):
    router = deployment["router"]
    st = router_status(router)
    east = dig(st, EAST_CLIENT)
    assert len(east) == 1 and east[0] in {"127.10.0.1", "127.10.0.2"}
    assert dig(st, "127.1.0.77") == east  # the name is the key: the region's clients agree
    assert dig(st, EAST_CLIENT, "cdn.test", "+tcp") == east  # over TCP too (RFC 7766), as resolvers retry a cut answer
    assert dig(st, WEST_CLIENT) == ["127.20.0.1"]
    assert dig(st, EAST_CLIENT, "x.cdn.test") != [] and dig(st, EAST_CLIENT, "cdn.test", "AAAA") == []  # no IPv6 edge
    chosen = next(n for n in deployment["edges"].values() if n.host == east[0])
    chosen.kill()
    time.sleep(2 * POLL)
    other = ({"127.10.0.1", "127.10.0.2"} - set(east)).pop()
    assert dig(st, EAST_CLIENT) == [other]


@needs_tools
def test_a_killed_edge_is_out_within_two_polls_and_back_after_a_restart(deployment):
    router = deployment["router"]
    path = "/films/a.bin"
    chosen_url = location(router, path, EAST_CLIENT).rsplit("/films/", 1)[0]
    chosen = next(n for n in deployment["edges"].values() if n.url == chosen_url)
    chosen.kill()
    time.sleep(2 * POLL)
    assert chosen_url not in edges_for(router, EAST_CLIENT, "films/a.bin")
    assert not location(router, path, EAST_CLIENT).startswith(chosen_url)  # its next request goes elsewhere
    row = next(e for e in router_status(router)["edges"] if e["url"] == chosen_url)
    assert row["state"] == "down" and row["reason"]
    restart(chosen)
    deadline = time.monotonic() + 10 * POLL
    while chosen_url not in edges_for(router, EAST_CLIENT):
        assert time.monotonic() < deadline, "a restarted edge was not put back"
        time.sleep(POLL / 4)
    assert location(router, path, EAST_CLIENT).startswith(chosen_url)  # and its paths come back to it


@needs_tools
def test_with_every_edge_down_the_router_still_names_the_regions_edges(deployment):
    """A region's only edge that missed one poll on a lossy path (down after 1, up after 2) made the router answer 503 for
    3 s while it served every file (an adversarial session): with none up anywhere, it answers as if the region's were,
    as Route 53 does, and says so."""
    router = deployment["router"]
    for node in deployment["edges"].values():
        node.kill()
    time.sleep(2 * POLL)
    assert all(e["state"] == "down" for e in router_status(router)["edges"])
    assert location(router, "/films/a.bin", EAST_CLIENT).rsplit("/films/", 1)[0] in deployment["east"]
    doc = json.loads(ask(router, "/edges", WEST_CLIENT).stdout)
    assert doc["blind"] and [e["url"] for e in doc["edges"]] == deployment["west"]
    assert dig(router_status(router), WEST_CLIENT) == ["127.20.0.1"]


@needs_tools
def test_a_peer_with_router_completes_while_its_first_edge_is_killed(deployment, nodes, tmp_path):
    router = deployment["router"]
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--router", router.url, "--listen", f"{EAST_CLIENT}:0", "--gateway", "127.0.0.1:0"),
        *("--download-limit", "1MB/s"),
        name="peer",
    )
    st = json.loads(curl(peer.urls["gateway"] + "/status").stdout)
    edges = [e["url"] for e in st["edges"]]
    assert sorted(edges) == sorted(deployment["east"])  # its region's edges, from the router
    first_edge = next(n for n in deployment["edges"].values() if n.url == edges[0])
    assert curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", peer.urls["gateway"] + "/films/a.bin").stdout == b"202"
    deadline = time.monotonic() + 20
    while not _swarm(peer).get("held"):
        assert time.monotonic() < deadline, "no piece arrived"
        time.sleep(0.1)
    first_edge.kill()
    deadline = time.monotonic() + 60
    while not _swarm(peer).get("complete"):
        assert time.monotonic() < deadline, f"not complete: {_swarm(peer)}"
        time.sleep(0.2)
    assert curl(peer.urls["gateway"] + "/films/a.bin").stdout == deployment["data"]
    deadline = time.monotonic() + 15  # the router's next answer (every 5 s, sooner after a failure) drops it
    while first_edge.url in [e["url"] for e in json.loads(curl(peer.urls["gateway"] + "/status").stdout)["edges"]]:
        assert time.monotonic() < deadline, "the peer kept an edge the router reports down"
        time.sleep(0.2)


def test_a_peer_with_router_drops_what_it_asked_of_edges_the_router_reports_down(deployment, nodes, tmp_path):
    """Hung edges (SIGSTOP) held the pieces asked of them for the whole request timeout (10 s) after the router had
    reported them down and the peer had dropped them from its list; now those requests are abandoned when the edges
    leave the list, and asked of the edge the router gives instead (here the west one: no east edge is up)."""
    router = deployment["router"]
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--router", router.url, "--listen", f"{EAST_CLIENT}:0", "--gateway", "127.0.0.1:0"),
        *("--download-limit", "1MB/s"),
        name="peer",
    )
    assert curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", peer.urls["gateway"] + "/films/a.bin").stdout == b"202"
    deadline = time.monotonic() + 20
    while not _swarm(peer).get("held"):
        assert time.monotonic() < deadline, "no piece arrived"
        time.sleep(0.1)
    east = [deployment["edges"][name] for name in ("e1", "e2")]
    hung = [pid for edge in east for pid in _processes(edge)]  # the edges' workers with them
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)  # the download is limited to 1 MB/s: what it asks next waits on a hung edge
    try:
        deadline = time.monotonic() + 60
        while not _swarm(peer).get("complete"):
            assert time.monotonic() < deadline, f"not complete: {_swarm(peer)}"
            time.sleep(0.2)
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
    assert curl(peer.urls["gateway"] + "/films/a.bin").stdout == deployment["data"]
    log = peer.log_text()
    assert not any(f"edge {edge.url} failed" in log for edge in east), "a hung edge's request ran to its timeout"


def test_a_peer_the_fallback_moved_and_back_is_one_peer_in_the_routers_totals_and_its_bytes_count_once(nodes, tmp_path, origin, published):
    """West's only edge killed, the router hands its peers east's edge, and west's again once it is back: the peer
    said nothing to the edge it left, so both trackers counted it (the router's west totals: 2 peers for one, for three
    intervals), and each booked its whole counters, for good (bytes from edges above what it received); now it says
    ``stopped`` to the edge it leaves, and its ``started`` at the next carries what the last one took (an adversarial session)."""
    files = {name: make_file(published / name, 1024 * 1024) for name in ("one.bin", "two.bin", "three.bin")}
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)

    def p2p_edge(name: str, host: str):
        args = ("--cache", str(tmp_path / name), "--parent", origin.url, "--p2p", "--regions", str(regions), "--workers", "1")
        return nodes.start("edge", *args, host=host, name=name)

    east, west = p2p_edge("east", "127.10.0.1"), p2p_edge("west", "127.20.0.1")
    router = start_router(nodes, tmp_path, (east, "east"), (west, "west"))
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--router", router.url, "--listen", f"{WEST_CLIENT}:0", "--gateway", "127.0.0.1:0"),
        name="peer",
    )

    def edges() -> list[str]:
        return [e["url"] for e in json.loads(curl(peer.urls["gateway"] + "/status").stdout)["edges"]]

    def read(name: str) -> None:
        deadline = time.monotonic() + 20
        while (got := curl(peer.urls["gateway"] + "/" + name)).stdout != files[name]:  # the origin publishes within 0.2 s
            assert time.monotonic() < deadline, got.stderr
            time.sleep(0.2)

    def until(what: str, done) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(0.25)

    assert edges() == [west.url]
    read("one.bin")
    west.kill()
    until("the peer did not fall back to east's edge", lambda: edges() == [east.url])
    read("two.bin")
    restart(west)
    until("the peer did not come back to west's edge", lambda: edges() == [west.url])
    read("three.bin")

    def west_peers(st: dict) -> dict[str, int]:
        """West's peers in each edge's last good poll, by edge (a restarted edge's first polls have none)."""
        return {e["url"]: ((e["polled"] or {}).get("regions") or {}).get("west", {}).get("peers", 0) for e in st["edges"]}

    until(
        f"the edge the peer left still counts it: {west_peers(router_status(router))}",
        lambda: west_peers(router_status(router)) == {west.url: 1, east.url: 0},
    )
    st = router_status(router)
    totals = st["region_totals"]["west"]
    received = sum(r["bytes"] for r in json.loads(curl(peer.urls["gateway"] + "/status").stdout)["bytes_received"])
    assert west_peers(st) == {west.url: 1, east.url: 0} and totals["peers"] == 1, st
    assert totals["bytes_from_edge"] + totals["bytes_from_peers"] <= received, (totals, received)


def _processes(node) -> list[int]:
    """A daemon's process and its workers' (an edge runs one per core under a supervisor)."""
    assert node.proc is not None
    pid = node.proc.pid
    return [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def _swarm(peer) -> dict:
    swarms = json.loads(curl(peer.urls["gateway"] + "/status").stdout)["swarms"]
    return swarms[0] if swarms else {}


GET_OPTS = ("--listen", f"{WEST_CLIENT}:0", "--stall-timeout", "20")


@needs_tools
def test_get_with_router_and_a_bare_path(deployment, tmp_path):
    out = tmp_path / "got.bin"
    run = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "get", "--router", deployment["router"].url, "/films/a.bin", "-o", str(out), *GET_OPTS],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert run.returncode == 0, run.stderr.decode()
    assert out.read_bytes() == deployment["data"]


@needs_tools
def test_get_given_the_routers_url_of_the_file_learns_the_regions_edges(deployment, tmp_path):
    """``get http://router/path`` without --router: the router's 302 is recognised, and the client's region's edges used."""
    out = tmp_path / "got.bin"
    run = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "get", deployment["router"].url + "/films/a.bin", "-o", str(out), *GET_OPTS],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert run.returncode == 0, run.stderr.decode()
    assert out.read_bytes() == deployment["data"]
    held = {
        name: sum(c["held"] for c in json.loads(curl(node.url + "/status").stdout)["contents"])
        for name, node in deployment["edges"].items()
    }
    assert held["w1"] > 0 and held["e1"] == held["e2"] == 0, held  # the client is in west (GET_OPTS): its region's edge only


def test_get_from_a_client_of_no_region_says_so_at_once(deployment, tmp_path):
    """A client the region map does not cover: `get http://router/path` said only "still learning the origin key ...
    answered 403 for /origin-key", and `get --router` asked again for 60 s (its region will not change)."""
    router = deployment["router"].url
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    opts = ("-o", str(tmp_path / "x.bin"), "--listen", "127.0.0.1:0", "--stall-timeout", "20")  # 127.0.0.1: no region's
    for target in ([router + "/films/a.bin"], ["--router", router, "/films/a.bin"]):
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "edgeswarm", "get", *target, *opts], capture_output=True, text=True, timeout=90, env=env
        )
        assert run.returncode != 0 and "403" in run.stderr and "no region for client address" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and time.monotonic() - started < 30, "asked again for the 60 s"


@pytest.mark.integration
def test_a_wrong_router_url_ends_get_and_the_peer_at_once_in_one_line(nodes, tmp_path, origin):
    """An edge's URL (or a dead port) given as ``--router``: `get` and the peer asked again each second for 60 s, a
    WARNING each time, then ended with a line naming no command, where `get` given a dead edge ends at once (a
    newcomer's walk through README)."""
    from ports import free_port

    edge = start_edge(nodes, tmp_path, origin, "e1", "127.10.0.1")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    dead = f"http://127.0.0.1:{free_port()}"
    runs = [
        (["get", "--router", edge.url, "/a.bin", "-o", str(tmp_path / "a.bin")], "it is no edgeswarm router"),
        (["get", "--router", dead, "/a.bin", "-o", str(tmp_path / "a.bin")], "unreachable"),
        (
            ["peer", "--router", edge.url, "--cache", str(tmp_path / "p"), "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"],
            "it is no edgeswarm router",
        ),
    ]
    for argv, why in runs:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "edgeswarm", *argv], capture_output=True, text=True, timeout=90, env=env)
        said = f"edgeswarm {argv[0]}: no edge from router"
        assert run.returncode == 1 and said in run.stderr and why in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and "asking again" not in run.stderr, run.stderr
        assert time.monotonic() - started < 30, "asked again for 60 s"


@pytest.mark.integration
def test_a_peer_given_a_router_as_edge_says_to_give_it_with_router(nodes, tmp_path, origin, published):
    """README names the mistake (`--edge` must name an edge, a router goes in `--router`), but a peer given a router as
    ``--edge`` logged "answered 302 for /origin-key; retrying" for good, and its gateway's 503 said as little."""
    make_file(published / "a.bin", 1000)
    edge = start_edge(nodes, tmp_path, origin, "e1", "127.10.0.1")
    router = start_router(nodes, tmp_path, (edge, "east"))
    peer = nodes.start(
        "peer", "--cache", str(tmp_path / "p"), "--edge", router.url, "--listen", f"{EAST_CLIENT}:0", "--gateway", "127.0.0.1:0"
    )
    said = curl("-w", "%{http_code}", peer.urls["gateway"] + "/a.bin").stdout.decode()
    assert said.endswith("503") and "a router goes in --router" in said, said
    assert "a router goes in --router" in peer.log_text()


@needs_tools
def test_registrations_without_a_secret_come_from_loopback_under_the_routers_address(deployment):
    """A page of a site whose name was rebound to 127.0.0.1 posts from loopback too, but under its own name."""
    router = deployment["router"]
    body = json.dumps({"url": "http://127.10.0.9:9", "region": "east", "capacity": "1MB/s"})

    def register(*host: str) -> str:
        args = ["-X", "POST", "-H", "Content-Type: application/json", *host, "-d", body, "-w", "\n%{http_code}"]
        return curl(*args, router.url + "/register").stdout.decode()

    rebound = register("-H", "Host: rebound.test")
    assert rebound.endswith("\n403") and "'rebound.test'" in rebound and "--register-secret-file" in rebound, rebound
    assert "http://127.10.0.9:9" not in [e["url"] for e in router_status(router)["edges"]]
    assert register().endswith("\n201")  # curl names the router by its address


@needs_tools
def test_registration_secret_and_bad_input(nodes, tmp_path, origin):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    router = start_router(nodes, tmp_path, extra=("--register-secret-file", str(secret), "--dns-ttl", "0"))
    w1 = start_edge(nodes, tmp_path, origin, "w1", "127.20.0.1")

    def register(body: str, *headers: str) -> tuple[str, str]:
        args = ["-X", "POST", "-H", "Content-Type: application/json", *(a for h in headers for a in ("-H", h)), "-d", body]
        out = curl(*args, "-w", "\n%{http_code}", router.url + "/register").stdout.decode()
        text, _, status = out.rpartition("\n")
        return status, text

    good = json.dumps({"url": w1.url, "region": "west", "capacity": "10MB/s"})
    assert register(good)[0] == "401"
    assert register(good, "Authorization: Bearer wrong")[0] == "403"
    auth = "Authorization: Bearer s3cret"
    status, text = register(json.dumps({"url": w1.url, "region": "north", "capacity": "1MB/s"}), auth)
    assert status == "400" and "unknown region 'north'" in text and "east, west" in text
    unclosed = json.dumps({"url": "http://[::1", "region": "west", "capacity": 1})  # urlsplit raises: it was a 500
    for body in ("{", "[]", json.dumps({"url": "gopher://x", "region": "west", "capacity": 1}), '{"url": 1}', unclosed):
        status, text = register(body, auth)
        assert status == "400" and text.strip(), (body, text)
    status, text = register(good, auth)
    assert status == "201" and json.loads(text)["state"] == "up"  # polled before the answer
    assert location(router, "/films/x", WEST_CLIENT) == w1.url + "/films/x"
    assert register(good, auth)[0] == "200"  # again: an update
    leaving = {"url": w1.url, "region": "west", "capacity": "10MB/s", "leaving": True}
    for body, want in (
        ({**leaving, "leaving": "yes"}, ("400", "'leaving' must be true or false")),
        ({**leaving, "url": "http://127.20.0.9:1"}, ("404", "is not registered here")),
    ):
        status, text = register(json.dumps(body), auth)
        assert (status, want[1] in text) == (want[0], True), (status, text)
    assert register(json.dumps(leaving))[0] == "401"  # a leaving needs the secret as a registration does
    status, text = register(json.dumps(leaving), auth)
    # the DNS TTL, but a redirect's follow at least: a TTL of 0 left it no time (a review)
    assert status == "200" and json.loads(text)["state"] == "down" and json.loads(text)["drain_s"] == 1
    assert register(good, auth)[0] == "200" and up_edges(router, WEST_CLIENT) == [w1.url]  # registered again: back

    unmapped = ask(router, "/films/x", "127.0.0.1", "-w", " %{http_code}").stdout.decode()
    assert unmapped.endswith(" 403") and "region map does not cover" in unmapped
    assert location(router, "/films/x", EAST_CLIENT) == w1.url + "/films/x"  # no edge of east: another region's
    assert json.loads(ask(router, "/edges", EAST_CLIENT).stdout)["fallback"] is True
    assert ask(router, "/%ff", WEST_CLIENT, "-w", " %{http_code}").stdout.decode().endswith(" 400")

    st = router_status(router)
    port = st["dns"]["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind((WEST_CLIENT, 0))
        for junk in (b"", b"\x00", os.urandom(11), b"\x12\x34" + os.urandom(40), b"\x12\x34\x81\x80" + bytes(8)):
            s.sendto(junk, ("127.0.0.1", port))
        s.sendto(b"\xab\xcd" + os.urandom(30), ("127.0.0.1", port))
        answers = []
        try:
            while True:
                answers.append(s.recv(4096))
        except TimeoutError:
            pass
        assert all(len(a) >= 12 and a[2] & 0x80 for a in answers)  # whatever came back is a DNS answer
    assert dig(st, WEST_CLIENT) == ["127.20.0.1"]  # still answering
    refused = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "-b", WEST_CLIENT, "example.org", "+tries=1", "+time=2"], capture_output=True, text=True
    )
    assert "status: REFUSED" in refused.stdout
    newer = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "-b", WEST_CLIENT, "cdn.test", "+edns=1", "+noednsnegotiation", "+tries=1", "+time=2"],
        capture_output=True,
        text=True,
    )
    assert "status: BADVERS" in newer.stdout and "EDNS: version: 0" in newer.stdout  # RFC 6891: the version we speak
    unmapped = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "-b", "127.0.0.1", "cdn.test", "+tries=1", "+time=2"], capture_output=True, text=True
    ).stdout
    flags = next(line for line in unmapped.splitlines() if line.startswith(";; flags:")).split(";")[2].split()[1:]
    assert "status: REFUSED" in unmapped and "aa" not in flags, unmapped  # nothing authoritative in a refusal
    assert router.running


@pytest.mark.integration
def test_router_refuses_bad_configuration(tmp_path):
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    twice = tmp_path / "edges.yaml"
    twice.write_text("edges:\n  - {url: 'http://127.10.0.1:1', region: east, capacity: 2MB/s}\n")
    cases = [
        (["--regions", str(tmp_path / "missing.yaml")], "cannot read region map"),
        (["--regions", str(regions), "--edge", "http://127.10.0.1:1,north,1MB/s"], "unknown region 'north'"),
        (["--regions", str(regions), "--edge", "http://127.10.0.1:1,east"], "URL,REGION,CAPACITY"),
        (["--regions", str(regions), "--default-region", "north"], "--default-region 'north'"),
        # found by the adversarial session: nan polled 2 000 times a second, inf never again, a negative TTL failed
        # every DNS answer, an empty name, and a device read until memory ran out
        (["--regions", str(regions), "--poll-interval", "nan"], "positive number"),
        (["--regions", str(regions), "--poll-interval", "inf"], "positive number"),
        (["--regions", str(regions), "--dns-ttl", "-5"], "whole number"),
        (["--regions", str(regions), "--dns-name", ""], "not a DNS name"),
        (["--regions", str(regions), "--edge-list", "/dev/zero"], "larger than 16 MiB"),
        # the --edge lost to the list's entry for the same URL without a word (an adversarial session)
        (["--regions", str(regions), "--edge", "http://127.10.0.1:1,east,1MB/s", "--edge-list", str(twice)], "listed twice"),
        # one machine in two spellings: twice the weight (an adversarial session)
        (
            ["--regions", str(regions), "--edge", "http://[fd00::11]:1,east,1MB/s", "--edge", "http://[FD00:0:0:0:0:0:0:11]:1/,east,1MB/s"],
            "edge http://[fd00::11]:1 is listed twice",
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for args, words in cases:
        run = subprocess.run([sys.executable, "-m", "edgeswarm", "router", *args], capture_output=True, text=True, timeout=30, env=env)
        assert run.returncode == 2 and words in run.stderr, (args, run.stderr)


def test_dns_answers_never_raise():
    """The DNS handler in process, fed every kind of packet: an answer or silence, never an exception."""
    from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

    from edgeswarm.policy.regions import RegionMap
    from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Sample
    from edgeswarm.roles.router import Router, RouterConfig

    table = RoutingTable()
    table.add(EdgeSpec("http://127.10.0.1:8080", "east", 1e6), 0.0)
    table.health["http://127.10.0.1:8080"].succeeded(Sample(1.0, 0, 0, 0), table.thresholds)
    router = Router(
        RegionMap.from_doc({"regions": [{"name": "east", "isp": "a", "networks": ["127.1.0.0/16"]}]}),
        table,
        RouterConfig(dns_name="cdn.test"),
    )
    good = DNSRecord.question("cdn.test").pack()
    answer = DNSRecord.parse(router.dns_answer(good, EAST_CLIENT))
    assert [str(r.rdata) for r in answer.rr] == ["127.10.0.1"] and answer.header.aa
    assert DNSRecord.parse(router.dns_answer(DNSRecord.question("cdn.test", "MX").pack(), EAST_CLIENT)).rr == []
    nodata = DNSRecord.parse(router.dns_answer(DNSRecord.question("cdn.test", "AAAA").pack(), EAST_CLIENT))
    assert nodata.rr == [] and nodata.header.rcode == RCODE.NOERROR  # IPv4 edges only: no AAAA record, not a failure
    flagged = DNSRecord.question("cdn.test")
    flagged.header.rcode, flagged.header.tc = RCODE.NXDOMAIN, 1  # a query's own flags are not the answer's
    answer = DNSRecord.parse(router.dns_answer(flagged.pack(), EAST_CLIENT))
    assert answer.header.rcode == RCODE.NOERROR and not answer.header.tc and [str(r.rdata) for r in answer.rr] == ["127.10.0.1"]
    chaos = DNSRecord.question("cdn.test", "A", "CH")
    answer = DNSRecord.parse(router.dns_answer(chaos.pack(), EAST_CLIENT))
    assert answer.header.rcode == RCODE.REFUSED and answer.rr == []  # the Internet class only
    edns = DNSRecord.question("cdn.test")
    edns.add_ar(EDNS0(udp_len=4096))  # what dig and stub resolvers send
    answer = DNSRecord.parse(router.dns_answer(edns.pack(), EAST_CLIENT))
    assert [str(r.rdata) for r in answer.rr] == ["127.10.0.1"] and [(r.rtype, r.edns_ver) for r in answer.ar] == [(QTYPE.OPT, 0)]
    newer = DNSRecord.question("cdn.test")
    newer.add_ar(EDNS0(version=1))  # a version we do not speak: BADVERS (16), its upper bits in the OPT, no answer
    answer = DNSRecord.parse(router.dns_answer(newer.pack(), EAST_CLIENT))
    assert answer.rr == [] and answer.header.rcode == 0 and [(r.edns_rcode, r.edns_ver) for r in answer.ar] == [(1, 0)]
    twice = DNSRecord.question("cdn.test")
    twice.add_ar(EDNS0())
    twice.add_ar(EDNS0())
    assert DNSRecord.parse(router.dns_answer(twice.pack(), EAST_CLIENT)).header.rcode == RCODE.FORMERR
    rng = __import__("random").Random(7)
    for n in range(3000):
        packet = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        packet = bytes(packet[: rng.randint(0, len(packet))]) if n % 3 == 0 else bytes(packet)
        reply = router.dns_answer(packet, EAST_CLIENT)
        assert reply is None or DNSRecord.parse(reply).header.qr
    long_label = b"\x40" + b"a" * 64 + b"\0"  # names dnslib reads but cannot write: a label of 64 bytes,
    long_name = b"".join(b"\x3c" + b"a" * 60 for _ in range(5)) + b"\3cdn\4test\0"  # 310 bytes under the zone
    for name in (long_label, long_name):
        reply = router.dns_answer(good[:12] + name + b"\0\1\0\1", EAST_CLIENT)
        assert reply is not None and DNSRecord.parse(reply).header.rcode == RCODE.FORMERR  # not a traceback


async def test_dns_port_0_gets_a_port_free_for_tcp_too(monkeypatch, caplog):
    """With --dns-port 0 the kernel picks a free UDP port, whose number another process may hold in TCP: the router
    fell back to UDP alone (CI: `dig +tcp` refused).  It now takes another port, free for both."""
    import asyncio
    import errno

    from edgeswarm.policy.regions import RegionMap
    from edgeswarm.policy.routing import RoutingTable
    from edgeswarm.roles import router as router_role

    real, refused = asyncio.start_server, []

    async def taken_once(*args, **kwargs):
        if not refused:
            refused.append(args[2])  # the port: in use in TCP, as another test's connection held it
            raise OSError(errno.EADDRINUSE, "address already in use")
        return await real(*args, **kwargs)

    monkeypatch.setattr(router_role.asyncio, "start_server", taken_once)
    regions = RegionMap.from_doc({"regions": [{"name": "east", "isp": "a", "networks": ["127.1.0.0/16"]}]})
    router = router_role.Router(regions, RoutingTable(), router_role.RouterConfig(dns_name="cdn.test"))
    await router.start_dns("127.0.0.1", 0)
    try:
        assert refused and router.dns_tcp is not None, "UDP alone after one port's number was taken in TCP"
        assert router.dns_address is not None and router.dns_tcp.sockets[0].getsockname()[1] == router.dns_address[1]
        assert "UDP only" not in caplog.text
    finally:
        router.dns_tcp.close()
        assert router.dns_transport is not None
        router.dns_transport.close()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_bench_router_runs_end_to_end(tmp_path):
    """The benchmark's figures are real (every way made decisions) and it leaves nothing running; no figure is a target."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "bench", "router", "--duration", "1", "--json", str(out), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["http"]["decisions_per_s"] > 0 and r["dns"]["decisions_per_s"] > 0 and r["policy"]["decisions_per_s"] > 0
    assert "decisions/s" in run.stdout
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "w")], capture_output=True, text=True).stdout.split()
    assert leftover == []


@needs_tools
def test_an_edge_registers_itself_and_gets_its_regions_clients(nodes, tmp_path, origin):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    router = start_router(nodes, tmp_path, extra=("--register-secret-file", str(secret)))
    e1 = nodes.start(
        "edge",
        *("--cache", str(tmp_path / "e1"), "--parent", origin.url, "--register-with", router.url, "--register-region", "east"),
        *("--register-capacity", "10MB/s", "--register-secret-file", str(secret)),
        host="127.10.0.1",
        name="e1",
    )
    deadline = time.monotonic() + 10 * POLL
    while e1.url not in up_edges(router, EAST_CLIENT):
        assert time.monotonic() < deadline, router_status(router)["edges"]
        time.sleep(POLL / 4)
    assert location(router, "/films/x", EAST_CLIENT) == e1.url + "/films/x"
    row = router_status(router)["edges"][0]
    assert (row["url"], row["region"], row["capacity_Bps"], row["listed"]) == (e1.url, "east", 10_000_000, False)
    assert "registered with router" in e1.log_text()


@needs_tools
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stopping_edge_leaves_its_router_at_once_serves_its_drain_and_is_back_when_restarted(nodes, tmp_path, origin, workers):
    """SIGTERM: the router takes the edge out before any poll could (30 s apart), while the edge still serves for the
    router's DNS TTL; restarted, it is up at its registration.  A restart between two polls went unseen and the clients
    sent there meanwhile were refused (an adversarial session)."""
    router = start_router(nodes, tmp_path, extra=("--poll-interval", "30", "--dns-ttl", "2"))
    registered = ("--register-with", router.url, "--register-region", "east", "--register-capacity", "10MB/s", "--workers", workers)
    e1, e2 = (
        nodes.start("edge", "--cache", str(tmp_path / n), "--parent", origin.url, *registered, host=h, name=n)
        for n, h in (("e1", "127.10.0.1"), ("e2", "127.10.0.2"))
    )
    wait_for(lambda: sorted(up_edges(router, EAST_CLIENT)) == sorted([e1.url, e2.url]), "both edges up", router)
    assert e1.proc is not None
    e1.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    wait_for(lambda: up_edges(router, EAST_CLIENT) == [e2.url], "the stopping edge out", router, within=1.5)
    row = next(e for e in router_status(router)["edges"] if e["url"] == e1.url)
    assert (row["state"], row["reason"]) == ("down", "stopping (it told the router)")
    assert curl("-o", "/dev/null", "-w", "%{http_code}", e1.url + "/status").stdout == b"200"  # draining: still serves
    assert e1.proc.wait(10) == 0
    assert time.monotonic() - stopped >= 1.5  # the DNS TTL's 2 s, give or take the leaving's own time
    assert "told router" in e1.log_text() and "serving 2 s more" in e1.log_text()
    restart(e1)
    wait_for(lambda: sorted(up_edges(router, EAST_CLIENT)) == sorted([e1.url, e2.url]), "the restarted edge up", router, within=5)
    lines = router.log_text()
    assert f"edge {e1.url} (east) is down: stopping" in lines and "WARNING" not in lines


def wait_for(ok, what: str, router, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {within} s; {router_status(router)['edges']}"
        time.sleep(0.1)


@needs_tools
def test_a_hot_edge_hands_its_paths_to_another_until_it_cools(nodes, tmp_path, origin, published):
    """Edges stated at 200 KB/s: a 3 MiB download makes the chosen one run far above capacity for a poll or two."""
    data = make_file(published / "films" / "a.bin", 3 * 1024 * 1024)
    e1 = start_edge(nodes, tmp_path, origin, "e1", "127.10.0.1")
    e2 = start_edge(nodes, tmp_path, origin, "e2", "127.10.0.2")
    router = start_router(nodes, tmp_path, (e1, "east"), (e2, "east"), capacity="200KB/s")
    deadline = time.monotonic() + 10
    while curl("-o", "/dev/null", "-w", "%{http_code}", origin.url + "/films/a.bin").stdout != b"200":
        assert time.monotonic() < deadline, "origin did not publish the file"
        time.sleep(0.1)
    chosen = location(router, "/films/a.bin", EAST_CLIENT).rsplit("/films/", 1)[0]
    assert ask(router, "/films/a.bin", EAST_CLIENT, "-L").stdout == data  # through the chosen edge
    seen, deadline = [], time.monotonic() + 4 * POLL
    while time.monotonic() < deadline:
        seen.append(location(router, "/films/a.bin", EAST_CLIENT).rsplit("/films/", 1)[0])
        time.sleep(POLL / 10)
    assert set(seen) - {chosen}, "the hot edge kept its path"  # moved while hot...
    assert seen[-1] == chosen  # ...and came back once its egress fell
    row = next(e for e in router_status(router)["edges"] if e["url"] == chosen)
    assert row["state"] == "up"


def outside_address() -> str | None:
    """An address of this host that is not loopback (an edge trusts loopback callers with /status): None when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1, never sent to: only picks the source address of the default route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_an_edge_under_require_token_is_polled_with_the_status_token(nodes, tmp_path, origin, published):
    """/status of an edge under --require-token wants a token from outside its loopback and --internal networks:
    a router there without --status-token-file sees 401s; with it, the edge is up."""
    host = outside_address()
    if host is None:
        pytest.skip("this host has no address but loopback, and an edge answers /status to loopback without a token")
    key = published / ".edgeswarm" / "origin.key"
    deadline = time.monotonic() + 10
    while not key.exists():
        assert time.monotonic() < deadline, "the origin made no key"
        time.sleep(0.1)
    issued = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "token", "issue", "--key", str(key), "--user", "router", "--path", "/", "--ttl", "1h"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert issued.returncode == 0, issued.stderr
    token_file = tmp_path / "status.token"
    token_file.write_text(issued.stdout)  # the command's output as is: its last line is the token
    edge = nodes.start("edge", "--cache", str(tmp_path / "w1"), "--parent", origin.url, "--require-token", host=host, name="w1")
    blind = start_router(nodes, tmp_path, (edge, "west"))
    seeing = nodes.start(
        "router",
        *("--regions", str(tmp_path / "regions.yaml"), "--poll-interval", str(POLL), "--edge", f"{edge.url},west,10MB/s"),
        *("--status-token-file", str(token_file)),
        name="router-with-token",
    )
    deadline = time.monotonic() + 10 * POLL
    while True:
        rows = [router_status(r)["edges"][0] for r in (blind, seeing)]
        if (
            rows[0]["reason"].startswith("/status answered 401: a token is required")
            and rows[1]["state"] == "up"
            and rows[1]["polled"] is not None
        ):
            break
        assert time.monotonic() < deadline, [(r["state"], r["reason"]) for r in rows]
        time.sleep(POLL / 4)
    assert rows[0]["polled"] is None  # the blind router never read the edge's figures


def test_an_edges_url_has_one_spelling_whatever_a_flag_list_or_registration_wrote():
    from edgeswarm.policy.routing import RoutingError, RoutingTable
    from edgeswarm.protocol.registration import edge_spec

    table = RoutingTable()
    table.add(edge_spec({"url": "http://[fd00::11]:8080", "region": "east", "capacity": "1MB/s"}, ["east"], True), 0.0)
    spelt = {"url": "http://[FD00:0:0:0:0:0:0:11]:8080/", "region": "east", "capacity": "1MB/s"}
    with pytest.raises(RoutingError, match="listed in the router's configuration"):  # was a second, unlisted edge
        table.add(edge_spec(spelt, ["east"], False), 1.0)
    assert edge_spec({"url": "https://Edge.Example:443", "region": "east", "capacity": 1e6}, ["east"], False).url == "https://edge.example"


def test_a_dns_query_of_a_family_its_region_lacks_is_not_answered_with_another_regions_edge():
    """East's only edge is IPv6: an A query from east got west's IPv4 edge, and west's AAAA east's edge, though both
    regions had an edge up (an adversarial session).  Another region serves a region with no edge up only."""
    from dnslib import RCODE, DNSRecord

    from edgeswarm.policy.regions import RegionMap
    from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Sample
    from edgeswarm.roles.router import Router, RouterConfig

    table = RoutingTable()
    for url, region in (("http://[fd00::11]:8080", "east"), ("http://127.10.0.21:8080", "west")):
        table.add(EdgeSpec(url, region, 1e6), 0.0)
        table.health[url].succeeded(Sample(1.0, 0, 0, 0), table.thresholds)
    doc = {
        "regions": [{"name": "east", "isp": "a", "networks": ["127.1.0.0/16"]}, {"name": "west", "isp": "b", "networks": ["127.2.0.0/16"]}]
    }
    router = Router(RegionMap.from_doc(doc), table, RouterConfig(dns_name="cdn.test"))

    def ask(qtype: str, client: str) -> tuple[list[str], int]:
        answer = DNSRecord.parse(router.dns_answer(DNSRecord.question("cdn.test", qtype).pack(), client))
        return [str(r.rdata) for r in answer.rr], answer.header.rcode

    assert ask("AAAA", "127.1.0.9") == (["fd00::11"], RCODE.NOERROR)
    assert ask("A", "127.1.0.9") == ([], RCODE.NOERROR)  # was west's 127.10.0.21
    assert ask("AAAA", "127.2.0.9") == ([], RCODE.NOERROR)  # was east's fd00::11
    table.health["http://127.10.0.21:8080"].failed(1.0, "killed", table.thresholds)
    assert ask("AAAA", "127.2.0.9") == (["fd00::11"], RCODE.NOERROR)  # west has no edge up: east's serves it


async def test_edges_lists_a_peer_the_edges_of_its_ip_family_only():
    """A router with IPv4 and IPv6 edges in a region listed all of them to every peer: a peer keeps to its listener's
    family, and warned of the other family's edge at every try, for good (an adversarial session); with its
    family's edges down, it is served by another region's, not by an edge it cannot reach."""
    from unittest.mock import Mock

    from aiohttp.test_utils import make_mocked_request

    from edgeswarm.errors import HttpError
    from edgeswarm.policy.regions import RegionMap
    from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Sample
    from edgeswarm.roles.router import Router, RouterConfig

    table = RoutingTable()
    edges = (
        ("http://[fd00::11]:8080", "east"),
        ("http://127.10.0.11:8080", "east"),
        ("http://edge.test", "east"),
        ("http://[fd00::21]:8080", "west"),
    )
    for url, region in edges:
        table.add(EdgeSpec(url, region, 1e6), 0.0)
        table.health[url].succeeded(Sample(1.0, 0, 0, 0), table.thresholds)
    doc = {
        "regions": [
            {"name": "east", "isp": "a", "networks": ["127.1.0.0/16", "fd00:1::/64"]},
            {"name": "west", "isp": "b", "networks": ["127.2.0.0/16"]},
        ]
    }
    router = Router(RegionMap.from_doc(doc), table, RouterConfig())

    async def listed(client: str) -> list[str]:
        transport = Mock(get_extra_info=lambda name, default=None: (client, 5000) if name == "peername" else default)
        answer = await router.get_edges(make_mocked_request("GET", "/edges", transport=transport))
        return sorted(e["url"] for e in json.loads(answer.body)["edges"])

    assert await listed("fd00:1::5") == ["http://[fd00::11]:8080", "http://edge.test"]
    assert await listed("127.1.0.5") == ["http://127.10.0.11:8080", "http://edge.test"]
    assert await listed("::ffff:127.1.0.5") == ["http://127.10.0.11:8080", "http://edge.test"]  # IPv4, on a dual-stack socket
    for url in ("http://[fd00::11]:8080", "http://edge.test"):
        table.health[url].failed(1.0, "killed", table.thresholds)
    assert await listed("fd00:1::5") == ["http://[fd00::21]:8080"]  # west's, not east's IPv4 one
    table.remove("http://[fd00::21]:8080")
    assert await listed("fd00:1::5") == ["http://[fd00::11]:8080", "http://edge.test"]  # down, but its own: not a 503
    table.remove("http://[fd00::11]:8080")
    table.remove("http://edge.test")
    with pytest.raises(HttpError, match="no IPv6 edge serves region east"):
        await listed("fd00:1::5")


async def test_an_https_request_goes_to_an_https_edge_even_one_that_missed_polls_never_to_http():
    """An HTTPS client got 503 "no HTTPS edge" while its region's HTTPS edge had missed polls and an http:// one was
    up, where with every edge down it got the HTTPS edge (a review): the edges it can use decide "none up"."""
    from unittest.mock import Mock

    from aiohttp.test_utils import make_mocked_request

    from edgeswarm.errors import HttpError
    from edgeswarm.policy.regions import RegionMap
    from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Sample
    from edgeswarm.roles.router import Router, RouterConfig

    table = RoutingTable()
    for url in ("https://127.10.0.1:8443", "http://127.10.0.2:8080"):
        table.add(EdgeSpec(url, "east", 1e6), 0.0)
        table.health[url].succeeded(Sample(1.0, 0, 0, 0), table.thresholds)
    router = Router(RegionMap.from_doc({"regions": [{"name": "east", "isp": "a", "networks": ["127.1.0.0/16"]}]}), table, RouterConfig())

    async def location(n: int) -> str:
        transport = Mock(get_extra_info=lambda name, default=None: ("127.1.0.5", 5000) if name == "peername" else default)
        answer = await router.redirect(make_mocked_request("GET", f"/f{n}.bin", transport=transport, sslcontext=Mock()))
        return answer.headers["Location"].split("/f")[0]

    assert {await location(n) for n in range(8)} == {"https://127.10.0.1:8443"}
    table.health["https://127.10.0.1:8443"].failed(1.0, "missed a poll", table.thresholds)
    assert {await location(n) for n in range(8)} == {"https://127.10.0.1:8443"}  # was a 503
    table.remove("https://127.10.0.1:8443")
    with pytest.raises(HttpError, match="no HTTPS edge serves region east"):
        await location(0)
