"""A piece changed on disk while its node was stopped is dropped and fetched again, never served (issue 9, defect 6)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import curl, make_file, received_from, run_cli, status
from test_piecestore import PUB, make_content, open_store, stored

from edgeswarm.protocol.manifest import MIN_PIECE
from edgeswarm.store import piecestore
from edgeswarm.trust.signing import public_pem

PIECE = MIN_PIECE
BAD = "does not match its signed hash"
integration = pytest.mark.integration


def flip(path: Path, at: int = 1000) -> None:
    """One byte changed in place: same size, so only its hash can tell."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def piece_file(cache: Path, index: int) -> Path:
    (path,) = (cache / "content").glob(f"*/{index}.piece")
    return path


# -- the store ----------------------------------------------------------------------------------------


def test_a_piece_changed_while_closed_is_dropped_on_first_read(tmp_path, caplog):
    c = make_content()
    store = open_store(tmp_path)
    stored(store, c, 0, 1, 2)
    store.close()
    flip(Path(store.piece_path(c.cid, 1)))
    store = open_store(tmp_path)
    assert store.held(c.cid) == {0, 1, 2}  # opening costs no reads: pieces are checked when first used
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.piecestore"):
        assert store.piece_fd(c.cid, 1) is None  # the sendfile path never gets a descriptor of it
        assert store.read_piece(c.cid, 1) is None
    assert store.read_piece(c.cid, 0) == c.piece(0) and store.read_piece(c.cid, 2) == c.piece(2)
    assert store.held(c.cid) == {0, 2} and not store.has(c.cid, 1)
    assert not Path(store.piece_path(c.cid, 1)).exists()
    assert store.corrupt_pieces == 1 and store.used_bytes == len(c.piece(0)) + len(c.piece(2))
    assert [r.getMessage() for r in caplog.records if BAD in r.getMessage()] == [
        f"piece 1 of films/a.mkv {BAD} on disk: dropped, to be fetched again"
    ]
    store.put_piece(c.cid, 1, c.piece(1))  # fetched again
    assert store.read_piece(c.cid, 1) == c.piece(1)


def test_verify_held_checks_every_piece_once(tmp_path):
    c = make_content()
    store = open_store(tmp_path)
    stored(store, c, 0, 1, 2)
    store.close()
    flip(Path(store.piece_path(c.cid, 2)), at=5)
    store = open_store(tmp_path)
    assert store.verify_held(c.cid) == {0, 1}
    assert store.corrupt_pieces == 1
    flip(Path(store.piece_path(c.cid, 0)))  # changed while running, after the check: not what this guards
    assert store.verify_held(c.cid) == {0, 1}


def test_checking_a_whole_cache_up_front_reports_its_cost(tmp_path, capsys):
    c = make_content()
    store = open_store(tmp_path)
    stored(store, c, 0, 1, 2)
    store.close()
    (tmp_path / "origin.pub").write_bytes(public_pem(PUB))
    flip(Path(store.piece_path(c.cid, 0)))
    assert piecestore.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 good pieces" in out and "1 bad ones dropped" in out and "MB/s" in out
    assert open_store(tmp_path).held(c.cid) == {1, 2}
    assert piecestore.main([str(tmp_path / "nowhere")]) == 1


def test_the_cache_check_refuses_a_cache_a_node_runs_on(tmp_path, capsys):
    """Run on a live edge's cache it went ahead, and deleted a worker's piece in flight (an adversarial session on
    docs/operations.md): refused as a second node is, the cache untouched."""
    from edgeswarm.store import cachelock

    c = make_content()
    store = open_store(tmp_path)
    stored(store, c, 0, 1)
    store.close()
    (tmp_path / "origin.pub").write_bytes(public_pem(PUB))
    flip(Path(store.piece_path(c.cid, 0)))
    with cachelock.held(tmp_path, "edge"):
        assert piecestore.main([str(tmp_path)]) == 2
    assert "in use" in capsys.readouterr().err
    assert Path(store.piece_path(c.cid, 0)).exists()  # not checked, not dropped


@integration
def test_the_cache_check_runs_as_operations_md_tells_and_drops_a_piece_cut_short(tmp_path):
    """Run as ``python -m`` it stopped at its first bad piece with a NameError: a helper it calls came after the
    ``__main__`` block (an adversarial session)."""
    c = make_content()
    store = open_store(tmp_path)
    stored(store, c, 0, 1)
    store.close()
    (tmp_path / "origin.pub").write_bytes(public_pem(PUB))
    os.truncate(store.piece_path(c.cid, 1), 100)
    run = subprocess.run([sys.executable, "-m", "edgeswarm.store.piecestore", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "1 good pieces" in run.stdout and "1 bad ones dropped" in run.stdout, run.stderr


# -- daemons ------------------------------------------------------------------------------------------


@integration
async def test_edge_refetches_a_piece_corrupted_while_it_was_stopped(tmp_path, nodes, origin, published, http):
    data = make_file(published / "f.bin", 6 * PIECE + 11)
    await asyncio.sleep(0.5)
    cache = tmp_path / "edge"
    args = ("--cache", str(cache), "--parent", origin.url)
    edge = nodes.start("edge", *args, name="edge")
    assert curl("-o", "-", edge.url + "/f.bin").stdout == data
    edge.stop()
    flip(piece_file(cache, 3))
    edge = nodes.start("edge", *args, name="edge")
    r = curl("-o", "-", edge.url + "/f.bin")
    assert r.returncode == 0 and r.stdout == data, r.stderr
    assert received_from(await status(http, edge.url), "parent") == PIECE  # that piece alone came again
    assert piece_file(cache, 3).read_bytes() == data[3 * PIECE : 4 * PIECE]
    assert edge.log_text().count(BAD) == 1


@integration
async def test_peer_gateway_and_upload_server_refetch_a_corrupted_piece(tmp_path, nodes, origin, published, http):
    data = make_file(published / "f.bin", 6 * PIECE + 11)
    await asyncio.sleep(0.5)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, name="edge")
    cache = tmp_path / "peer"
    args = ("--cache", str(cache), "--edge", edge.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
    peer = nodes.start("peer", *args, name="peer")
    assert curl("-o", "-", peer.urls["gateway"] + "/f.bin").stdout == data
    peer.stop()
    flip(piece_file(cache, 2))
    flip(piece_file(cache, 4))
    cid = piece_file(cache, 4).parent.name
    peer = nodes.start("peer", *args, name="peer")
    r = curl("-o", "-", "-w", "%{http_code}", peer.urls["upload"] + f"/piece/{cid}/4")  # another peer asks first
    assert r.stdout.endswith(b"404"), r.stdout[-200:]
    r = curl("-o", "-", peer.urls["gateway"] + "/f.bin")  # piece 2 is found bad while the answer streams
    assert r.returncode == 0 and r.stdout == data, r.stderr
    for i in (2, 4):
        assert piece_file(cache, i).read_bytes() == data[i * PIECE : (i + 1) * PIECE]
    assert peer.log_text().count(BAD) == 2


@integration
def test_get_cache_rerun_refetches_a_corrupted_piece(tmp_path, nodes, origin, published):
    data = make_file(published / "app.bin", 5 * PIECE + 3)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, name="edge")
    cache, out = tmp_path / "get-cache", tmp_path / "app.bin"
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/app.bin", "-o", str(out), "--cache", str(cache)]
    cmd += ["--listen", "127.0.0.1:0", "--stall-timeout", "20"]
    time.sleep(0.5)  # published
    first = run_cli(cmd, 60)
    assert first.returncode == 0 and out.read_bytes() == data, first.stderr
    flip(piece_file(cache, 4))
    out.unlink()
    rerun = run_cli(cmd, 60)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == data
    assert rerun.stderr.count(BAD) == 1 and "Traceback" not in rerun.stderr
