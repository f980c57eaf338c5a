"""A node started on a full cache disk starts: full is not unusable (store/ledger.py ``LedgerFull``).

A running edge copes with a full disk (it serves from memory and keeps ledger
rows pending), but its restart did not: SQLite must create the ledger's -shm
and -wal to open it ("disk I/O error", exit 2).  Real tmpfs file systems,
filled to the last byte: root only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import curl, make_file, run_cli

from edgeswarm.store.ledger import Ledger, LedgerError, report

MiB = 1 << 20
PIECE = 256 * 1024
T0 = 1_699_999_200


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, options: str):
    """A real tmpfs at ``mnt``, or the test skipped; unmounted (lazily if a daemon still holds it) at the end."""
    if os.geteuid() != 0:
        pytest.skip("a full disk here is a tmpfs of our own, and mounting one needs root")
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def disk(tmp_path: Path):
    """An 8 MiB tmpfs: a disk that really fills."""
    with mounted_tmpfs(tmp_path / "disk", "size=8m") as mnt:
        yield mnt


def fill(mnt: Path) -> Path:
    """A file taking every free byte of ``mnt``."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


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
