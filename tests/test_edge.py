"""Edge caches end to end: hierarchy, partial fetches, collapsing, eviction, restarts, faults."""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp
import pytest
from conftest import Misbehaving, announce_empty, curl, make_file, received_from, sha, status

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses

MiB = 1024 * 1024


def edge(nodes, tmp_path, parent_url, *extra, name="edge"):
    return nodes.start("edge", "--cache", str(tmp_path / name), "--parent", parent_url, *extra, name=name)


async def get(http, url, **headers):
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_three_tier_hierarchy_serves_verified_bytes(tmp_path, nodes, origin, published, http):
    data = make_file(published / "movie.mp4", 3 * MiB + 123)
    await asyncio.sleep(0.5)  # first scan
    mid = edge(nodes, tmp_path, origin.url, name="mid")
    leaf = edge(nodes, tmp_path, mid.url, name="leaf")
    code, body = await get(http, leaf.url + "/movie.mp4")
    assert code == 200 and sha(body) == sha(data)
    # every tier now holds all 13 pieces, and each hop carried the file once
    for node in (mid, leaf):
        st = await status(http, node.url)
        assert [(c["path"], c["held"], c["pieces"]) for c in st["contents"]] == [("movie.mp4", 13, 13)]
        assert received_from(st, "parent") == len(data)
    assert (await status(http, origin.url))["bytes_sent"]["node"] == len(data)
    # a second read is a pure hit at the leaf
    code, body = await get(http, leaf.url + "/movie.mp4")
    assert code == 200 and body == data
    assert received_from(await status(http, leaf.url), "parent") == len(data)
    r = await asyncio.to_thread(curl, "-o", "-", leaf.url + "/movie.mp4")
    assert sha(r.stdout) == sha(data)


async def test_partial_fetch_of_a_huge_file_moves_only_the_pieces_needed(tmp_path, nodes, published, http):
    """A 1 MiB range of a 1 GiB file: each hop carries the 3 pieces that hold it, no more."""
    path = published / "huge.iso"
    with open(path, "wb") as f:  # sparse, with real data around the range read
        f.truncate(1024 * MiB)
        f.seek(500 * MiB)
        f.write(os.urandom(4 * MiB))
    origin = nodes.start("origin", "--publish", str(published))
    mid = edge(nodes, tmp_path, origin.url, name="mid")
    leaf = edge(nodes, tmp_path, mid.url, name="leaf")
    first = 500 * MiB + 1000
    code, body = await get(http, leaf.url + "/huge.iso", Range=f"bytes={first}-{first + MiB - 1}")
    with open(path, "rb") as f:
        f.seek(first)
        assert code == 206 and body == f.read(MiB)
    piece = 512 * 1024  # 1 GiB -> 512 KiB pieces; the range touches pieces 1000..1002
    leaf_st, mid_st, origin_st = [await status(http, n.url) for n in (leaf, mid, origin)]
    assert received_from(leaf_st, "parent") == 3 * piece
    assert received_from(mid_st, "parent") == 3 * piece
    assert mid_st["bytes_sent"]["node"] == 3 * piece
    assert origin_st["bytes_sent"]["node"] == 3 * piece
    assert leaf_st["bytes_sent"]["client"] == MiB


async def test_concurrent_misses_for_a_piece_cause_one_upstream_fetch(tmp_path, nodes, origin, published, http):
    data = make_file(published / "hot.bin", 2 * MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url)
    results = await asyncio.gather(*[get(http, leaf.url + "/hot.bin") for _ in range(20)])
    assert all(code == 200 and body == data for code, body in results)
    origin_st, leaf_st = await status(http, origin.url), await status(http, leaf.url)
    assert origin_st["bytes_sent"]["node"] == len(data)  # each of the 8 pieces crossed once
    assert leaf_st["events"]["upstream_fetch"] == 8
    assert leaf_st["events"]["collapsed"] >= 1
    assert leaf_st["bytes_sent"]["client"] == 20 * len(data)


async def test_cache_stays_under_quota_and_keeps_popular_content(tmp_path, nodes, origin, published, http):
    files = {name: make_file(published / name, MiB) for name in ("popular.bin", "b.bin", "c.bin", "d.bin")}
    await asyncio.sleep(0.5)
    # one process: the LFU-DA order is a worker's own (with several, each evicts within its share of the quota)
    leaf = edge(nodes, tmp_path, origin.url, "--max-cache", "2MiB", "--workers", "1")
    for _ in range(5):
        assert await get(http, leaf.url + "/popular.bin") == (200, files["popular.bin"])
    for name in ("b.bin", "c.bin", "d.bin"):
        assert await get(http, leaf.url + "/" + name) == (200, files[name])
    st = await status(http, leaf.url)
    held = {c["path"]: c["held"] for c in st["contents"]}
    assert st["cache_bytes"] <= 2 * MiB
    assert st["evicted_pieces"] >= 8
    assert held["popular.bin"] == 4  # LFU-DA: the popular file survived three newer ones
    on_disk = sum(f.stat().st_size for f in (tmp_path / "edge" / "content").rglob("*.piece"))
    assert on_disk == st["cache_bytes"]


async def test_an_edge_under_a_small_quota_takes_a_file_from_its_parent_about_once(tmp_path, nodes, origin, published, http):
    """Its read-ahead (4 pieces) outran a 1 MB quota: pieces fetched ahead were evicted before the reader came to them
    and fetched again, 1.4-1.97 x the file from the origin for one reader (an adversarial session); the cache cost more
    upstream than none.  Read-ahead is at most half of what the quota keeps (PieceStore.read_ahead)."""
    data = make_file(published / "film.bin", 8 * MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--max-cache", "1MB", "--workers", "1")
    assert await get(http, leaf.url + "/film.bin") == (200, data)
    sent = (await status(http, origin.url))["bytes_sent"]["node"]
    assert sent <= 1.15 * len(data), f"the origin sent {sent / len(data):.2f} x the file"


async def test_a_head_of_a_piece_is_its_head_alone_and_the_connection_goes_on(tmp_path, nodes, origin, published, http):
    """HEAD /piece sent the piece's body after its head: the connection's next answer was read from those bytes, and
    with --workers a forwarding worker's pooled connection to the primary gave another client a 503 (a review)."""
    data = make_file(published / "f.bin", 2 * MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--p2p", "--workers", "1")
    async with http.get(leaf.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    host, port = leaf.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    asked = f"/piece/{cid}/1 HTTP/1.1\r\nHost: x\r\nX-Edgeswarm-Peer: p\r\n\r\n"
    writer.write(f"HEAD {asked}GET {asked}".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 262144" in head, head
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert second.startswith(b"HTTP/1.1 200"), f"the HEAD's body came first: {second[:40]!r}"
    assert await asyncio.wait_for(reader.readexactly(262144), 10) == data[262144:524288]
    writer.close()


async def test_mirrors_started_as_readme_says_serve_the_same_etag_and_an_edge_moves_between_them(tmp_path, nodes, http):
    """README's Scenario 2, as written: two origins over copies of one folder, one key.  A mirror that started from the
    copied files and the key but no state took its files' history for lost and dated them at its own start: another
    ETag, an edge moved to it fetched everything again, and a peer given both cut every read (an adversarial session,
    since ef5d0cb).  The copy is made once the first mirror is up, its state (.edgeswarm/) with it."""
    import shutil

    a = tmp_path / "a"
    data = make_file(a / "films" / "movie.mp4", 3 * MiB)
    os.utime(a / "films" / "movie.mp4", (time.time() - 7200, time.time() - 7200))  # an hour or two old, as in a library
    key = str(tmp_path / "origin.key")
    first = nodes.start("origin", "--publish", str(a), "--key", key, name="a")
    shutil.copytree(a, tmp_path / "b", copy_function=shutil.copy2)  # cp -a
    second = nodes.start("origin", "--publish", str(tmp_path / "b"), "--key", key, name="b")
    etags = []
    for mirror in (first, second):
        async with http.head(mirror.url + "/films/movie.mp4") as r:
            etags.append(r.headers["ETag"])
    assert etags[0] == etags[1], etags
    leaf = edge(nodes, tmp_path, first.url)
    assert await get(http, leaf.url + "/films/movie.mp4") == (200, data)
    leaf.stop()
    first.stop()
    leaf = edge(nodes, tmp_path, second.url)
    assert await get(http, leaf.url + "/films/movie.mp4") == (200, data)
    assert not (await status(http, leaf.url))["bytes_received"], "fetched again from the second mirror"


async def test_a_page_published_on_the_cdn_is_sandboxed_also_in_a_304(tmp_path, nodes, origin, published, http):
    """Files that could be documents are sandboxed at edges (a published page read the viewer's ?token= and sent it
    away: an adversarial session), and so is a 304: a browser takes a 304's headers into what it stored, and a page
    cached before the sandbox ran its script on while unchanged (a review).  Media are not sandboxed."""
    (published / "page.html").write_text("<script>document.title = 'ran'</script>")
    make_file(published / "film.mp4", 1000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url)
    async with http.get(leaf.url + "/page.html") as r:
        assert r.headers["Content-Security-Policy"] == "sandbox" and r.headers["X-Content-Type-Options"] == "nosniff"
        etag = r.headers["ETag"]
    async with http.get(leaf.url + "/page.html", headers={"If-None-Match": etag}) as r:
        assert r.status == 304 and r.headers.get("Content-Security-Policy") == "sandbox", dict(r.headers)
        assert r.headers.get("X-Content-Type-Options") == "nosniff"
    async with http.get(leaf.url + "/film.mp4") as r:
        assert r.status == 200 and "Content-Security-Policy" not in r.headers  # a film opened here plays by itself
    async with http.get(leaf.url + "/page.html", headers={"If-Match": '"another"'}) as r:  # its text names the path
        assert r.status == 412 and r.headers.get("X-Content-Type-Options") == "nosniff", dict(r.headers)
    async with http.get(leaf.url + "/%3Cscript%3Ex%3C%2Fscript%3E.html") as r:  # an error that echoes the path
        assert r.status == 404 and r.headers.get("X-Content-Type-Options") == "nosniff", dict(r.headers)
    async with http.get(origin.url + "/nope") as r:
        assert r.status == 404 and r.headers.get("X-Content-Type-Options") == "nosniff", dict(r.headers)


async def test_sigkill_restart_keeps_the_cache_intact(tmp_path, nodes, origin, published, http):
    data = make_file(published / "keep.bin", 3 * MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url)
    assert await get(http, leaf.url + "/keep.bin") == (200, data)
    # a write cut short by the crash leaves a temporary file behind
    cdir = next((tmp_path / "edge" / "content").iterdir())
    (cdir / "5.tmp").write_bytes(b"half a piece")
    leaf.kill()
    origin.stop()  # nothing can be re-fetched: the cache alone must answer
    leaf2 = edge(nodes, tmp_path, origin.url, name="edge")
    assert await get(http, leaf2.url + "/keep.bin") == (200, data)
    code, body = await get(http, leaf2.url + "/keep.bin", Range="bytes=1000-2999999")
    assert code == 206 and body == data[1000:3000000]
    st = await status(http, leaf2.url)
    assert [(c["held"], c["pieces"]) for c in st["contents"]] == [(12, 12)]
    assert not (cdir / "5.tmp").exists()


async def test_parent_down_serves_cached_and_fails_uncached_with_502(tmp_path, nodes, origin, published, http):
    data = make_file(published / "cached.bin", MiB)
    make_file(published / "cold.bin", MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--revalidate", "0")
    code, body = await get(http, leaf.url + "/cached.bin", Range="bytes=0-262143")
    assert code == 206
    origin.stop()
    started = time.monotonic()
    code, body = await get(http, leaf.url + "/cached.bin", Range="bytes=0-262143")
    assert code == 206 and body == data[:262144]
    code, body = await get(http, leaf.url + "/cached.bin", Range="bytes=300000-300100")
    assert code == 502 and b"unreachable" in body  # manifest cached, piece not: nowhere to get it
    code, body = await get(http, leaf.url + "/cold.bin")
    assert code == 502 and b"unreachable" in body
    assert time.monotonic() - started < 5


async def test_hung_parent_gives_504_within_the_timeout(tmp_path, nodes, origin, published, http):
    key = published / ".edgeswarm" / "origin.key"
    async with Misbehaving(origin.url, hang=True) as hung:
        leaf = edge(nodes, tmp_path, hung.url, "--timeout", "1", "--origin-key", str(key))
        started = time.monotonic()
        code, body = await get(http, leaf.url + "/anything.bin")
        elapsed = time.monotonic() - started
    assert code == 504 and b"did not answer" in body
    assert 0.9 < elapsed < 4


async def test_readers_on_several_workers_get_their_504_within_the_timeout_too(tmp_path, nodes, origin, published, http):
    """With 4 workers and --timeout 3, readers of a piece the parent never sends got their 504 after 3, 6, 9 and 11 s:
    each worker in turn took the fill lock, found nothing stored and fetched again for a whole timeout."""
    make_file(published / "cold.bin", MiB)
    await asyncio.sleep(0.5)
    async with Misbehaving(origin.url, delay=3600) as stalled:  # manifests pass, pieces never come
        leaf = edge(nodes, tmp_path, stalled.url, "--timeout", "3", "--workers", "4")

        async def read() -> tuple[int, float]:
            started = time.monotonic()
            code, _ = await get(http, leaf.url + "/cold.bin")
            return code, time.monotonic() - started

        got = await asyncio.gather(*(read() for _ in range(6)))
    assert all(code == 504 for code, _ in got), got
    assert max(took for _, took in got) < 5.5, got


async def test_a_parents_503_with_retry_after_is_passed_on_not_made_a_502(tmp_path, nodes, origin, published, http):
    """An origin republishing a replaced file answers its pieces 503 with Retry-After: a player retries that; the edge
    made it a 502, "bad gateway", which blames the edge (an adversarial session with files replaced by a rename)."""
    make_file(published / "busy.bin", MiB)
    await asyncio.sleep(0.5)
    async with Misbehaving(origin.url, busy="7") as republishing:
        leaf = edge(nodes, tmp_path, republishing.url)
        async with http.get(leaf.url + "/busy.bin", headers={"Range": "bytes=0-9"}) as resp:
            said = await resp.text()
            assert (resp.status, resp.headers.get("Retry-After")) == (503, "7"), said
            assert "answered 503 for piece 0: changed on disk and is being republished" in said
        make_file(published / "other.bin", MiB)
        await asyncio.sleep(0.5)  # the origin's scan
        assert (await get(http, leaf.url + "/other.bin", Range="bytes=0-0"))[0] == 503  # its pieces too
        republishing.busy_manifests = True  # a file the edge has no manifest of: the 503 was a 502, the parent set aside
        async with http.get(leaf.url + "/third.bin") as resp:
            said = await resp.text()
            assert (resp.status, resp.headers.get("Retry-After")) == (503, "7"), said
            assert "no parent could give the manifest of third.bin" in said
        republishing.busy = ""
        await asyncio.sleep(1.2)  # other.bin's manifest is due for a check (--revalidate 1): the parent is asked
        assert (await get(http, leaf.url + "/other.bin", Range="bytes=0-0"))[0] == 206
    assert "without revalidation" not in leaf.log_text()


async def test_corrupt_parent_is_detected_and_nothing_bad_is_kept(tmp_path, nodes, origin, published, http):
    make_file(published / "x.bin", MiB)
    await asyncio.sleep(0.5)
    async with Misbehaving(origin.url, corrupt=True) as bad:
        leaf = edge(nodes, tmp_path, bad.url)
        code, body = await get(http, leaf.url + "/x.bin")
        st = await status(http, leaf.url)
    assert code == 502 and b"corrupt piece" in body
    assert st["cache_bytes"] == 0
    assert list((tmp_path / "edge" / "content").rglob("*.piece")) == []
    assert st["events"][f"corrupt_piece:{bad.url}"] >= 1


async def test_corrupt_sibling_is_set_aside_and_the_parent_used(tmp_path, nodes, origin, published, http):
    data = make_file(published / "y.bin", MiB)
    await asyncio.sleep(0.5)
    honest = edge(nodes, tmp_path, origin.url, name="honest")
    assert await get(http, honest.url + "/y.bin") == (200, data)
    async with Misbehaving(honest.url, corrupt=True) as liar:
        leaf = edge(nodes, tmp_path, origin.url, "--sibling", liar.url, name="leaf")
        assert await get(http, leaf.url + "/y.bin") == (200, data)
        st = await status(http, leaf.url)
    # only the pieces asked for in parallel before the first bad one came back; then set aside
    corrupt = st["events"][f"corrupt_piece:{liar.url}"]
    assert 1 <= corrupt <= 5 and liar.pieces_served == corrupt
    assert received_from(st, "parent") == len(data)


async def test_a_sibling_whose_pieces_fetched_at_once_are_corrupt_is_set_aside_once(tmp_path, nodes, origin, published, http):
    """Requests sent together failing one after another each doubled the back-off: a sibling whose pieces fetched at
    once were corrupt was set aside 2, 4, 8 and 16 s within milliseconds (an adversarial session)."""
    data = make_file(published / "z.bin", 4 * MiB)
    await asyncio.sleep(0.5)
    honest = edge(nodes, tmp_path, origin.url, name="honest")
    assert await get(http, honest.url + "/z.bin") == (200, data)
    async with Misbehaving(honest.url, corrupt=True) as liar:
        leaf = edge(nodes, tmp_path, origin.url, "--sibling", liar.url, name="leaf")
        assert await get(http, leaf.url + "/z.bin", Range="bytes=0-0") == (206, data[:1])  # the manifest, and a first piece
        for burst in range(3):  # a loaded machine may answer a burst one at a time: another burst, once the back-off ended
            said = len(leaf.log_text().splitlines())
            spans = [(i * 256 * 1024, i * 256 * 1024 + 9) for i in range(4 + 4 * burst, 8 + 4 * burst)]  # asked at once
            got = await asyncio.gather(*(get(http, leaf.url + "/z.bin", Range=f"bytes={a}-{b}") for a, b in spans))
            assert got == [(206, data[a : b + 1]) for a, b in spans]
            lines = [line for line in leaf.log_text().splitlines()[said:] if f"{liar.url} sent a corrupt piece" in line]
            if len(lines) >= 2:
                break
            await asyncio.sleep(4.5)  # past any back-off it earned
    assert len(lines) >= 2, lines  # else nothing was in flight together: the test would say nothing
    assert len({line.rsplit("set aside for ", 1)[-1] for line in lines}) == 1, lines  # one back-off for the burst, not doubled


async def test_a_sibling_trickling_its_pieces_is_set_aside_and_the_parent_used(tmp_path, nodes, origin, published, http):
    """A sibling at 17 KiB/s outlasted its 2 s timeout by the second each 16 KiB received earns: 16 s a piece, a
    success each time, asked first again, and no log line (an adversarial session: 1.3 MB in 30 s)."""
    data = make_file(published / "t.bin", 2 * MiB)
    await asyncio.sleep(0.5)
    warm = edge(nodes, tmp_path, origin.url, name="warm")
    assert await get(http, warm.url + "/t.bin") == (200, data)
    async with Misbehaving(warm.url, trickle=17 * 1024) as slow:
        leaf = edge(nodes, tmp_path, origin.url, "--sibling", slow.url, name="leaf")
        started = time.monotonic()
        assert await get(http, leaf.url + "/t.bin") == (200, data)
        took = time.monotonic() - started
        st = await status(http, leaf.url)
    assert received_from(st, "parent") >= len(data) - MiB, (took, st["bytes_received"])  # a piece or so from it at most
    lines = [line for line in leaf.log_text().splitlines() if f"sibling {slow.url}: " in line]
    assert 1 <= len(lines) <= 2 and "set aside" in lines[0] and "did not answer" in lines[0], lines  # a line per 10 s


async def test_bytes_sent_grow_while_a_download_is_under_way(tmp_path, nodes, origin, published, http):
    """An edge counted an answer's bytes when it ended: a router reading its egress saw 0 through a crowd's long
    downloads at the edge's cap, and kept sending it clients (an adversarial session)."""
    data = make_file(published / "long.bin", 4 * MiB)
    await asyncio.sleep(0.5)
    e = edge(nodes, tmp_path, origin.url, "--upload-limit", "1MB/s")
    assert await get(http, e.url + "/long.bin") == (200, data)  # cached: what follows is the edge's own sending
    before = (await status(http, e.url))["bytes_sent"].get("client", 0)
    async with aiohttp.ClientSession() as reader, reader.get(e.url + "/long.bin") as resp:
        got = await resp.content.readexactly(MiB)  # a second or so in, three to go
        during = (await status(http, e.url))["bytes_sent"].get("client", 0) - before
        got += await resp.read()
    assert got == data and during >= MiB // 2, during


async def test_pieces_come_from_a_sibling_that_holds_them(tmp_path, nodes, origin, published, http):
    data = make_file(published / "z.bin", 2 * MiB)
    await asyncio.sleep(0.5)
    warm = edge(nodes, tmp_path, origin.url, name="warm")
    assert await get(http, warm.url + "/z.bin") == (200, data)
    leaf = edge(nodes, tmp_path, origin.url, "--sibling", warm.url, name="leaf")
    assert await get(http, leaf.url + "/z.bin") == (200, data)
    st = await status(http, leaf.url)
    assert received_from(st, "sibling") == len(data)
    assert received_from(st, "parent") == 0
    assert (await status(http, origin.url))["bytes_sent"]["node"] == len(data)  # only the warm-up


async def test_siblings_never_fetch_for_each_other(tmp_path, nodes, origin, published, http):
    make_file(published / "cold.bin", MiB)
    await asyncio.sleep(0.5)
    a = edge(nodes, tmp_path, origin.url, name="a")
    b = edge(nodes, tmp_path, origin.url, "--sibling", a.url, name="b")
    code, _ = await get(http, b.url + "/cold.bin")
    assert code == 200
    assert (await status(http, a.url))["bytes_sent"] == {}
    assert received_from(await status(http, b.url), "parent") == MiB


async def test_internal_limits_who_may_cause_fetches(tmp_path, nodes, origin, published, http):
    data = make_file(published / "warm.bin", MiB)
    make_file(published / "cold.bin", MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--internal", "127.0.0.2/32", "--workers", "1")  # a torrent is held per worker
    inside = await asyncio.to_thread(curl, "--interface", "127.0.0.2", "-o", "-", leaf.url + "/warm.bin")
    assert inside.stdout == data
    outside = await asyncio.to_thread(curl, "-o", "-", leaf.url + "/warm.bin")
    assert outside.stdout == data  # cached content is served to anyone
    cold = await asyncio.to_thread(curl, "-o", "-", "-w", "%{http_code}", leaf.url + "/cold.bin")
    assert cold.stdout.endswith(b"403") and b"internal network" in cold.stdout
    # a torrent the edge does not hold is fetched from the origin, which hashes the whole file: an internal client's call
    for kind in ("torrent", "magnet"):
        refused = await asyncio.to_thread(curl, "-o", "-", "-w", "%{http_code}", f"{leaf.url}/{kind}/warm.bin")
        assert refused.stdout.endswith(b"403") and b"internal network" in refused.stdout, refused.stdout
    fetched = await asyncio.to_thread(curl, "--interface", "127.0.0.2", "-o", "-", "-w", "%{http_code}", leaf.url + "/torrent/warm.bin")
    assert fetched.stdout.endswith(b"200")
    held = await asyncio.to_thread(curl, "-o", "-", "-w", "%{http_code}", leaf.url + "/magnet/warm.bin")
    assert held.stdout.endswith(b"200") and held.stdout.startswith(b"magnet:")  # the edge holds it now: anyone gets it


async def test_only_origin_limits_the_host_names_served(tmp_path, nodes, origin, published, http):
    data = make_file(published / "a.txt", 1000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--only-origin", "cdn.example.com")
    for host in ("cdn.example.com", "CDN.example.com.", f"cdn.example.com.:{leaf.url.rsplit(':', 1)[1]}"):  # absolute names too
        ok = await asyncio.to_thread(curl, "-H", f"Host: {host}", leaf.url + "/a.txt")
        assert ok.stdout == data, host
    other = await asyncio.to_thread(curl, "-w", "%{http_code}", "-H", "Host: evil.example.net", leaf.url + "/a.txt")
    assert other.stdout.endswith(b"403") and b"serves only cdn.example.com" in other.stdout


async def test_changed_file_reaches_the_edge_and_old_pieces_go(tmp_path, nodes, origin, published, http):
    make_file(published / "doc.txt", 1000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--revalidate", "0.2")
    assert (await get(http, leaf.url + "/doc.txt"))[0] == 200
    new = make_file(published / "doc.txt", 2000)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and await get(http, leaf.url + "/doc.txt") != (200, new):
        await asyncio.sleep(0.1)
    assert await get(http, leaf.url + "/doc.txt") == (200, new)
    st = await status(http, leaf.url)
    assert [c["path"] for c in st["contents"]] == ["doc.txt"]  # the old version was dropped
    (published / "doc.txt").unlink()
    await asyncio.sleep(1.5)
    assert (await get(http, leaf.url + "/doc.txt"))[0] == 404


async def test_a_file_rewritten_under_the_origin_reaches_the_edge_at_an_older_mtime(tmp_path, nodes, published, http):
    """A file replaced by one with an older mtime between two scans: the origin found a piece that no longer matched,
    withdrew the file and hashed it again as a first version, at its mtime, older than the one the edge held; the edge
    refused it and served the old bytes for good (found by an adversarial session)."""
    make_file(published / "f.bin", 600_000)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "60")  # no scan sees the rewrite
    leaf = edge(nodes, tmp_path, origin.url)
    assert (await get(http, leaf.url + "/f.bin"))[0] == 200
    staged = published / ".f.bin.new"
    new = make_file(staged, 600_000)
    os.utime(staged, (1_577_836_800, 1_577_836_800))  # 2020: older than the version the edge holds
    os.replace(staged, published / "f.bin")
    assert (await get(http, origin.url + "/f.bin"))[0] == 503  # the origin's own read finds the mismatch
    deadline = time.monotonic() + 15
    while await get(http, leaf.url + "/f.bin") != (200, new):
        assert time.monotonic() < deadline, "the edge still serves the version before the rewrite"
        await asyncio.sleep(0.2)
    assert "older version" not in leaf.log_text()


async def test_a_read_that_finds_its_version_withdrawn_makes_the_next_one_ask(tmp_path, nodes, origin, published, http):
    """A file replaced at the origin: the edge's next piece fill for the version it held got the parent's 404, and until
    its --revalidate time was up every read of the still published path got a 404 or a cut body (adversarial session).
    That first read is now answered from the new version too: a 404 for a file that is there was final to players."""
    make_file(published / "w.bin", 2_000_000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--revalidate", "30", "--workers", "1")  # one worker: each read finds the same one
    assert (await get(http, leaf.url + "/w.bin", Range="bytes=0-0"))[0] == 206
    new = make_file(published / "w.bin", 2_000_000)
    await asyncio.sleep(1.0)  # the origin's scan (0.2 s) publishes the new version
    # a piece the edge lacks: the old version's is gone upstream, nothing went out yet, the new version is asked for
    assert await get(http, leaf.url + "/w.bin", Range="bytes=1000000-1000099") == (206, new[1_000_000:1_000_100])
    assert await get(http, leaf.url + "/w.bin", Range="bytes=0-99") == (206, new[:100])


async def test_a_gateway_read_that_finds_its_version_withdrawn_makes_the_next_one_ask(tmp_path, nodes, origin, published, http):
    """The peer's twin of the edge's rule: its edge's 404 for a piece of the version the gateway held left every read of
    the replaced file a 404 until the gateway's own revalidation (5 s)."""
    old = make_file(published / "w.bin", 24_000_000)  # beyond what a read at 0 fetches ahead (16 MiB)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--p2p")
    args = ("--cache", str(tmp_path / "peer"), "--edge", leaf.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
    gateway = nodes.start("peer", *args, name="peer").urls["gateway"]
    assert (await get(http, gateway + "/w.bin", Range="bytes=0-0"))[0] == 206
    new = make_file(published / "w.bin", 24_000_000)
    await asyncio.sleep(1.5)  # the origin publishes it; the edge's manifest (1 s) is due for a check
    deadline = time.monotonic() + 10  # a loaded machine: the origin's scan may come later
    while (await get(http, leaf.url + "/w.bin", Range="bytes=0-0")) != (206, new[:1]):  # the edge has the new version
        assert time.monotonic() < deadline, "the edge never took the new version"
        await asyncio.sleep(0.2)
    # the old piece if held and fresh (5 s); else its edge's 404 says the version is gone, and the read is answered
    # from the new one (a 404 until the next read, before: final to a player)
    first = await get(http, gateway + "/w.bin", Range="bytes=20000000-20000099")
    assert first in ((206, old[20_000_000:20_000_100]), (206, new[20_000_000:20_000_100])), first
    deadline = time.monotonic() + 8  # else within the gateway's own revalidation (5 s)
    while (got := await get(http, gateway + "/w.bin", Range="bytes=20000000-20000099")) != (206, new[20_000_000:20_000_100]):
        assert got == (206, old[20_000_000:20_000_100]), got
        assert time.monotonic() < deadline, "the gateway never took the new version"
        await asyncio.sleep(0.2)


async def test_an_edge_whose_pinned_key_is_not_its_parents_says_so_once_at_start(tmp_path, nodes, origin, published):
    """A replaced origin key was only seen as one refused manifest per path, with no word on how to pin the new one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeswarm.trust.signing import load_private_key, public_pem

    for name, key in (("wrong", Ed25519PrivateKey.generate()), ("right", load_private_key(published / ".edgeswarm" / "origin.key"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "origin.pub").write_bytes(public_pem(key.public_key()))
    wrong, right = edge(nodes, tmp_path, origin.url, name="wrong"), edge(nodes, tmp_path, origin.url, name="right")
    deadline = time.monotonic() + 10
    while "serves another origin key" not in wrong.log_text():
        assert time.monotonic() < deadline, "no word of the other key"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert wrong.log_text().count("serves another origin key") == 1  # once, not once per worker
    assert "delete " + str(tmp_path / "wrong" / "origin.pub") in wrong.log_text()
    assert "serves another origin key" not in right.log_text()


async def test_range_streams_before_the_whole_range_is_fetched(tmp_path, nodes, origin, published, http):
    data = make_file(published / "slow.bin", 8 * 256 * 1024)
    await asyncio.sleep(0.5)
    async with Misbehaving(origin.url, delay=0.4) as slow:  # 0.4 s per piece, one at a time
        leaf = edge(nodes, tmp_path, slow.url)
        started = time.monotonic()
        async with http.get(leaf.url + "/slow.bin") as resp:
            first = await resp.content.readexactly(1000)
            first_at = time.monotonic() - started
            rest = await resp.read()
        total = time.monotonic() - started
    assert first + rest == data
    assert total >= 8 * 0.4
    assert started + first_at < max(slow.served_at), "the client got nothing until the parent had sent every piece"


@pytest.mark.parametrize("bad", ["http://", "ftp://x"])
def test_edge_cli_rejects_bad_parent(tmp_path, bad):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "edge", "--cache", str(tmp_path), "--parent", bad.replace("http://", "nope")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "not an http(s) URL" in r.stderr


@pytest.mark.parametrize("bad", ["http://[::1", "http://edge:99999"])
def test_a_url_option_that_does_not_parse_is_a_usage_error_not_a_traceback(tmp_path, bad):
    """``http://[::1`` passed the check (an http prefix) and raised in urlsplit later."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "peer", "--cache", str(tmp_path), "--edge", bad], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "not an http(s) URL" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("role", ["edge", "peer"])
@pytest.mark.parametrize("key_known", [False, True], ids=["first start", "restart"])
def test_a_node_whose_cache_cannot_hold_its_directories_stops_with_the_reason(tmp_path, role, key_known):
    """A file where the cache's content directory goes: exit 2 and a sentence, on a first start (the origin key still to
    learn, which once hid it in a background task: 503 "still learning the origin key" forever) as on a restart."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "content").write_text("a file in the way")
    if key_known:
        (cache / "origin.pub").write_bytes(b"")  # only its presence matters: the cache check comes first
    where = ("--parent", "http://127.0.0.1:9") if role == "edge" else ("--edge", "http://127.0.0.1:9", "--gateway", "127.0.0.1:0")
    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", role, "--cache", str(cache), "--listen", "127.0.0.1:0", *where],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert f"cache {cache} is unusable: {cache}/content: File exists" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["edge", "--parent", "http://127.0.0.1:9"],
        ["edge", "--workers", "2", "--parent", "http://127.0.0.1:9"],
        ["peer", "--edge", "http://127.0.0.1:9"],
        ["get", "http://127.0.0.1:9/a"],
    ],
)
def test_a_cache_path_that_is_a_file_stops_every_node_with_the_reason(tmp_path, command):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "edgeswarm", *command, "--cache", str(cache)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"cache {cache} is unusable" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("role", [["edge", "--workers", "1", "--parent"], ["peer", "--edge"]], ids=["edge", "peer"])
def test_a_bad_origin_key_file_stops_a_node_with_the_reason_and_nothing_else(tmp_path, role):
    """Start-up fails after the node opened its HTTP client sessions: they are closed, not reported by asyncio."""
    import subprocess
    import sys

    key = tmp_path / "origin.pem"
    key.write_text("not a key")
    cmd = [sys.executable, "-m", "edgeswarm", *role, "http://127.0.0.1:9", "--cache", str(tmp_path / "c"), "--origin-key", str(key)]
    r = subprocess.run([*cmd, "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"argument --origin-key: {key}: not a PEM Ed25519 key" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Unclosed" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    # read as the flags are: a missing key file said "[Errno 2] …" without the flag, after the cache was made
    r = subprocess.run([*cmd[:-1], str(tmp_path / "none.pem"), "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "argument --origin-key: cannot read" in r.stderr and "No such file" in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()


async def test_the_access_log_counts_a_cache_hit_s_body(tmp_path, nodes, origin, published, http):
    """A hit goes out with sendfile, past aiohttp's counts: the access log said 515 bytes for a 3 MB answer."""
    data = make_file(published / "a.bin", 3_000_000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url, "--access-log", "--workers", "1")

    async def lookups() -> dict[str, float]:
        async with http.get(leaf.url + "/metrics") as r:
            text = await r.text()
        return {k: float(v) for k, v in re.findall(r'edgeswarm_cache_lookups_total\{result="(\w+)",role="edge"\} (\S+)', text)}

    pieces = -(-len(data) // (256 * 1024))
    assert await get(http, leaf.url + "/a.bin") == (200, data)  # a miss: pieces fetched ahead are sent from disk
    assert (lookups_miss := await lookups()).get("miss") == pieces and lookups_miss.get("hit", 0) == 0, lookups_miss
    assert await get(http, leaf.url + "/a.bin") == (200, data)  # a hit
    assert (await lookups()).get("hit") == pieces
    assert await get(http, leaf.url + "/a.bin", Range="bytes=1000-1999999") == (206, data[1000:2_000_000])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and leaf.log_text().count('"GET /a.bin HTTP/1.1"') < 3:
        await asyncio.sleep(0.1)
    sizes = [int(line.split()[-2]) for line in leaf.log_text().splitlines() if '"GET /a.bin HTTP/1.1"' in line]
    bodies = [3_000_000, 3_000_000, 1_999_000]  # the log counts the head too, as aiohttp's %b does
    assert len(sizes) == 3 and all(body < size < body + 1000 for size, body in zip(sizes, bodies, strict=True)), sizes


async def test_status_lists_the_first_contents_and_counts_them_all(tmp_path, nodes, origin, published, http):
    """/status listed every cached content and the per-region swarms: 20 000 contents were 2.5 MB and a second of the
    edge's loop a poll (the dashboard polls every 2 s; an HLS video is a content per segment).  Now 100 rows each, the
    counts whole; ``?contents=all`` lists every one.  The edge runs with its default workers (one per core)."""
    count = 130
    for i in range(count):
        (published / f"f{i:03}.txt").write_bytes(b"x%d" % i)
    await asyncio.sleep(1.0)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p")
    cids = []
    for i in range(count):
        async with http.get(f"{edge.url}/manifest/f{i:03}.txt") as r:
            assert r.status == 200, await r.text()
            cids.append((await r.json())["id"])
        async with http.get(f"{edge.url}/f{i:03}.txt") as r:
            assert await r.read() == b"x%d" % i
    for cid in cids:
        await announce_empty(edge.url, "127.0.0.1", "p1", 7000, cid, 1)
    st = await status(http, edge.url)
    assert st["content_count"] == count
    assert [c["path"] for c in st["contents"]] == [f"f{i:03}.txt" for i in range(100)]
    assert all(c["held"] == c["pieces"] == 1 for c in st["contents"]), "a row does not say what the whole cache holds"
    region = st["p2p"]["regions"]["unmapped"]
    assert region["swarm_count"] == count and len(region["swarms"]) == 100
    assert st["p2p"]["user_count"] == 1 and st["p2p"]["users"] == {"-": 1}  # one row per token user, cut the same way
    async with http.get(edge.url + "/status?contents=all") as r:
        every = await r.json()
    assert [c["path"] for c in every["contents"]] == [f"f{i:03}.txt" for i in range(count)]
    assert len(every["p2p"]["regions"]["unmapped"]["swarms"]) == count
    async with http.get(edge.url + "/status?contents=lots") as r:
        assert r.status == 400 and "takes a number of rows or 'all'" in await r.text()
    assert "Traceback" not in edge.log_text()


async def test_a_wrong_origin_key_on_restart_stops_the_edge_and_keeps_its_cache(tmp_path, nodes, origin, published, http):
    """A stale or mistyped --origin-key emptied the cache while the parent served the real key, with no word but a line
    per content dropped (an adversarial session): a big edge then refills from its parent."""
    import subprocess
    import sys

    from edgeswarm.trust.signing import load_or_create_private_key, public_pem

    data = make_file(published / "a.bin", 600_000)
    await asyncio.sleep(0.5)
    leaf = edge(nodes, tmp_path, origin.url)
    assert (await get(http, leaf.url + "/a.bin"))[1] == data
    leaf.stop()
    pieces = sorted((tmp_path / "edge").rglob("*.piece"))
    assert pieces
    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(public_pem(load_or_create_private_key(tmp_path / "wrong.key").public_key()))
    cmd = [sys.executable, "-m", "edgeswarm", "edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--origin-key", str(wrong)]
    r = await asyncio.to_thread(subprocess.run, [*cmd, "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{wrong} is not the origin key {origin.url} serves" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and sorted((tmp_path / "edge").rglob("*.piece")) == pieces
    right = tmp_path / "right.pub"
    right.write_bytes((tmp_path / "edge" / "origin.pub").read_bytes())
    again = edge(nodes, tmp_path, origin.url, "--origin-key", str(right), name="edge")
    assert (await get(http, again.url + "/a.bin"))[1] == data
    assert "dropping cached content" not in again.log_text()


class WithdrawnParent(Misbehaving):
    """A parent that gives no manifest (500: say, one signed by a key the edge has not pinned yet) and answers 404 for
    every piece: the version the edge holds in part is no longer published."""

    async def handle(self, request):
        from aiohttp import web

        if request.path.startswith("/piece/"):
            return web.Response(status=404, text="content is no longer published\n")
        return web.Response(status=500, text="manifest for 'f.bin' is not signed by the pinned origin key\n")


async def test_a_version_held_in_part_and_no_longer_published_is_a_502_not_a_200_cut_at_each_read(tmp_path, nodes, origin, published, http):
    """Each read went out 200 with the whole length and was cut at the same byte, until the edge was given the origin's
    new key (an adversarial session): once the parent says the version is withdrawn, its reads are 502 with why."""
    import aiohttp

    make_file(published / "f.bin", 4 * 256 * 1024)
    await asyncio.sleep(0.5)
    first = edge(nodes, tmp_path, origin.url, "--workers", "1")
    async with http.get(first.url + "/f.bin", headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 206  # the manifest and piece 0 are cached
    first.stop()
    async with WithdrawnParent(origin.url) as parent:
        again = edge(nodes, tmp_path, parent.url, "--workers", "1")
        with pytest.raises(aiohttp.ClientPayloadError):  # the first read learns it mid-answer: cut, never a short 200
            async with http.get(again.url + "/f.bin") as r:
                assert r.status == 200
                await r.read()
        async with http.get(again.url + "/f.bin") as r:
            assert r.status == 502 and "is no longer published, in part only" in await r.text()
        async with http.get(again.url + "/f.bin", headers={"Range": "bytes=0-99"}) as r:
            assert r.status == 502  # even what it holds: a version no longer published is not served in part
