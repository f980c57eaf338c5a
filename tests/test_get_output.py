"""`edgeswarm get`'s output file, driven directly: no daemons."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from edgeswarm.protocol.manifest import Manifest
from edgeswarm.roles.get import TEMP_PREFIX, OutputFile, _summary, sweep_temp_caches
from edgeswarm.store import cachelock

PIECE = 256 * 1024


def test_a_killed_gets_partial_output_is_removed_by_the_next_and_a_running_ones_kept(tmp_path):
    """SIGKILL (the OOM killer, a power cut) left a hidden `.NAME.XXXXXXXX.part` as large as what had been fetched,
    which no rerun reused or removed (an adversarial session).  The name carries its writer's pid now."""
    data = os.urandom(2 * PIECE)
    manifest = Manifest("f.bin", len(data), "application/octet-stream", PIECE, ("0" * 64,) * 2, 0)
    dead = tmp_path / ".f.bin.999999999-0a1b2c3d.part"  # no process has that pid
    running = tmp_path / f".f.bin.{os.getppid()}-0a1b2c3d.part"  # pytest's parent: alive
    other = tmp_path / ".g.bin.999999999-0a1b2c3d.part"  # another output's
    odd = tmp_path / ".f.bin.²-0a1b2c3d.part"  # not a pid
    for leftover in (dead, running, other, odd):
        leftover.write_bytes(b"x" * 1000)
    out = OutputFile(tmp_path / "f.bin", manifest)
    out.put(0, data[:PIECE])
    assert not dead.exists() and running.exists() and other.exists() and odd.exists()
    assert out.part is not None and out.part.name.startswith(f".f.bin.{os.getpid()}-")
    out.close()
    assert not out.part.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (running, other, odd))


def test_a_partial_output_locked_by_its_writer_is_kept_whatever_its_pid_says(tmp_path):
    """A get in another pid namespace (a container) or on another host over NFS: its pid means nothing here, and the
    sweep removed its file while it wrote, failing it after the whole download (a review).  It holds the file's lock."""
    manifest = Manifest("f.bin", 2 * PIECE, "application/octet-stream", PIECE, ("0" * 64,) * 2, 0)
    elsewhere = tmp_path / ".f.bin.999999998-0a1b2c3d.part"
    elsewhere.write_bytes(b"x" * 1000)
    hold = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY); fcntl.lockf(fd, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", hold, str(elsewhere)], stdout=subprocess.PIPE) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"1\n"
            out = OutputFile(tmp_path / "f.bin", manifest)
            out.put(0, os.urandom(PIECE))
            assert elsewhere.exists()
            out.close()
        finally:
            writer.kill()
    out = OutputFile(tmp_path / "f.bin", manifest)  # its writer gone for good: the next get removes it
    out.put(0, os.urandom(PIECE))
    out.close()
    assert not elsewhere.exists()


def test_the_summary_rates_what_this_run_fetched_not_what_the_cache_held():
    """A rerun that found the file in its cache said "38.1 MiB in 0.0 s (37.3 GiB/s)" (an adversarial session)."""
    mib = 1024 * 1024
    whole = {"size": 8 * mib, "received": 8 * mib, "from_peers": 2 * mib, "seconds": 2.0, "key_learned": False}
    assert _summary(Path("f.bin"), whole) == "f.bin: 8.0 MiB in 2.0 s (4.0 MiB/s), 25% from peers, every piece verified"
    part = {**whole, "received": 2 * mib, "from_peers": 0}
    said = "f.bin: 8.0 MiB in 2.0 s (2.0 MiB fetched at 1.0 MiB/s, the rest from the cache), 0% from peers, every piece verified"
    assert _summary(Path("f.bin"), part) == said
    cached = {**whole, "received": 0, "from_peers": 0, "seconds": 0.01}
    assert _summary(Path("f.bin"), cached) == "f.bin: 8.0 MiB in 0.0 s (all from the cache), every piece verified"


def test_the_summary_says_when_the_pieces_were_checked_against_a_key_the_edge_served():
    """ "every piece verified" made a forging edge's bytes look checked: without --origin-key, nor a key pinned in
    --cache by an earlier run, `get` trusts the key the edge serves (an adversarial session)."""
    mib = 1024 * 1024
    learned = {"size": mib, "received": mib, "from_peers": 0, "seconds": 1.0, "key_learned": True}
    said = _summary(Path("f.bin"), learned)
    assert said.endswith("every piece verified against the origin key the edge served (--origin-key pins one)"), said


def test_the_temporary_caches_of_killed_gets_are_removed_and_no_running_ones(tmp_path):
    """A SIGKILLed `get` without --cache left its temporary cache, up to a whole copy of the file, in $TMPDIR for good
    (an adversarial session: three of 11.6 MB)."""
    old = time.time() - 600
    running, dead = tmp_path / f"{TEMP_PREFIX}running", tmp_path / f"{TEMP_PREFIX}dead"
    held, gone = cachelock.hold(running, "get"), cachelock.hold(dead, "get")  # made caches, each locked
    assert held is not None and gone is not None
    os.close(gone)  # its get was killed: nobody holds the lock
    young = tmp_path / f"{TEMP_PREFIX}young"
    young.mkdir()  # made a moment ago: its get may not hold the lock yet
    other = tmp_path / f"{TEMP_PREFIX}notacache"
    other.mkdir()
    for path in (running, dead, other):
        os.utime(path, (old, old))
    try:
        assert sweep_temp_caches(tmp_path) == 1
        assert not dead.exists() and running.exists() and young.exists() and other.exists()
    finally:
        os.close(held)
