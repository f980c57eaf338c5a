"""One node per cache directory (store/cachelock.py): a second edge, peer or ``get --cache`` on a cache in use stops at
start with a message naming the node that holds it, and the node holding it goes on serving."""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import pytest
from conftest import make_file, run_cli

from edgeswarm.store import cachelock
from edgeswarm.store.piecestore import CacheError, make_cache


def test_a_second_hold_is_refused_naming_the_holder_and_allowed_once_released(tmp_path):
    cache = tmp_path / "cache"
    with cachelock.held(cache, "edge"):
        assert (cache / "content").is_dir()
        with pytest.raises(CacheError, match=rf"in use by edgeswarm edge \(pid {os.getpid()}\): give each node a --cache"):
            cachelock.hold(cache, "peer")
    with cachelock.held(cache, "peer"):  # released with its descriptor: nothing stale is left behind
        assert (cache / cachelock.LOCK_NAME).read_text() == f"edgeswarm peer (pid {os.getpid()})\n"


def test_a_cache_that_cannot_hold_the_lock_file_is_a_clear_error(tmp_path):
    cache = tmp_path / "cache"
    (cache / cachelock.LOCK_NAME).mkdir(parents=True)  # a directory where the lock file goes
    with pytest.raises(CacheError, match=r"is unusable: .*node\.lock"):
        cachelock.hold(cache, "edge")


def probes_refused(monkeypatch, code: int) -> None:
    """The cache probe's file refused with ``code`` (tests/test_full_disk_start.py does it with a real tmpfs, as root)."""
    touch = Path.touch

    def refusing(path: Path, *args, **kwargs) -> None:
        if path.name.startswith(".probe."):
            raise OSError(code, os.strerror(code), str(path))
        touch(path, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", refusing)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_cache_with_no_room_for_one_more_file_is_full_not_unusable(tmp_path, monkeypatch, caplog, code):
    """Out of inodes, a restart (and a worker's replacement) stopped with "cache … is unusable" (exit 2) although every
    piece was readable (an adversarial session).  It starts, with one warning however many times the cache is made."""
    cache = tmp_path / "cache"
    probes_refused(monkeypatch, code)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store"), cachelock.held(cache, "edge"):
        make_cache(cache)  # the edge, then each worker's piece store
        make_cache(cache)
    said = f"cache {cache} is full ({os.strerror(code)}: not one more file fits): nothing new is cached until there is room"
    assert [r.getMessage() for r in caplog.records] == [said]
    probes_refused(monkeypatch, errno.EROFS)  # read-only (or no permission) is unusable, as before
    with pytest.raises(CacheError, match=r"is unusable: .*\.probe\.\d+: Read-only file system"):
        make_cache(tmp_path / "other")


@pytest.mark.integration
async def test_nodes_started_on_a_cache_in_use_stop_with_a_message_and_the_first_serves_on(tmp_path, nodes, origin, published, http):
    data = make_file(published / "a.bin", 300_000)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--workers", "2", name="edge")
    cli = [sys.executable, "-m", "edgeswarm"]
    for cmd in (
        ["edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--listen", "127.0.0.1:0"],
        ["peer", "--cache", str(tmp_path / "edge"), "--edge", edge.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"],
        ["get", f"{edge.url}/a.bin", "-o", str(tmp_path / "a.bin"), "--cache", str(tmp_path / "edge")],
    ):
        done = run_cli([*cli, *cmd], timeout=30)
        assert done.returncode == 2, done.stderr
        assert f"is in use by edgeswarm edge (pid {edge.pid})" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "a.bin").exists()
    async with http.get(f"{edge.url}/a.bin") as r:  # the edge's workers hold the lock and serve
        assert r.status == 200 and await r.read() == data
