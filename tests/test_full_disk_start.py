"""A node started on a full cache disk starts: full is not unusable (store/ledger.py ``LedgerFull``, store/piecestore.py
``make_cache``).

A running edge copes with a full disk (it serves from memory and keeps ledger
rows pending), but its restart did not: SQLite must create the ledger's -shm
and -wal to open it ("disk I/O error", exit 2), and the cache probe's file
found no inode ("cache … is unusable", exit 2, also for a worker's
replacement and for a peer).  Real tmpfs file systems, filled to the last byte
or inode: root only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import curl, fill, make_file, mounted_tmpfs, run_cli, start_peer

from edgeswarm.roles.edgeworkers import WORKER_HEADER
from edgeswarm.store.ledger import Ledger, LedgerError, report

MiB = 1 << 20
PIECE = 256 * 1024
T0 = 1_699_999_200


@pytest.fixture
def disk(tmp_path: Path):
    """An 8 MiB tmpfs: a disk that really fills."""
    with mounted_tmpfs(tmp_path / "disk", "size=8m") as mnt:
        yield mnt


@pytest.fixture
def few_inodes(tmp_path: Path):
    """A tmpfs of 64 inodes: room for bytes, none for one more file once its inodes are taken."""
    with mounted_tmpfs(tmp_path / "inodes", "size=20m,nr_inodes=64") as mnt:
        yield mnt


def fill_inodes(mnt: Path) -> None:
    """Empty files until ``mnt`` has no inode left."""
    with contextlib.suppress(OSError):
        for n in range(1 << 20):
            (mnt / f"filler-{n}").touch()


def edge_sent(target: str, path: str) -> int:
    return sum(row.edge_sent for row in report(target, by="content") if row.key == path)


async def until(check, what: str, timeout: float = 60.0):
    """Poll ``check`` (a plain callable) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (got := await asyncio.to_thread(check)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return got


async def test_an_existing_ledger_on_a_full_disk_starts_keeps_its_rows_and_is_read(disk: Path, caplog):
    target = str(disk / "ledger.sqlite")
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
    await ledger.close()  # a clean stop: its -wal and -shm are gone
    junk = disk / "junk.db"
    junk.write_bytes(b"x" * 4096)
    filler = fill(disk)
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        await ledger.start()  # was LedgerError: "cannot open SQLite ledger …: disk I/O error"
        ledger.add("alice", "c1", "/a", "east", "edge_sent", 7, when=T0)
        await ledger.flush()
    assert ledger.pending() == 1
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"ledger {target}: cannot write usage (cannot open SQLite ledger {target}: No space left on device); 0 rows kept pending"
    ]
    assert [row.edge_sent for row in report(target)] == [5]  # billing reads it, the disk still full
    # a bad target is still one: a path in a directory of its own (a typo), a file that is no database
    for bad in (str(disk / "typo" / "ledger.sqlite"), str(junk)):
        with pytest.raises(LedgerError) as refused:
            await Ledger(bad, "edge-a").start()
        assert type(refused.value) is LedgerError, refused.value  # not LedgerFull, which starts the edge
    filler.unlink()
    await ledger.flush()  # room again: it connects and writes what it kept
    assert ledger.pending() == 0
    await ledger.close()
    assert [row.edge_sent for row in report(target)] == [12]


async def test_an_edge_restarted_on_a_full_disk_serves_bills_and_frees_room_with_a_lower_max_cache(disk: Path, nodes, origin, published):
    small = make_file(published / "small.bin", 1000)
    big = make_file(published / "big.bin", 5 * MiB)
    ledger = str(disk / "ledger.sqlite")

    def start(*extra: str):
        # one worker: two workers closing at once may leave the -wal (harmless here), and a lower --max-cache at start
        # may evict a piece that the other worker is scanning (a separate problem, piecestore._load)
        return nodes.start("edge", "--cache", str(disk), "--parent", origin.url, "--workers", "1", *extra, name="edge")

    def get(e, path: str) -> bytes:
        return curl("-f", e.url + path).stdout

    e = start()
    for path, data in (("small.bin", small), ("big.bin", big)):
        assert await until(lambda: get(e, "/" + path), f"the origin to publish {path}") == data  # noqa: B023
        await until(lambda: edge_sent(ledger, path), f"the ledger's row of {path}")  # noqa: B023
    e.stop()  # cleanly: the ledger's -wal and -shm go
    assert not Path(ledger + "-wal").exists()
    fill(disk)  # something else takes the rest (a log on the same file system)
    done = await asyncio.to_thread(run_cli, [sys.executable, "-m", "edgeswarm", "usage", "report", "--ledger", ledger, "--csv"], 60)
    assert done.returncode == 0 and done.stdout.count("\n") == 2, done.stderr  # its one user, read on a disk without room
    e = start()  # exited 2: "cannot open SQLite ledger …: disk I/O error"
    assert get(e, "/small.bin") == small
    log = e.log_text()
    assert f"cannot write usage (cannot open SQLite ledger {ledger}: No space left on device)" in log
    assert "disk I/O error" not in log and "Traceback" not in log
    e.stop()  # the row of that request is lost (and said so): the disk stayed full
    e = start("--max-cache", "1MiB")  # the docs' remedy: pieces go at start, and the ledger writes once they have
    assert get(e, "/small.bin") == small
    await until(lambda: "writing again after" in e.log_text(), "the ledger's write once there is room")
    e.stop()
    assert edge_sent(ledger, "small.bin") == 2 * len(small)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def worker_of(url: str) -> tuple[int, bytes, str]:
    """A GET on a connection of its own: (status, body, the edge worker that took it)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, s.get(url) as r:
        return r.status, await r.read(), r.headers.get(WORKER_HEADER, "")


async def test_an_edge_out_of_inodes_replaces_a_killed_worker_and_restarts(few_inodes: Path, nodes, origin, published):
    data = make_file(published / "f.bin", 4 * PIECE + 5)

    def start():
        return nodes.start("edge", "--cache", str(few_inodes), "--parent", origin.url, "--workers", "2", name="edge")

    e = start()
    assert await until(lambda: curl("-f", e.url + "/f.bin").stdout, "the origin to publish f.bin") == data
    fill_inodes(few_inodes)
    victim = children(e.pid)[1]
    os.kill(victim, signal.SIGKILL)
    await until(lambda: f"(pid {victim}) was killed by SIGKILL; restarting it" in e.log_text(), "the worker's restart")
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while seen != {"0", "1"}:  # its replacement exited 2 ("cache … is unusable"), again and again
        assert time.monotonic() < deadline, f"only workers {seen} answer; log:\n{e.log_text()[-3000:]}"
        code, body, worker = await worker_of(e.url + "/f.bin")
        assert code == 200 and body == data
        seen.add(worker)
        await asyncio.sleep(0.05)
    e.stop()
    fill_inodes(few_inodes)  # the inodes of the ledger's -wal and -shm, which a clean stop gives back
    e = start()  # exited 2 as well
    assert curl("-f", e.url + "/f.bin").stdout == data
    log = e.log_text()
    assert "unusable" not in log and "Traceback" not in log
    assert f"cache {few_inodes} is full (No space left on device: not one more file fits)" in log
    assert f"SQLite ledger {few_inodes}/ledger.sqlite: No space left on device (no inode left)" in log


async def test_a_peer_out_of_inodes_restarts_and_serves_its_cache(tmp_path: Path, few_inodes: Path, nodes, origin, published):
    data = make_file(published / "f.bin", 4 * PIECE + 5)
    e = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, name="edge")
    peer = start_peer(nodes, few_inodes.parent, e.url, "127.0.0.1", few_inodes.name)  # its cache is the tmpfs
    assert await until(lambda: curl("-f", peer.urls["gateway"] + "/f.bin").stdout, "the origin to publish f.bin") == data
    peer.stop()
    fill_inodes(few_inodes)
    peer = start_peer(nodes, few_inodes.parent, e.url, "127.0.0.1", few_inodes.name)  # exited 2: "cache … is unusable"
    assert curl("-f", peer.urls["gateway"] + "/f.bin").stdout == data
    log = peer.log_text()
    assert "unusable" not in log and f"cache {few_inodes} is full" in log and "Traceback" not in log


async def test_a_get_whose_cache_has_no_inode_left_says_so(tmp_path: Path, few_inodes: Path, nodes, origin, published):
    """A rerun said "cache … is unusable" (exit 2) once out of inodes, and a get that ran out of them "f.bin needs
    1.0 MiB more" while df showed the disk nearly empty (an adversarial session)."""
    make_file(published / "a.bin", 5)
    make_file(published / "f.bin", 4 * PIECE + 5)
    e = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, name="edge")
    await until(lambda: curl("-f", "-o", "/dev/null", e.url + "/f.bin").returncode == 0, "the origin to publish f.bin")
    cache = few_inodes / "cache"

    def get(path: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edgeswarm", "get", e.url + path, "-o", str(tmp_path / "out"), "--cache", str(cache)]
        return run_cli([*cmd, "--listen", "127.0.0.1:0"], 60)

    assert (await asyncio.to_thread(get, "/a.bin")).returncode == 0  # the cache is made while there is room
    fill_inodes(few_inodes)
    done = await asyncio.to_thread(get, "/f.bin")
    assert done.returncode == 1, done.stderr
    assert f"cannot store pieces in the cache {cache} (No space left on device): its disk has no inode left" in done.stderr
    assert f"cache {cache} is full" in done.stderr and "Traceback" not in done.stderr
