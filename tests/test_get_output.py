"""`edgeswarm get`'s output file, driven directly: no daemons."""

from __future__ import annotations

import os

from edgeswarm.protocol.manifest import Manifest
from edgeswarm.roles.get import OutputFile

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
