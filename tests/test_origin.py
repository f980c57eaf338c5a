"""The origin daemon end to end: publishing, manifests, restarts, hostile paths."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from conftest import curl, make_file, sha, status

from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.trust.signing import load_public_key

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses


async def wait_for(predicate, timeout: float = 2.0):
    """Poll an async predicate; the deadline is the requirement being tested."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_publishes_signed_manifests_and_serves_files(origin, published, http):
    data = make_file(published / "films" / "a.mp4", 700_000)

    async def published_yet():
        async with http.head(origin.url + "/films/a.mp4") as resp:
            return resp.status == 200

    assert await wait_for(published_yet)
    async with http.get(origin.url + "/origin-key") as resp:
        key = load_public_key(await resp.read())
    async with http.get(origin.url + "/manifest/films/a.mp4") as resp:
        assert resp.status == 200
        signed = SignedManifest.parse(await resp.read(), key)
    m = signed.manifest
    assert (m.path, m.size, m.content_type, m.piece_size) == ("films/a.mp4", 700_000, "video/mp4", 256 * 1024)
    assert [m.check_piece(i, data[i * m.piece_size : (i + 1) * m.piece_size]) for i in range(m.piece_count)] == [True] * 3
    async with http.get(origin.url + "/films/a.mp4") as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == signed.etag
        assert sha(await resp.read()) == sha(data)
    async with http.get(f"{origin.url}/piece/{signed.content_id}/2") as resp:
        assert await resp.read() == data[2 * 262144 :]


async def test_added_changed_and_deleted_files_show_within_two_seconds(origin, published, http):
    async def code(path: str) -> int:
        async with http.get(origin.url + path) as resp:
            await resp.read()
            return resp.status

    assert await code("/new.txt") == 404
    (published / "new.txt").write_text("first version\n")

    async def body_is(text: str):
        async with http.get(origin.url + "/new.txt") as resp:
            return resp.status == 200 and await resp.text() == text

    assert await wait_for(lambda: body_is("first version\n"))
    (published / "new.txt").write_text("second, longer version\n")
    assert await wait_for(lambda: body_is("second, longer version\n"))
    (published / "new.txt").unlink()

    async def gone():
        return await code("/new.txt") == 404

    assert await wait_for(gone)


async def test_restart_does_not_rehash_unchanged_files(nodes, published, http):
    make_file(published / "big.bin", 3_000_000)
    first = nodes.start("origin", "--publish", str(published), name="origin-a")
    st = await status(http, first.url)
    assert st["hashed_bytes"] == 3_000_000
    etag = st["files"]["big.bin"]
    first.stop()
    second = nodes.start("origin", "--publish", str(published), name="origin-b")
    st = await status(http, second.url)
    assert st["hashed_bytes"] == 0
    assert st["files"]["big.bin"] == etag  # same key, same manifest, same id


async def test_file_edited_behind_its_back_is_never_served_wrong(nodes, published, http):
    """Same size and mtime after an edit: only the per-piece check can notice."""
    path = published / "v.bin"
    data = make_file(path, 600_000)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "30")
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(300_000)
        f.write(b"X" * 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    async with http.get(origin.url + "/v.bin", headers={"Range": "bytes=262144-524287"}) as resp:
        assert resp.status == 503
        assert "changed on disk" in await resp.text()
    async with http.get(origin.url + "/v.bin", headers={"Range": "bytes=0-99"}) as resp:
        # withdrawn and re-hashed: being republished for a moment (never "not published") or served from the new manifest
        body = await resp.read()
        assert resp.status in (503, 206)
        if resp.status == 206:
            assert body == data[:100]


def sparse(path, size: int, first: bytes) -> None:
    """A file of ``size`` bytes, ``first`` at its start and zeros (holes) after: large to hash, nothing to write."""
    with open(path, "wb") as f:
        f.write(first)
        f.truncate(size)


async def test_a_file_replaced_by_a_rename_is_never_unpublished_while_its_new_version_is_hashed(nodes, published, http):
    """operations.md's way to replace a file: write it under a hidden name, rename it into place.  Until the new
    version was hashed, the path was "not published" (404, final to players and downloaders: 11 to 43 of them for
    400 MiB to 1.5 GB in an adversarial session); it is a 503 with Retry-After, then the new version."""
    path = published / "r.bin"
    sparse(path, 256 << 20, b"A")
    origin = nodes.start("origin", "--publish", str(published))

    async def first_byte() -> tuple[int, bytes, str | None]:
        async with http.get(origin.url + "/r.bin", headers={"Range": "bytes=0-0"}) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")

    assert await wait_for(lambda: _is(first_byte(), (206, b"A")), 30)
    sparse(published / ".r.bin.new", 256 << 20, b"B")
    os.replace(published / ".r.bin.new", path)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, retry = await first_byte()
        seen.append((status, body if status == 206 else retry))
        if (status, body) == (206, b"B"):
            break
        await asyncio.sleep(0.02)
    assert seen[-1] == (206, b"B") and set(seen) <= {(206, b"A"), (503, "2"), (206, b"B")}, sorted(set(seen))
    assert "r.bin was replaced on disk: republishing it once hashed" in origin.log_text()


async def test_a_file_deleted_at_the_origin_is_a_404_at_once_and_said_so(nodes, published, http):
    """Its first read found it gone: that answer was a 503 "being republished", and the log said it was replaced (a review)."""
    make_file(published / "gone.bin", 600_000)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "30")
    (published / "gone.bin").unlink()
    async with http.get(origin.url + "/gone.bin", headers={"Range": "bytes=0-9"}) as resp:
        assert resp.status == 404 and "gone.bin is not published" in await resp.text()
    assert "withdrew gone.bin: deleted on disk" in origin.log_text() and "replaced" not in origin.log_text()


async def _is(answer, expected) -> bool:
    return (await answer)[:2] == expected


async def test_symlinks_out_of_the_directory_are_not_published(tmp_path, nodes, published, http):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    os.symlink(secret, published / "leak.txt")
    os.symlink(tmp_path, published / "leakdir")
    (published / "upload.tmp").write_text("half of it")  # still being written: a link publishes it no more than its name does
    os.symlink(published / "upload.tmp", published / "latest.bin")
    (published / "ok.txt").write_text("fine\n")
    origin = nodes.start("origin", "--publish", str(published))
    for path in ("/leak.txt", "/leakdir/secret.txt", "/latest.bin"):
        r = curl("-o", "-", "-w", "%{http_code}", origin.url + path)
        assert b"top secret" not in r.stdout and b"half" not in r.stdout
        assert r.stdout.endswith(b"404")
    assert curl(origin.url + "/ok.txt").stdout == b"fine\n"
    assert "not publishing leak.txt" in origin.log_text()


async def test_hidden_and_reserved_names_are_not_published(nodes, published, http):
    (published / ".partial").write_text("x")
    (published / "status").write_text("x")
    origin = nodes.start("origin", "--publish", str(published))
    st = await status(http, origin.url)
    assert st["files"] == {}
    assert st["role"] == "origin"


def test_origin_cli_errors_are_clear(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "is not a directory" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(tmp_path), "--listen", "nonsense"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "HOST:PORT" in r.stderr
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    media = tmp_path / "media"
    media.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(media), "--key", str(bad_key)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert "not a PEM private key" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_port_in_use_on_ipv6_is_named_as_a_url_names_it(tmp_path):
    """ "cannot listen on ::1:PORT" named no port a reader could tell (an adversarial session): [::1]:PORT."""
    import socket

    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        taken.listen()
        port = taken.getsockname()[1]
        args = [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(tmp_path), "--listen", f"[::1]:{port}"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and f"cannot listen on [::1]:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--state", "state"], "--state 'state' lies inside the published folder '.'"),
        (["--state", "."], "--state '.' is the published folder '.'"),
        (["--key", "keys/origin.key"], "--key 'keys/origin.key' lies inside"),
        (["--tls-cert", "../c.pem", "--tls-key", "k.pem"], "--tls-key 'k.pem' lies inside"),
        (["--state", ""], "argument --state: an empty path (an unset variable?)"),
    ],
)
def test_an_origin_never_publishes_its_own_secrets_nor_takes_an_empty_path(tmp_path, flags, said):
    """``--publish . --state state`` served GET /state/origin.key and the catalogue with every protected file's content
    key; ``--state ""`` (an unset variable) was the published folder itself (an adversarial session)."""
    media = tmp_path / "media"
    media.mkdir()
    args = [sys.executable, "-m", "edgeswarm", "origin", "--publish", ".", "--listen", "127.0.0.1:0", *flags]
    r = subprocess.run(args, capture_output=True, text=True, timeout=20, cwd=media)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(media.iterdir()) == []  # nothing made: no key, no state


async def test_status_lists_the_first_files_and_counts_them_all(nodes, published, http):
    """An origin's /status listed every file it publishes to anyone asking (20 000 files: 1.8 MB a request); now the
    first 100 by path and file_count, with ``?contents=all`` for the whole catalogue, as on an edge."""
    for i in range(120):
        (published / f"f{i:03}.txt").write_bytes(b"x")
    origin = nodes.start("origin", "--publish", str(published))
    st = await status(http, origin.url)
    assert st["file_count"] == 120 and list(st["files"]) == [f"f{i:03}.txt" for i in range(100)]
    async with http.get(origin.url + "/status?contents=all") as r:
        assert list((await r.json())["files"]) == [f"f{i:03}.txt" for i in range(120)]
    async with http.get(origin.url + "/status?contents=-1") as r:
        assert r.status == 400 and "takes a number of rows or 'all'" in await r.text()


def test_a_stopped_origin_does_not_wait_for_a_hash_under_way(nodes, published):
    """SIGTERM while the origin hashed a large file closed its port at once, but the process lived on until the hash
    was done (4-19 s for 6 GiB, found by an adversarial session): a service manager's stop waited, or killed it."""
    origin = nodes.start("origin", "--publish", str(published))
    with open(published / "big.bin", "wb") as f:
        f.truncate(16 << 30)  # sparse: 16 GiB of zeros to hash, 12-45 s on the 2-core VM
    time.sleep(2.0)  # a scan (every second) is hashing it
    assert origin.proc is not None and origin.proc.poll() is None
    started = time.monotonic()
    origin.stop()
    assert origin.proc.returncode == 0
    assert time.monotonic() - started < 5, "the origin waited for the hash before it exited"


async def test_a_file_name_cannot_write_a_log_line_of_its_own(nodes, published, http):
    """A name holding a newline was logged as it was: the rest of it read as a line of the node's own (an adversarial
    session).  Every message's control characters are escaped (daemon.OneLineFormatter)."""
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
    (published / "a\n2026-01-01 00:00:00,000 WARNING edgeswarm.forged: trust me.bin").write_bytes(b"x")
    deadline = time.monotonic() + 20
    while "trust me" not in origin.log_text():
        assert time.monotonic() < deadline, origin.log_text()
        await asyncio.sleep(0.2)
    assert not any(line.startswith("2026-01-01") for line in origin.log_text().splitlines())
    assert "a\\n2026-01-01 00:00:00,000 WARNING edgeswarm.forged: trust me.bin" in origin.log_text()
