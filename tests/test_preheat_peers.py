"""``edgeswarm preheat --peers`` with real daemons: a share of the region's volunteering peers fetch and seed the content."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import curl, make_file, start_p2p_edge

PATH = "films/release.bin"
REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"


def get(url: str, *extra: str) -> dict:
    return json.loads(curl(*extra, url).stdout)


V1 = ("-H", "X-Edgeswarm-Peer: v1")  # as a peer polls for orders (a page cannot send it)


def start_peer(nodes, tmp_path, edge: str, n: int, *extra: str):
    return nodes.start(
        "peer",
        *("--cache", str(tmp_path / f"p{n}"), "--edge", edge, "--listen", f"127.1.0.{n}:0", "--gateway", "127.0.0.1:0", *extra),
        name=f"p{n}",
    )


def whole(peer) -> bool:
    """The peer holds PATH whole (its gateway's /status)."""
    st = get(peer.urls["gateway"] + "/status")
    return any(s["path"].strip("/") == PATH and s["complete"] for s in st["swarms"])


def holds_any(peer) -> bool:
    st = get(peer.urls["gateway"] + "/status")
    return any(s["path"].strip("/") == PATH and s["held"] for s in st["swarms"])


def wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_preheat_peers_asks_a_share_of_the_volunteers_and_only_them(nodes, tmp_path, origin, published):
    data = make_file(published / PATH, 2 * 1024 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)  # the default announce interval (300 s): orders come by long poll
    volunteers = [start_peer(nodes, tmp_path, edge.url, n, "--accept-preheat", "100MB") for n in (1, 2, 3, 4)]
    cramped = start_peer(nodes, tmp_path, edge.url, 5, "--accept-preheat", "1MB")  # volunteers, but the file does not fit
    bystander = start_peer(nodes, tmp_path, edge.url, 6)  # takes no orders: its disk is its user's
    wait(lambda: get(edge.url + "/preheat")["volunteers"].get("east") == 5, "the volunteers never asked the edge for orders")
    wait(lambda: curl("-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/{PATH}").stdout == b"200", "not published")
    # a page of a site whose name was rebound to 127.0.0.1 comes from loopback too, but under its own name
    rebound = curl("-H", "Host: rebound.test", "-w", "\n%{http_code}", edge.url + "/preheat").stdout.decode()
    assert rebound.endswith("\n403") and "loopback" in rebound, rebound
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", PATH, "--region", "east", "--edge", edge.url, "--peers", "50%", "--no-progress"]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert f"{PATH}: 3 of 5 volunteering peers asked (wants 3)" in got.stdout, got.stdout
    chosen = set(get(edge.url + "/preheat")["orders"][0]["chosen"])
    ids = {get(p.urls["gateway"] + "/status")["peer_id"]: p for p in [*volunteers, cramped, bystander]}
    assert len(chosen) == 3 and chosen <= {get(p.urls["gateway"] + "/status")["peer_id"] for p in volunteers}
    for pid in chosen:
        wait(lambda p=ids[pid]: whole(p), f"chosen peer {pid} never held {PATH} whole")
        out = tmp_path / "out.bin"
        assert curl("-o", str(out), f"{ids[pid].urls['gateway']}/{PATH}").returncode == 0 and out.read_bytes() == data
    for pid, peer in ids.items():
        if pid not in chosen:
            assert not holds_any(peer), f"{pid} was not asked, yet fetched {PATH}"
    # the edge's announce answers say which seeds it placed: a player starting behind one trades its first pieces
    cid, placed = get(f"{edge.url}/manifest/{PATH}")["id"], set[str]()

    def placed_in_answer() -> bool:
        body = {
            "peer_id": "probe",
            "port": 9,
            "content": cid,
            "pieces": 8,
            "have": "AA==",
            "uploaded": 0,
            "downloaded": 0,
            "event": "started",
        }
        got = curl("--interface", "127.1.0.9", "-X", "POST", "--json", json.dumps(body), f"{edge.url}/announce")
        placed.clear()
        placed.update(p["peer_id"] for p in json.loads(got.stdout)["peers"] if p.get("placed") is True)
        return placed == chosen

    wait(placed_in_answer, "announce answers never named exactly the chosen volunteers placed seeds")


def test_a_volunteers_held_poll_is_answered_when_the_edge_takes_an_order(nodes, tmp_path, origin, published):
    """The long poll: with the edge's current version, the answer waits for the next order (not the 300 s announce interval)."""
    make_file(published / PATH, 64 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    orders = f"{edge.url}/preheat/orders?peer_id=v1&room=100000000"
    first = get(orders, *V1)
    assert first["orders"] == [] and isinstance(first["version"], int)
    # a page of any site volunteered its visitors with <img> tags, never fetching, also at a plain-http edge whose
    # browsers send no Sec-Fetch-Site (adversarial sessions): without the peer's header, refused; a 404, which peers
    # from before the header take for "no orders" and ask again an interval on (a 403 they retried every 5 s)
    crossed = curl("-w", "\n%{http_code}", orders).stdout
    assert crossed.endswith(b"404") and b"preheat orders are for peer daemons" in crossed, crossed
    for bad in ("soon", "nan", "-5"):
        assert b"'wait' must be seconds" in curl(*V1, f"{orders}&since={first['version']}&wait={bad}").stdout, bad
    held = subprocess.Popen(
        ["curl", "-sS", *V1, "--max-time", "25", f"{orders}&since={first['version']}&wait=20", "--interface", "127.1.0.7"],
        stdout=subprocess.PIPE,
    )
    time.sleep(1.5)
    assert held.poll() is None, "the poll was answered before any order"
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", PATH, "--region", "east", "--edge", edge.url, "--peers", "100%", "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    out, _ = held.communicate(timeout=25)
    assert time.monotonic() - t0 < 10, "the held poll waited out its time instead of answering the new order"
    doc = json.loads(out)
    assert doc["version"] > first["version"] and [o["path"] for o in doc["orders"]] == [PATH]


def test_a_restarted_edge_keeps_its_preheat_orders(nodes, tmp_path, origin, published):
    """The orders live in the edge's cache: after a restart (or a crash) volunteers are still asked, until each expires."""
    make_file(published / PATH, 64 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    wait(lambda: curl("-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/{PATH}").stdout == b"200", "not published")
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", PATH, "--region", "east", "--edge", edge.url, "--peers", "50%", "--no-progress"]
    assert subprocess.run([*cmd, "--peers-for", "1h"], capture_output=True, text=True, timeout=60).returncode == 0
    before = get(edge.url + "/preheat")["orders"]
    edge.kill()  # SIGKILL: nothing is written at shutdown
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    after = get(edge.url + "/preheat")["orders"]
    assert (
        [(o["path"], o["region"], o["share"]) for o in after]
        == [(PATH, "east", 0.5)]
        == [(o["path"], o["region"], o["share"]) for o in before]
    )
    polled = get(f"{edge.url}/preheat/orders?peer_id=v1&room=100000000", *V1)  # from 127.0.0.1: not east's
    assert polled["orders"] == []
    assert "preheat: 1 orders kept from the last run" in edge.log_text()
    edge.kill()
    (tmp_path / "edge" / "preheat-orders.json").write_text('[{"content": 7}')  # damaged: the edge starts without them
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    assert get(edge.url + "/preheat")["orders"] == []
    assert "preheat orders in" in edge.log_text() and "Traceback" not in edge.log_text()


def test_an_order_is_taken_whole_or_not_at_all_for_a_region_the_edge_knows(nodes, tmp_path, origin, published):
    """An order naming a missing path was a 404 that left the other paths' orders standing, unsaved, and an unknown
    region was taken ("0 of 0 asked", exit 0); under --require-token, "Bearer garbage" volunteered and took places
    (an adversarial session)."""
    make_file(published / PATH, 64 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions, "--require-token")
    post = ["-X", "POST", "-H", "Content-Type: application/json", f"{edge.url}/preheat", "-w", "\n%{http_code}"]
    wait(lambda: curl(f"{edge.url}/manifest/{PATH}").returncode == 0 and b"401" not in curl(f"{edge.url}/healthz").stdout, "start")
    doc = {"paths": [PATH], "share": 0.5, "ttl": 600, "region": "nowhere"}
    said = curl("-d", json.dumps(doc), *post).stdout.decode()
    assert said.endswith("400") and "no region 'nowhere' in this edge's region map" in said, said
    doc = {"paths": [PATH, "nope.bin"], "share": 0.5, "ttl": 600, "region": "east"}
    said = curl("-d", json.dumps(doc), *post).stdout.decode()
    assert said.endswith("404") and "nope.bin" in said, said
    assert get(f"{edge.url}/preheat")["orders"] == []  # nothing of it was taken
    garbage = curl(
        "-H",
        "Authorization: Bearer garbage",
        "-H",
        "X-Edgeswarm-Peer: v",
        "-w",
        "\n%{http_code}",
        f"{edge.url}/preheat/orders?peer_id=v&room=1000",
    )
    assert garbage.stdout.decode().endswith("401"), garbage.stdout
    assert get(f"{edge.url}/preheat")["volunteers"] == {}


def test_a_volunteer_whose_token_expired_is_not_chosen_and_its_refused_poll_ends_its_places(nodes, tmp_path, origin, published):
    """Under --require-token a volunteer whose token had expired was still chosen for new orders, and kept its places
    until it had been silent three intervals, though it could fetch nothing (an adversarial session)."""
    from edgeswarm.trust import tokens
    from edgeswarm.trust.signing import load_private_key

    make_file(published / PATH, 64 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions, "--require-token")
    key = load_private_key(published / ".edgeswarm" / "origin.key")
    wait(lambda: curl(f"{edge.url}/manifest/{PATH}").returncode == 0, "start")
    short = tokens.issue(key, "eve", "/", 2)

    def poll(peer_id: str, token: str) -> str:  # from an address of its own in region east (one volunteer an address is chosen)
        url = f"{edge.url}/preheat/orders?peer_id={peer_id}&room=100000000"
        args = ["--interface", f"127.1.0.{len(peer_id)}", "-H", f"Authorization: Bearer {token}", "-H", f"X-Edgeswarm-Peer: {peer_id}", url]
        return curl(*args, "-w", "\n%{http_code}").stdout.decode()

    assert poll("eve", short).endswith("200") and poll("robert", tokens.issue(key, "robert", "/", 3600)).endswith("200")
    time.sleep(2.5)  # expired, within the leeway: its polls are still taken, but it is chosen for nothing
    order = ["-X", "POST", "-H", "Content-Type: application/json", f"{edge.url}/preheat", "-w", "\n%{http_code}"]
    said = curl("-d", json.dumps({"paths": [PATH], "share": 1, "ttl": 600, "region": "east"}), *order).stdout.decode()
    assert said.endswith("200") and [o["chosen"] for o in get(f"{edge.url}/preheat")["orders"]] == [["robert"]], said
    time.sleep(tokens.LEEWAY)
    assert poll("eve", short).endswith("401")
    assert get(f"{edge.url}/preheat")["volunteers"] == {"east": 1}  # robert's alone
    assert poll("robert", "garbage").endswith("401")  # anybody at his address, naming him: his place is his (a review)
    assert get(f"{edge.url}/preheat")["volunteers"] == {"east": 1}


def test_a_volunteer_without_room_for_an_order_gives_its_place_to_another(nodes, tmp_path, origin, published):
    """A volunteer chosen for two files with room for one kept both places: the second order was never fulfilled while
    /preheat said it was placed (an adversarial session).  It names the one it declines, and the edge asks another."""
    a, b = make_file(published / "a.bin", 3_000_000), make_file(published / "b.bin", 3_000_000)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    small = start_peer(nodes, tmp_path, edge.url, 1, "--accept-preheat", "5MB")  # room for one of the two
    wait(lambda: get(f"{edge.url}/preheat")["volunteers"].get("east") == 1, "the first volunteer")
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", "a.bin", "b.bin", "--region", "east", "--edge", edge.url]
    done = subprocess.run([*cmd, "--peers", "50%", "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    roomy = start_peer(nodes, tmp_path, edge.url, 2, "--accept-preheat", "100MB")

    def placed() -> dict[str, list[str]]:
        return {o["path"]: o["chosen"] for o in get(f"{edge.url}/preheat")["orders"]}

    wait(lambda: all(len(chosen) == 1 for chosen in placed().values()) and len(set(map(tuple, placed().values()))) == 2, "both placed")

    def holds(peer, path: str) -> bool:
        return any(s["path"].strip("/") == path and s["complete"] for s in get(peer.urls["gateway"] + "/status")["swarms"])

    wait(lambda: sum(holds(p, "a.bin") for p in (small, roomy)) == 1 and sum(holds(p, "b.bin") for p in (small, roomy)) == 1, "held")
    assert a and b


def test_a_volunteer_stopped_cleanly_gives_its_place_to_another_at_once(nodes, tmp_path, origin, published):
    """A chosen volunteer stopped with SIGTERM kept its place three announce intervals (15 minutes by default), the order
    short meanwhile while another volunteer idled (an adversarial session): it says it leaves, and the other takes it."""
    make_file(published / PATH, 512 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    peers = [start_peer(nodes, tmp_path, edge.url, n, "--accept-preheat", "100MB") for n in (1, 2)]
    wait(lambda: get(edge.url + "/preheat")["volunteers"].get("east") == 2, "the volunteers never asked the edge for orders")
    wait(lambda: curl("-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/{PATH}").stdout == b"200", "not published")
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", PATH, "--region", "east", "--edge", edge.url, "--peers", "50%", "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    ids = {get(p.urls["gateway"] + "/status")["peer_id"]: p for p in peers}
    (first,) = get(edge.url + "/preheat")["orders"][0]["chosen"]
    ids[first].stop()
    (other,) = set(ids) - {first}
    wait(lambda: get(edge.url + "/preheat")["orders"][0]["chosen"] == [other], "the stopped volunteer kept its place", timeout=10)
    assert get(edge.url + "/preheat")["volunteers"] == {"east": 1}
    wait(lambda: whole(ids[other]), f"the volunteer that took the place never held {PATH} whole", timeout=15)


def test_an_order_follows_its_path_published_again_and_ends_when_it_is_withdrawn(nodes, tmp_path, origin, published):
    """Republished, the order stayed on the withdrawn version for its life (a month at most), pinned on the volunteers'
    disks, and the new one was never preheated (an adversarial session): within FOLLOW_S it moves, and the volunteer
    seeds the new version; a path withdrawn ends its order."""
    from edgeswarm.roles.preheatdesk import FOLLOW_S

    make_file(published / PATH, 512 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    peer = start_peer(nodes, tmp_path, edge.url, 1, "--accept-preheat", "100MB")
    wait(lambda: get(edge.url + "/preheat")["volunteers"].get("east") == 1, "the volunteer never asked the edge for orders")
    wait(lambda: curl("-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/{PATH}").stdout == b"200", "not published")
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", PATH, "--region", "east", "--edge", edge.url, "--peers", "100%", "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    old = get(edge.url + "/preheat")["orders"][0]["content"]
    wait(lambda: whole(peer), f"the volunteer never held {PATH} whole")
    newer = make_file(published / PATH, 768 * 1024)
    wait(
        lambda: curl(f"{origin.url}/{PATH}", "-o", "/dev/null", "-w", "%{size_download}").stdout == str(len(newer)).encode(),
        "no new version",
    )
    wait(lambda: get(edge.url + "/preheat")["orders"][0]["content"] != old, "the order stayed on the old version", timeout=2 * FOLLOW_S + 5)
    new = get(edge.url + "/preheat")["orders"][0]["content"]
    assert new == get(f"{edge.url}/manifest/{PATH}")["id"]
    swarms = lambda: get(peer.urls["gateway"] + "/status")["swarms"]  # noqa: E731
    wait(lambda: any(s["id"] == new and s["complete"] for s in swarms()), f"the volunteer never held the new {PATH} whole")
    (published / PATH).unlink()
    wait(lambda: get(edge.url + "/preheat")["orders"] == [], "the withdrawn path's order stood", timeout=2 * FOLLOW_S + 15)


def test_a_volunteer_back_within_moments_of_leaving_waits_out_the_window_once_then_volunteers(nodes, tmp_path, origin, published):
    """A poll of a volunteer that had just left was answered at once with the current version, and the restarted peer
    asked again at once: 9 000 polls in 5 s (a review).  It waits out the window (LEFT_S), unregistered, and its answer
    names an older version, so that its next poll, at once, volunteers it again."""
    from edgeswarm.roles.preheatdesk import LEFT_S

    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    orders = f"{edge.url}/preheat/orders?peer_id=v1&room=100000000"
    first = get(orders, *V1, "--interface", "127.1.0.7")
    assert get(edge.url + "/preheat")["volunteers"] == {"east": 1}
    assert get(orders + "&leaving=1", *V1, "--interface", "127.1.0.7")["orders"] == []
    assert get(edge.url + "/preheat")["volunteers"] == {}
    started = time.monotonic()
    back = get(f"{orders}&since={first['version']}&wait=30", *V1, "--interface", "127.1.0.7")
    assert LEFT_S - 1 <= time.monotonic() - started < LEFT_S + 3 and back["orders"] == [] and back["version"] < first["version"]
    assert get(edge.url + "/preheat")["volunteers"] == {}  # that poll did not volunteer it: a late one of a stopped peer
    again = get(f"{orders}&since={back['version']}&wait=30", *V1, "--interface", "127.1.0.7")
    assert again["version"] == first["version"] and get(edge.url + "/preheat")["volunteers"] == {"east": 1}
