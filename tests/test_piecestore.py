"""edgeswarm.store.piecestore: verified pieces on disk, across restarts and under a quota."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import exhaust, fill, mounted_tmpfs, spare_descriptors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.protocol.manifest import MIN_PIECE, Manifest, SignedManifest
from edgeswarm.store import piecestore
from edgeswarm.store.piecestore import CorruptPiece, OutOfDescriptors, PieceNotStored, PieceStore

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
SIZE = 2 * MIN_PIECE + 100  # two full pieces and a short one


@dataclass
class Content:
    signed: SignedManifest
    raw: bytes
    data: bytes

    @property
    def cid(self) -> str:
        return self.signed.content_id

    def piece(self, index: int) -> bytes:
        offset, length = self.signed.manifest.piece_span(index)
        return self.data[offset : offset + length]


def make_content(path: str = "films/a.mkv", size: int = SIZE, modified: int = 1_700_000_000, key=KEY) -> Content:
    data = os.urandom(size)
    pieces = tuple(hashlib.sha256(data[i : i + MIN_PIECE]).hexdigest() for i in range(0, size, MIN_PIECE))
    m = Manifest(path=path, size=size, content_type="video/x-matroska", piece_size=MIN_PIECE, pieces=pieces, modified=modified)
    signed = SignedManifest.sign(m, key)
    return Content(signed, signed.to_json(), data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def open_store(root: Path, max_bytes: int | None = None) -> PieceStore:
    return PieceStore(root, PUB, max_bytes)


def stored(store: PieceStore, c: Content, *indices: int) -> None:
    store.put_manifest(c.signed, c.raw)
    for i in indices:
        store.put_piece(c.cid, i, c.piece(i))


def files(store: PieceStore, c: Content) -> set[str]:
    cdir = store.content_dir / c.cid
    return {p.name for p in cdir.iterdir()} if cdir.exists() else set()


# -- manifests ------------------------------------------------------------------------------


def test_put_manifest_keeps_the_raw_bytes(root):
    store = open_store(root)
    c = make_content()
    store.put_manifest(c.signed, c.raw)
    assert (root / "content" / c.cid / "manifest.json").read_bytes() == c.raw
    assert files(store, c) == {"manifest.json"}  # no manifest.json.tmp left behind
    assert store.manifest(c.cid) == c.signed
    assert store.raw_manifest(c.cid) == c.raw
    assert store.manifest_for_path("films/a.mkv") == c.signed
    assert list(store.contents()) == [c.signed]
    assert store.held(c.cid) == set() and store.used_bytes == 0


def test_lookups_of_unknown_content_are_empty(root):
    store = open_store(root)
    assert store.manifest("0" * 64) is None
    assert store.raw_manifest("0" * 64) is None
    assert store.manifest_for_path("nope") is None
    assert store.held("0" * 64) == set()
    assert not store.has("0" * 64, 0)
    assert store.read_piece("0" * 64, 0) is None
    assert store.piece_fd("0" * 64, 0) is None


def test_put_manifest_twice_is_harmless(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    store.put_manifest(c.signed, c.raw)
    assert store.has(c.cid, 0) and store.used_bytes == MIN_PIECE


# -- pieces ----------------------------------------------------------------------------------


def test_put_and_read_pieces(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 2)
    assert store.held(c.cid) == {0, 2}
    assert store.has(c.cid, 0) and not store.has(c.cid, 1) and store.has(c.cid, 2)
    assert store.read_piece(c.cid, 0) == c.piece(0)
    assert store.read_piece(c.cid, 2) == c.piece(2) and len(c.piece(2)) == 100
    assert store.read_piece(c.cid, 1) is None
    assert Path(store.piece_path(c.cid, 2)).read_bytes() == c.piece(2)
    assert files(store, c) == {"manifest.json", "0.piece", "2.piece"}
    assert store.used_bytes == MIN_PIECE + 100
    store.close()


def test_piece_fd_reads_with_pread(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 1)
    fd = store.piece_fd(c.cid, 1)
    assert fd is not None and store.piece_fd(c.cid, 1) == fd  # the descriptor is kept open and reused
    assert os.pread(fd, 16, 100) == c.piece(1)[100:116]
    store.close()


def test_putting_a_held_piece_again_changes_nothing(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    store.put_piece(c.cid, 0, c.piece(0))
    assert store.used_bytes == MIN_PIECE and store.held(c.cid) == {0}


def test_a_piece_without_its_manifest_is_refused(root):
    store = open_store(root)
    c = make_content()
    with pytest.raises(KeyError, match=c.cid):
        store.put_piece(c.cid, 0, c.piece(0))
    assert not (store.content_dir / c.cid).exists()


def flipped(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("index", "make_data"),
    [
        (0, lambda c: flipped(c.piece(0))),
        (0, lambda c: flipped(c.piece(0), MIN_PIECE - 1)),
        (0, lambda c: c.piece(1)),  # another piece's (valid) bytes
        (0, lambda c: c.piece(0)[:-1]),
        (2, lambda c: c.piece(2) + b"\0"),
        (2, lambda c: b""),
        (3, lambda c: c.piece(2)),  # no such piece
        (-1, lambda c: c.piece(2)),  # negative indices do not wrap around
    ],
)
def test_corrupt_pieces_are_refused_and_never_stored(root, index, make_data):
    store = open_store(root)
    c = make_content()
    store.put_manifest(c.signed, c.raw)
    with pytest.raises(CorruptPiece, match=r"films/a\.mkv"):
        store.put_piece(c.cid, index, make_data(c))
    assert store.held(c.cid) == set() and not store.has(c.cid, index)
    assert files(store, c) == {"manifest.json"}  # neither a piece file nor a temporary one
    assert store.used_bytes == 0
    assert store.read_piece(c.cid, index) is None


def test_a_negative_index_is_refused_even_with_the_last_pieces_bytes(root):
    store = open_store(root)
    c = make_content(size=2 * MIN_PIECE)  # the last piece is full-size, so only the index can be wrong
    store.put_manifest(c.signed, c.raw)
    with pytest.raises(CorruptPiece):
        store.put_piece(c.cid, -1, c.piece(1))
    assert files(store, c) == {"manifest.json"}


def test_a_corrupt_copy_of_a_held_piece_does_not_touch_the_good_one(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    with pytest.raises(CorruptPiece):
        store.put_piece(c.cid, 0, flipped(c.piece(0)))
    assert store.read_piece(c.cid, 0) == c.piece(0)
    assert Path(store.piece_path(c.cid, 0)).read_bytes() == c.piece(0)


def test_corrupt_piece_is_a_value_error():
    assert issubclass(CorruptPiece, ValueError)


def test_a_piece_file_deleted_behind_the_stores_back_is_forgotten(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    os.unlink(store.piece_path(c.cid, 1))
    assert store.read_piece(c.cid, 1) is None
    assert not store.has(c.cid, 1)
    assert store.used_bytes == MIN_PIECE


def test_a_piece_file_cut_short_while_held_open_is_dropped_not_read(root):
    """Truncated under a descriptor the store keeps open: its short bytes were served at the wrong offsets."""
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    assert store.read_piece(c.cid, 1) == c.piece(1)  # opened and kept
    os.truncate(store.piece_path(c.cid, 1), 100)
    assert store.piece_fd(c.cid, 1) is None and store.read_piece(c.cid, 1) is None
    assert not store.has(c.cid, 1) and store.corrupt_pieces == 1
    store.put_piece(c.cid, 1, c.piece(1))  # fetched again: stored afresh
    assert store.read_piece(c.cid, 1) == c.piece(1)


def test_a_piece_file_rewritten_in_place_while_held_open_is_checked_again(root):
    """The same length written over a held piece went out to players (who cannot check pieces) until a restart; its
    mtime moved, which the fstat of each hit sees: the piece is read back and checked, and dropped if bad."""
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    assert store.read_piece(c.cid, 1) == c.piece(1)  # opened and kept
    with open(store.piece_path(c.cid, 0), "r+b") as f:  # rewritten with its own bytes: still good
        f.write(c.piece(0))
    assert store.read_piece(c.cid, 0) == c.piece(0) and store.corrupt_pieces == 0
    with open(store.piece_path(c.cid, 1), "r+b") as f:
        f.write(b"\0" * 16)
    assert store.piece_fd(c.cid, 1) is None and not store.has(c.cid, 1) and store.corrupt_pieces == 1
    store.put_piece(c.cid, 1, c.piece(1))  # fetched again: stored afresh
    assert store.read_piece(c.cid, 1) == c.piece(1)


@pytest.mark.parametrize("opened", [False, True], ids=["never opened", "its descriptor closed since"])
def test_a_piece_file_rewritten_while_not_held_open_is_checked_at_its_next_open(root, opened):
    """Caught only while the piece's file was among those kept open (a review): one written over before its first
    open, or after its descriptor was closed for others, went out until a restart.  A piece the store wrote or
    checked carries GOOD_MTIME_NS; a write since moves it."""
    store = PieceStore(root, PUB, open_files=1)
    c = make_content()
    stored(store, c, 0, 1)
    assert os.stat(store.piece_path(c.cid, 0)).st_mtime_ns == piecestore.GOOD_MTIME_NS
    if opened:
        assert store.read_piece(c.cid, 0) == c.piece(0)
        assert store.read_piece(c.cid, 1) == c.piece(1)  # one descriptor kept: piece 0's is closed
    with open(store.piece_path(c.cid, 0), "r+b") as f:
        f.write(b"\0" * 16)
    assert store.read_piece(c.cid, 0) is None and not store.has(c.cid, 0) and store.corrupt_pieces == 1
    assert store.read_piece(c.cid, 1) == c.piece(1) and store.corrupt_pieces == 1


def test_a_piece_found_at_start_is_checked_once_and_marked_good(root, monkeypatch: pytest.MonkeyPatch):
    """A cache from before the mark (pieces with ordinary mtimes) is checked at each piece's first open, as ever, and
    marked then: its next opens do not hash it again."""
    store = PieceStore(root, PUB, open_files=1)
    c = make_content()
    stored(store, c, 0, 1)
    store.close()
    os.utime(store.piece_path(c.cid, 0))  # now, as a store of before wrote it
    again = PieceStore(root, PUB, open_files=1)
    checks: list[int] = []
    real = again._check
    monkeypatch.setattr(again, "_check", lambda cid, index, fd: (checks.append(index), real(cid, index, fd))[1])
    for index in (0, 1, 0, 1, 0):  # each open closes the other's descriptor
        assert again.read_piece(c.cid, index) == c.piece(index)
    assert checks == [0, 1] and os.stat(again.piece_path(c.cid, 0)).st_mtime_ns == piecestore.GOOD_MTIME_NS


def test_the_contents_directory_removed_under_a_running_store_is_made_again(root):
    """Every write failed "No such file or directory" until a restart: nothing was cached any more."""
    store = open_store(root)
    a, b = make_content(), make_content("films/b.mkv")
    stored(store, a, 0)
    shutil.rmtree(store.content_dir)
    stored(store, b, 0)  # a new content
    store.put_piece(a.cid, 1, a.piece(1))  # a held content's directory went with it: made again for its next piece
    store.put_piece(a.cid, 2, a.piece(2))
    assert store.read_piece(b.cid, 0) == b.piece(0) and store.read_piece(a.cid, 2) == a.piece(2)
    assert store.write_failures == 0


def test_open_descriptors_are_capped(root, monkeypatch):
    monkeypatch.setattr(piecestore, "OPEN_FILES", 2)
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1, 2)
    fd0 = store.piece_fd(c.cid, 0)
    store.piece_fd(c.cid, 1)
    store.piece_fd(c.cid, 2)  # a third: the least recently used descriptor is closed
    with pytest.raises(OSError):
        os.fstat(fd0)
    assert store.read_piece(c.cid, 0) == c.piece(0)  # reopened on demand
    store.close()


def test_out_of_descriptors_closes_the_older_half_of_the_cache_and_retries(root, caplog):
    """Under a low open-file limit the cache is what holds the descriptors: a read must not fail while it holds any."""
    store = PieceStore(root, PUB, open_files=64)  # more than the process may open below
    contents = [make_content(f"f{i}.bin") for i in range(4)]
    for c in contents:
        stored(store, c, 0, 1, 2)
    with spare_descriptors(6), caplog.at_level(logging.WARNING):
        others = exhaust()  # the table is full: every open below needs a cached descriptor closed
        try:
            for c in contents:  # twelve pieces through a table with room for none
                os.close(others.pop())  # room for one: the first piece's
                for i in range(3):
                    assert store.read_piece(c.cid, i) == c.piece(i)
        finally:
            for fd in others:
                os.close(fd)
    assert store.fd_shortages >= 4 and store.corrupt_pieces == 0
    lines = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1, lines  # one line a minute, however often it happens
    assert "closed 1 cached piece files, and retried" in lines[0] and "open-file limit" in lines[0]
    store.close()


def test_a_read_with_no_descriptor_to_be_had_is_a_503_and_the_piece_stays_held(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    with spare_descriptors(4):
        others = exhaust()
        try:
            with pytest.raises(OutOfDescriptors) as refused:
                store.piece_fd(c.cid, 0)
        finally:
            for fd in others:
                os.close(fd)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert store.has(c.cid, 0) and store.read_piece(c.cid, 0) == c.piece(0)  # once descriptors are free again


def test_a_write_out_of_descriptors_closes_cached_ones_and_stores_the_piece(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    store.piece_fd(c.cid, 0)
    store.piece_fd(c.cid, 1)
    with spare_descriptors(4):
        others = exhaust()
        try:
            store.put_piece(c.cid, 2, c.piece(2))  # its temporary file takes a cached piece's descriptor
        finally:
            for fd in others:
                os.close(fd)
    assert store.has(c.cid, 2) and store.write_error is None and store.fd_shortages == 1
    assert store.read_piece(c.cid, 2) == c.piece(2) and files(store, c) == {"manifest.json", "0.piece", "1.piece", "2.piece"}


class NearlyFull:
    """A disk with room for ``room`` bytes a file: a file's short last piece fits, a full one does not."""

    def __init__(self, room: int):
        self.room = room

    def open(self, path: str, mode: str):
        real = open(path, mode)  # noqa: SIM115 - closed by the store's with
        room = self.room

        class File:
            def __enter__(self):
                return self

            def __exit__(self, *exc: object) -> None:
                real.close()

            def write(self, data: bytes) -> int:
                if len(data) > room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real.write(data)

        return File()


def test_a_short_piece_stored_on_a_nearly_full_disk_does_not_end_the_episode(root, monkeypatch, caplog):
    """Four clients filling a disk: the warning and "writes succeed again" alternated 11 times in 2 s, and /status's
    cache_error came and went with them, as a file's short last piece was stored between full ones that were not (an
    adversarial session).  An episode ends with a write that succeeds once none has failed for WRITES_GOOD_S."""
    store = open_store(root)
    c = make_content()
    stored(store, c)
    monkeypatch.setattr(piecestore, "open", NearlyFull(MIN_PIECE - 1).open, raising=False)
    with caplog.at_level(logging.INFO, logger=piecestore.__name__):
        for i in (0, 2, 1):
            with contextlib.suppress(PieceNotStored):
                store.put_piece(c.cid, i, c.piece(i))
        assert store.held(c.cid) == {2} and "cache_error" in store.write_problem()
        monkeypatch.setattr(piecestore, "WRITES_GOOD_S", 0.0, raising=False)  # none failed for that long: the next write ends it
        monkeypatch.delattr(piecestore, "open")
        store.put_piece(c.cid, 1, c.piece(1))
    said = [r.getMessage().split(": ", 1)[1] for r in caplog.records]
    assert said == [
        "cannot write (No space left on device); nothing is cached until writes succeed again",
        "writes succeed again",
    ], said
    assert store.write_problem() == {} and store.write_error is None


# -- dropping content ------------------------------------------------------------------------


def test_drop_content_removes_everything_and_closes_descriptors(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    fd = store.piece_fd(c.cid, 0)
    store.drop_content(c.cid)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert not (store.content_dir / c.cid).exists()
    assert store.manifest(c.cid) is None and store.manifest_for_path("films/a.mkv") is None
    assert store.held(c.cid) == set() and store.used_bytes == 0
    assert list(store.contents()) == []
    store.drop_content(c.cid)  # twice is harmless


def test_forget_path(root):
    store = open_store(root)
    a, b = make_content("a.mkv"), make_content("b.mkv")
    stored(store, a, 0)
    stored(store, b, 0)
    store.forget_path("a.mkv")
    store.forget_path("never-published.mkv")
    assert store.manifest_for_path("a.mkv") is None and not (store.content_dir / a.cid).exists()
    assert store.manifest_for_path("b.mkv") == b.signed and store.has(b.cid, 0)
    assert store.used_bytes == MIN_PIECE


def test_a_newer_version_of_a_path_drops_the_older_content(root):
    store = open_store(root)
    old, new = make_content(modified=1000), make_content(modified=2000)
    stored(store, old, 0, 1)
    store.put_manifest(new.signed, new.raw)
    assert store.manifest_for_path("films/a.mkv") == new.signed
    assert store.manifest(old.cid) is None and not store.has(old.cid, 0)
    assert not (store.content_dir / old.cid).exists()
    assert store.used_bytes == 0
    with pytest.raises(KeyError):
        store.put_piece(old.cid, 0, old.piece(0))  # late pieces of the old version are not taken any more
    reopened = open_store(root)
    assert [s.content_id for s in reopened.contents()] == [new.cid]


@pytest.mark.parametrize(("path", "level"), [("films/a.mkv", logging.INFO), ("live/live.m3u8", logging.DEBUG)])
def test_a_new_version_is_said_at_info_but_a_playlists_at_debug(root, caplog, path, level):
    """A live playlist changes at every segment: its line was 30 a minute per node per stream (an adversarial session)."""
    caplog.set_level(logging.DEBUG, logger="edgeswarm.store.piecestore")
    store = open_store(root)
    old, new = make_content(path, modified=1000), make_content(path, modified=2000)
    store.put_manifest(old.signed, old.raw)
    store.put_manifest(new.signed, new.raw)
    said = [r.levelno for r in caplog.records if r.getMessage() == f"{path} changed: dropping cached version {old.cid[:12]}"]
    assert said == [level]


def test_a_same_second_change_still_replaces_the_content(root):
    """Same mtime, different bytes: the manifest that arrives later is the current one."""
    store = open_store(root)
    first, second = make_content(modified=1000), make_content(modified=1000)
    stored(store, first, 0)
    store.put_manifest(second.signed, second.raw)
    assert store.manifest_for_path("films/a.mkv") == second.signed
    assert store.manifest(first.cid) is None


def test_an_older_version_arriving_late_does_not_replace_the_newer(root):
    store = open_store(root)
    old, new = make_content(modified=1000), make_content(modified=2000)
    stored(store, new, 0)
    store.put_manifest(old.signed, old.raw)
    assert store.manifest_for_path("films/a.mkv") == new.signed
    assert store.has(new.cid, 0) and store.read_piece(new.cid, 0) == new.piece(0)


def test_other_paths_are_not_affected_by_a_new_version(root):
    store = open_store(root)
    a, b1, b2 = make_content("a.mkv"), make_content("b.mkv", modified=1), make_content("b.mkv", modified=2)
    stored(store, a, 0)
    stored(store, b1, 0)
    store.put_manifest(b2.signed, b2.raw)
    assert store.has(a.cid, 0) and store.manifest_for_path("a.mkv") == a.signed


# -- restarts ---------------------------------------------------------------------------------


def test_pieces_survive_a_restart(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 2)
    store.close()
    again = open_store(root)
    assert again.held(c.cid) == {0, 2}
    assert again.manifest_for_path("films/a.mkv") == c.signed
    assert again.raw_manifest(c.cid) == c.raw
    assert again.read_piece(c.cid, 2) == c.piece(2)
    assert again.used_bytes == MIN_PIECE + 100
    again.close()


def test_load_after_a_crash_drops_partial_and_wrong_files(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    store.close()
    cdir = store.content_dir / c.cid
    (cdir / "1.tmp").write_bytes(c.piece(1)[:1000])  # killed in the middle of a write
    (cdir / "manifest.json.tmp").write_bytes(c.raw[:10])
    (cdir / "1.piece").write_bytes(c.piece(1)[:-1])  # wrong size
    (cdir / "2.piece").write_bytes(c.piece(2) + b"x")
    (cdir / "3.piece").write_bytes(c.piece(2))  # beyond the last piece
    (cdir / "2.piece").unlink()
    (cdir / "2.piece").mkdir()  # a directory where a piece should be: every start failed with "Is a directory"
    (cdir / "2.piece" / "x").write_bytes(b"x")
    (cdir / "notes.txt").write_text("not ours")
    again = open_store(root)
    assert again.held(c.cid) == {0}
    assert again.used_bytes == MIN_PIECE
    assert {p.name for p in cdir.iterdir()} == {"manifest.json", "0.piece", "notes.txt"}
    assert again.read_piece(c.cid, 0) == c.piece(0)
    again.close()


def test_load_ignores_piece_names_in_other_digits(root):
    """'².piece' passed str.isdigit() and then crashed int(); '١.piece' was read as piece 1."""
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    store.close()
    cdir = store.content_dir / c.cid
    (cdir / "².piece").write_bytes(c.piece(1))
    (cdir / "١.piece").write_bytes(c.piece(1))
    again = open_store(root)
    assert again.held(c.cid) == {0}
    again.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda cdir, c: (cdir / "manifest.json").unlink(),  # killed between mkdir and the manifest's rename
        lambda cdir, c: (cdir / "manifest.json").write_bytes(c.raw[: len(c.raw) // 2]),
        lambda cdir, c: (cdir / "manifest.json").write_bytes(c.raw.replace(b'"size":', b'"size":1')),
        lambda cdir, c: (cdir / "manifest.json").write_bytes(make_content(key=Ed25519PrivateKey.generate()).raw),
        lambda cdir, c: (cdir / "manifest.json").write_bytes(make_content("other.mkv").raw),  # id does not match the directory
    ],
)
def test_load_drops_content_whose_manifest_is_missing_or_untrusted(root, damage):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0, 1)
    store.close()
    cdir = store.content_dir / c.cid
    damage(cdir, c)
    again = open_store(root)
    assert not cdir.exists()
    assert list(again.contents()) == [] and again.used_bytes == 0
    assert again.manifest_for_path("films/a.mkv") is None


def test_load_ignores_stray_files_in_the_content_directory(root):
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    (store.content_dir / "README").write_text("hello")
    again = open_store(root)
    assert again.held(c.cid) == {0}
    assert (store.content_dir / "README").exists()


def test_load_with_two_versions_of_a_path_serves_the_newer_whatever_the_directory_order(root):
    """A crash between writing a new manifest and dropping the old content leaves both on disk."""
    seen_orders = set()
    for n in range(40):
        base = root / str(n)
        old, new = make_content(modified=1000), make_content(modified=2000 + n)
        for c in (old, new):
            cdir = base / "content" / c.cid
            cdir.mkdir(parents=True)
            (cdir / "manifest.json").write_bytes(c.raw)
        store = open_store(base)
        assert store.manifest_for_path("films/a.mkv") == new.signed
        seen_orders.add(new.cid < old.cid)
        if len(seen_orders) == 2:
            break
    assert seen_orders == {True, False}


# -- quota ------------------------------------------------------------------------------------------


def test_quota_evicts_pieces_but_never_the_one_just_stored(root):
    store = open_store(root, max_bytes=2 * MIN_PIECE)
    c = make_content(size=3 * MIN_PIECE)
    stored(store, c, 0, 1)
    store.put_piece(c.cid, 2, c.piece(2))
    assert store.used_bytes <= 2 * MIN_PIECE
    assert store.evicted_pieces == 1
    assert store.held(c.cid) == {1, 2}
    assert not Path(store.piece_path(c.cid, 0)).exists()
    assert store.read_piece(c.cid, 0) is None


def test_quota_keeps_pieces_that_are_read(root):
    store = open_store(root, max_bytes=2 * MIN_PIECE)
    c = make_content(size=3 * MIN_PIECE)
    stored(store, c, 0, 1)
    for _ in range(3):
        assert store.read_piece(c.cid, 0) == c.piece(0)
    store.put_piece(c.cid, 2, c.piece(2))
    assert store.held(c.cid) == {0, 2}
    assert {p.name for p in (store.content_dir / c.cid).glob("*.piece")} == {"0.piece", "2.piece"}
    store.close()


def test_quota_spans_contents(root):
    store = open_store(root, max_bytes=2 * MIN_PIECE)
    a, b = make_content("a.mkv"), make_content("b.mkv")
    stored(store, a, 0, 1)
    stored(store, b, 0)
    assert store.held(a.cid) == {1} and store.held(b.cid) == {0}
    assert store.manifest(a.cid) is not None  # the manifest stays even when its pieces go


def test_a_smaller_quota_on_restart_is_enforced_at_load(root):
    store = open_store(root)
    c = make_content(size=3 * MIN_PIECE)
    stored(store, c, 0, 1, 2)
    again = open_store(root, max_bytes=MIN_PIECE)
    assert again.used_bytes <= MIN_PIECE and len(again.held(c.cid)) == 1
    on_disk = {p.name for p in (again.content_dir / c.cid).glob("*.piece")}
    assert on_disk == {f"{i}.piece" for i in again.held(c.cid)}


def test_empty_file_content(root):
    store = open_store(root)
    c = make_content(size=0)
    store.put_manifest(c.signed, c.raw)
    again = open_store(root)
    assert again.manifest_for_path("films/a.mkv") == c.signed and again.held(c.cid) == set()


def test_store_root_is_created(tmp_path):
    root = tmp_path / "a" / "b"
    open_store(root)
    assert (root / "content").is_dir()


# -- worker processes sharing one directory (edge --workers N) ---------------------------
def test_workers_take_up_what_another_stored_and_check_it_first(root: Path):
    a, b = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    c = make_content()
    stored(a, c, 0, 1)
    assert b.manifest_for_path(c.signed.manifest.path) == c.signed  # a content it never saw: found on a scan of the directory
    assert b.read_piece(c.cid, 0) == c.piece(0)  # taken up from disk, not fetched again
    Path(b.piece_path(c.cid, 1)).write_bytes(b"x" * len(c.piece(1)))  # damaged behind the writer's back
    assert b.read_piece(c.cid, 1) is None and b.corrupt_pieces == 1  # checked before it is served: dropped
    assert b.used_bytes == 0  # counted by the worker that wrote them, not twice


def test_a_worker_closes_what_it_kept_open_of_pieces_another_worker_evicted(root: Path):
    """Kept open in a worker's descriptor cache, pieces another worker evicted stayed on disk: 49 MB against an 8 MiB
    --max-cache after 25 minutes, out of du and of every count (an adversarial session)."""
    a, b = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    c = make_content()
    stored(a, c, 0, 1)
    assert b.manifest_for_path(c.signed.manifest.path) == c.signed
    assert b.read_piece(c.cid, 0) == c.piece(0) and b.piece_fd(c.cid, 1) is not None  # b keeps descriptors of both
    a.drop_content(c.cid)  # a evicts them: their files are unlinked
    assert b.read_piece(c.cid, 0) is None  # a look at one finds it gone, its descriptor closed
    assert b.close_unlinked() == 1 and b.close_unlinked() == 0  # the other's, closed by the worker's sweep


def test_workers_write_temporary_files_of_their_own_and_split_the_quota(root: Path, monkeypatch: pytest.MonkeyPatch):
    c = make_content()
    a = PieceStore(root, PUB, max_bytes=2 * MIN_PIECE, worker=(0, 2))
    names: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(piecestore.os, "replace", lambda src, dst: (names.append(str(src)), real_replace(src, dst)))
    stored(a, c, 0, 1)
    assert all(name.endswith(f".{os.getpid()}.tmp") for name in names)  # never a name another writer uses
    assert a.policy.capacity == MIN_PIECE and len(a.held(c.cid)) == 1  # half the quota: the second piece evicted the first


def test_a_restarted_worker_counts_its_share_of_the_pieces_found(root: Path):
    c = make_content()
    stored(open_store(root), c, 0, 1, 2)
    shares = [PieceStore(root, PUB, worker=(i, 2)) for i in range(2)]
    assert all(s.held(c.cid) == {0, 1, 2} for s in shares)  # every worker serves every piece
    assert sum(s.used_bytes for s in shares) == c.signed.manifest.size  # and each piece is counted once


def test_a_restarted_worker_comes_down_to_its_share_as_it_writes(root: Path):
    """A restarted worker counted what it found against the whole --max-cache, and kept that quota for its new pieces for
    as long as it lived: once every worker had restarted, the directory held N x --max-cache for good (an adversarial
    session: 15.9 MB under a 4 MB quota with 4 workers).  What it found is kept at start; each byte written then takes
    one off its quota, down to its share."""
    found, new = make_content("a.mkv", 4 * MIN_PIECE), make_content("b.mkv", 4 * MIN_PIECE)
    stored(open_store(root), found, 0, 1, 2, 3)
    restarted = PieceStore(root, PUB, max_bytes=4 * MIN_PIECE, worker=(1, 2), counts_found=True)
    assert restarted.held(found.cid) == {0, 1, 2, 3}  # nothing deleted at start
    stored(restarted, new, 0)
    assert restarted.used_bytes == 3 * MIN_PIECE  # one piece written, two found evicted for it
    stored(restarted, new, 1, 2, 3)
    assert restarted.policy.capacity == restarted.used_bytes == 2 * MIN_PIECE  # its share, and it stays there
    assert len(list(root.glob("content/*/*.piece"))) == 2


def test_a_content_directory_that_cannot_be_made_is_a_piece_not_stored_then_saved_once_it_can(root):
    """Out of inodes or with a file in the way, a new content is served, not a 500; its manifest is saved with a later piece."""
    store = open_store(root)
    c = make_content()
    (store.content_dir / c.cid).write_bytes(b"in the way")  # mkdir fails as it would out of inodes
    store.put_manifest(c.signed, c.raw)  # kept in memory: the content is known
    assert store.manifest(c.cid) is not None
    with pytest.raises(piecestore.PieceNotStored):
        store.put_piece(c.cid, 0, c.piece(0))
    assert store.write_error and not store.has(c.cid, 0)
    (store.content_dir / c.cid).unlink()  # room again
    store.put_piece(c.cid, 0, c.piece(0))
    assert files(store, c) == {"manifest.json", "0.piece"}
    assert open_store(root).has(c.cid, 0)  # and it survives a restart: the manifest went to disk with it


@pytest.mark.parametrize("damage", ["removed", "a file in its place"])
def test_a_content_directory_that_goes_mid_run_is_made_again_with_the_next_piece(root, damage):
    """Its directory removed (or a file put there) behind the store's back: it is made again, with its manifest, for
    that piece (a file in its place: for the next one, that piece is not stored); before, the content was never cached
    again until a restart."""
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    cdir = store.content_dir / c.cid
    store.close()  # the descriptor of piece 0 goes; the directory with it
    shutil.rmtree(cdir)
    if damage != "removed":
        cdir.write_bytes(b"in the way")
    if damage == "removed":
        store.put_piece(c.cid, 1, c.piece(1))
    else:
        with pytest.raises(piecestore.PieceNotStored):
            store.put_piece(c.cid, 1, c.piece(1))
        cdir.unlink()
    store.put_piece(c.cid, 2, c.piece(2))
    assert {"manifest.json", "2.piece"} <= files(store, c)
    assert open_store(root).has(c.cid, 2)


# -- manifests of contents that hold nothing --------------------------------------------------------


def test_manifests_of_contents_holding_nothing_are_bounded(root, monkeypatch):
    """Every evicted content's manifest stayed for good, in memory and on disk: an edge serving a live stream kept
    one per segment it ever served.  Past MAX_BARE, the longest bare go, directory and all; a content holding a piece
    stays, and so does a pinned one (a peer's --seed) or one bare for less than BARE_GRACE (its first piece coming)."""
    monkeypatch.setattr(piecestore, "MAX_BARE", 3)
    monkeypatch.setattr(piecestore, "BARE_GRACE", 0.0)
    store = open_store(root, max_bytes=2 * MIN_PIECE)  # room for two pieces
    kept, pinned = make_content("kept.bin"), make_content("pinned.bin")
    store.pinned.add(pinned.cid)
    stored(store, pinned)
    stored(store, kept, 0)
    bare = [make_content(f"seg{i}.ts") for i in range(5)]
    for c in bare:
        stored(store, c)
    assert store.manifest(kept.cid) is not None and store.manifest(pinned.cid) is not None
    assert [c for c in bare if store.manifest(c.cid) is not None] == bare[2:]  # the three newest bare ones
    assert not (store.content_dir / bare[0].cid).exists(), "a dropped manifest's directory stayed on disk"
    assert store.manifest_for_path("seg0.ts") is None


def test_a_content_whose_pieces_are_all_evicted_is_bare(root, monkeypatch):
    monkeypatch.setattr(piecestore, "MAX_BARE", 1)
    monkeypatch.setattr(piecestore, "BARE_GRACE", 0.0)
    store = open_store(root, max_bytes=MIN_PIECE)  # one piece: each new one evicts the last
    a, b, c = make_content("a.ts"), make_content("b.ts"), make_content("c.ts")
    stored(store, a, 0)
    stored(store, b, 0)  # a's piece evicted: a is bare, alone (within the bound)
    assert store.held(a.cid) == set() and store.manifest(a.cid) is not None
    stored(store, c, 0)  # b's evicted too: two bare, a the longest, goes
    assert store.manifest(a.cid) is None and store.manifest(b.cid) is not None and store.held(c.cid) == {0}


def test_a_bare_content_being_read_is_the_last_in_line_to_go(root, monkeypatch):
    """A content read again was the longest bare one, and so the first dropped: an edge past MAX_BARE under a small
    --max-cache answered 502 "withdrawn while being fetched" for files it was serving (an adversarial session)."""
    monkeypatch.setattr(piecestore, "MAX_BARE", 2)
    monkeypatch.setattr(piecestore, "BARE_GRACE", 0.0)
    store = open_store(root)
    read, other = make_content("read.bin"), make_content("other.bin")
    stored(store, read)
    stored(store, other)
    store.used(read.cid)  # a request for it: bare from now
    stored(store, make_content("third.bin"))  # past the bound: the longest bare goes
    assert store.manifest(read.cid) is not None and store.manifest(other.cid) is None
    store.used(other.cid)  # not bare (not known at all): nothing to do


def test_a_piece_whose_directory_another_worker_dropped_is_stored_not_counted_a_failure(root):
    """Another worker dropped a bare content's directory while this one stored a piece of it: the write was counted as
    a failing disk, which said cache_error and stopped read-ahead for a while (an adversarial session)."""
    one, two = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    c = make_content("shared.bin")
    stored(one, c, 0)
    stored(two, c)
    two.drop_content(c.cid)  # bare there: its directory goes, the piece one stored with it
    one.put_piece(c.cid, 1, c.piece(1))
    assert one.write_failures == 0 and one.write_error is None
    assert {"manifest.json", "1.piece"} <= files(one, c)


def test_a_bare_manifest_whose_pieces_another_worker_holds_is_taken_up_not_dropped(root, monkeypatch):
    monkeypatch.setattr(piecestore, "MAX_BARE", 1)
    monkeypatch.setattr(piecestore, "BARE_GRACE", 0.0)
    one, two = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    shared = make_content("shared.bin")
    stored(two, shared, 0)  # the other worker stored a piece
    stored(one, shared)  # this worker knows the manifest, no piece of its own: bare here
    stored(one, make_content("other.bin"))  # past the bound: shared is the longest bare
    assert one.manifest(shared.cid) is not None and one.held(shared.cid) == {0}
    assert two.read_piece(shared.cid, 0) == shared.piece(0)


def test_a_worker_keeps_a_live_writers_temporary_files_and_drops_those_no_process_can_have(root: Path):
    """Another live worker's write in progress stays; the names of writers that are gone, or that no process can be
    (pid 0, or 18 digits: os.kill raised OverflowError at the worker's start), are removed."""
    c = make_content()
    stored(open_store(root), c, 0)
    cdir = root / "content" / c.cid
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        names = [f"1.piece.{sleeper.pid}.tmp", "1.piece.0.tmp", f"1.piece.{'9' * 18}.tmp", f"2.piece.{2**22 + 1}.tmp"]
        for name in names:
            (cdir / name).write_bytes(b"partial")
        store = PieceStore(root, PUB, worker=(1, 2))
        assert store.held(c.cid) == {0}
        assert sorted(p.name for p in cdir.iterdir()) == sorted(["0.piece", "manifest.json", names[0]])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_file_system_that_sets_no_times_still_caches(root: Path, monkeypatch: pytest.MonkeyPatch):
    """The mark (an mtime) made every write fail where setting a file's times fails (some FUSE, CIFS or NFS mounts):
    nothing was cached (a review).  There, no mark is made and pieces are stored as before."""

    def refusing(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "utime", refusing)
    store = open_store(root)
    c = make_content()
    stored(store, c, 0)
    assert store.good_mtime is None and store.read_piece(c.cid, 0) == c.piece(0)


def test_a_file_system_that_rounds_the_mark_hashes_a_piece_once(root: Path, monkeypatch: pytest.MonkeyPatch):
    """FAT keeps no time before 1980: the mark came back as 1980-01-01, never equal to it, and every hit read its piece
    back and hashed it (a review).  The mark is what the file system keeps of it, probed at start."""
    real, fat_min = os.utime, 315_532_800 * 10**9

    def rounding(path, *args, ns=None, **kwargs):
        return real(path, *args, **kwargs) if ns is None else real(path, *args, ns=(ns[0], max(ns[1], fat_min)), **kwargs)

    monkeypatch.setattr(os, "utime", rounding)
    store = PieceStore(root, PUB, open_files=1)
    c = make_content()
    stored(store, c, 0, 1)
    checks: list[int] = []
    real_check = store._check
    monkeypatch.setattr(store, "_check", lambda cid, index, fd: (checks.append(index), real_check(cid, index, fd))[1])
    for _ in range(10):
        assert store.read_piece(c.cid, 0) == c.piece(0) and store.read_piece(c.cid, 1) == c.piece(1)
    assert checks == [] and store.good_mtime == fat_min
    with open(store.piece_path(c.cid, 0), "r+b") as f:  # and an overwrite is still caught
        f.write(b"\0" * 16)
    assert store.read_piece(c.cid, 0) is None and store.corrupt_pieces == 1


def test_a_seeders_paths_are_pinned_before_the_quota_evicts_what_it_found_at_start(root):
    """A seeder restarted under a smaller --max-cache evicted its seed's pieces at start, then fetched them again from the
    edge once the seed was pinned: 15 MB a restart (an adversarial session).  The newest version of a seeded path is
    pinned from the start; an older one is not."""
    old, seed, other = make_content("seed.bin", modified=1), make_content("seed.bin", modified=2), make_content("other.bin")
    store = open_store(root)
    for c in (other, old):
        stored(store, c, 0, 1, 2)
    stored(store, seed, 0, 1, 2)  # a newer version of the path: the old one is dropped as it comes
    store.close()
    again = PieceStore(root, PUB, MIN_PIECE, pinned_paths=frozenset({"seed.bin"}))
    assert again.pinned == {seed.cid}
    assert again.held(seed.cid) == {0, 1, 2} and again.held(other.cid) == set()
    assert open_store(root, MIN_PIECE).held(seed.cid) != {0, 1, 2}, "unpinned, the quota takes it"


def test_a_smaller_quota_at_start_says_what_it_evicted(root, caplog):
    """The line gave the pieces found before the quota took its share beside the bytes after (an adversarial session)."""
    c = make_content()
    stored(open_store(root), c, 0, 1, 2)
    caplog.set_level(logging.INFO)
    small = open_store(root, 2 * MIN_PIECE)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("piece store")]
    assert f"1 contents, 2 pieces, {small.used_bytes} bytes (evicted 1 pieces found at start to fit --max-cache)" in line


def test_read_ahead_is_off_while_writes_fail_and_for_as_long_as_status_says_so(root, monkeypatch):
    """Read-ahead stayed off for good after a full disk on a worker that stored nothing since (its siblings did),
    where /status stops saying so WRITE_PROBLEM_S after the last failed write (a review)."""
    from edgeswarm.store import piecestore

    store = PieceStore(root, PUB)
    assert store.read_ahead(4, 1024) == 4
    store.write_error, store._write_failed = "No space left on device", time.monotonic()
    assert store.read_ahead(4, 1024) == 0
    monkeypatch.setattr(piecestore, "WRITE_PROBLEM_S", 0.0)
    assert store.read_ahead(4, 1024) == 4


def test_read_ahead_is_at_most_half_the_pieces_the_quota_keeps(root):
    """An edge under --max-cache 1MB fetched 4 pieces ahead of its reader, evicted them before the reader came to them
    and fetched them again: 1.4-1.97 x the file from its parent for one reader (an adversarial session).  As a peer's
    window (engine.py, ``room``), read-ahead is at most half of what the quota keeps."""
    assert PieceStore(root, PUB).read_ahead(4, 1 << 18) == 4
    small = PieceStore(root, PUB, 1 << 20)  # 4 pieces of 256 KiB
    assert small.read_ahead(4, 1 << 18) == 2
    assert small.read_ahead(4, 1 << 16) == 4
    assert small.read_ahead(4, 1 << 20) == 0, "a piece the size of the quota: none ahead"


# -- a full or read-only disk -------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path: Path):
    """A 1 MiB tmpfs at tmp_path/disk, to be filled: a disk at 100 % that still makes a directory (it needs no block)."""
    with mounted_tmpfs(tmp_path / "disk", "size=1m") as disk:
        yield disk


def test_contents_asked_for_on_a_full_disk_leave_no_empty_directory(full_disk: Path):
    """The directory was made, its manifest refused, and it stayed: an empty CACHE/content/<id>/ for each content asked
    for while the disk was full (202 of them), an inode each, that an edge with workers never removed and read again at
    every scan (an adversarial session)."""
    store = PieceStore(full_disk / "cache", PUB, worker=(0, 2))
    filler = fill(full_disk)
    contents = [make_content(f"f{i}.bin", 100) for i in range(5)]
    for c in contents:
        stored(store, c)  # known, and served from memory
    assert store.write_failures == 5 and all(store.manifest(c.cid) for c in contents)
    assert os.listdir(store.content_dir) == []
    filler.unlink()
    store.put_piece(contents[0].cid, 0, contents[0].piece(0))  # the disk has room again: saved with its first piece
    assert files(store, contents[0]) == {"manifest.json", "0.piece"}


def test_empty_content_directories_go_at_the_next_start_with_one_line(root: Path, caplog: pytest.LogCaptureFixture):
    """Left by a full disk (the directory made, its manifest refused), each was "dropping cached content ...: it has no
    manifest" at the next start, a warning of something never cached, and an edge with workers kept them for good (an
    adversarial session).  A worker leaves a young one alone: another worker may be storing that content right now."""
    content_dir = open_store(root).content_dir
    old = [content_dir / f"{i:064x}" for i in range(3)]
    young = content_dir / ("f" * 64)
    for cdir in [*old, young]:
        cdir.mkdir()
    (old[0] / f"manifest.json.{2**22 + 1}.tmp").write_bytes(b"partial")  # its writer is gone
    for cdir in old:
        os.utime(cdir, (time.time() - 3600, time.time() - 3600))
    with caplog.at_level(logging.INFO, logger="edgeswarm.store.piecestore"):
        PieceStore(root, PUB, worker=(0, 2)).close()
        assert os.listdir(content_dir) == [young.name]
        open_store(root).close()  # alone: no other writer, the young one goes too
    assert os.listdir(content_dir) == []
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "content" in r.getMessage() and "contents," not in r.getMessage()]
    assert said == [
        (logging.INFO, f"piece store {root}: removed 3 empty content directories (their manifests the disk refused)"),
        (logging.INFO, f"piece store {root}: removed 1 empty content directories (their manifests the disk refused)"),
    ]


def test_a_worker_reads_a_directory_without_a_usable_manifest_again_once_it_changes(root: Path, monkeypatch: pytest.MonkeyPatch):
    """Every miss of an unknown path had each worker read every such directory again (once a second at most): 20 000 of
    them took a fifth of a core per worker (an adversarial session).  One made within the last two seconds is read again
    whatever its mtime says (a coarse clock may not move for the manifest)."""
    other, worker = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    c, fresh = make_content(), make_content("fresh.bin")
    (worker.content_dir / c.cid).mkdir()
    os.utime(worker.content_dir / c.cid, (time.time() - 60, time.time() - 60))
    (worker.content_dir / fresh.cid).mkdir()
    reads: list[str] = []
    adopt = worker._adopt_manifest
    monkeypatch.setattr(worker, "_adopt_manifest", lambda cid: (reads.append(cid), adopt(cid))[1])
    for _ in range(3):
        worker._next_scan = 0.0  # a second later
        assert worker.manifest_for_path(c.signed.manifest.path) is None
    assert sorted(reads) == sorted([c.cid] + 3 * [fresh.cid])
    stored(other, c)  # another worker stores it: its directory changes
    worker._next_scan = 0.0
    assert worker.manifest_for_path(c.signed.manifest.path) == c.signed


def test_a_bad_piece_a_read_only_disk_keeps_is_dropped_once_until_its_file_changes(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """On a read-only disk the drop could not delete a bad piece, and the next lookup of a worker took it up again as
    stored by another worker: checked, dropped and warned about three times a request, for good (an adversarial
    session).  It is set aside until its file changes; the failed delete is a write that failed, said once an episode."""
    writer, worker = PieceStore(root, PUB, worker=(0, 2)), PieceStore(root, PUB, worker=(1, 2))
    c = make_content()
    stored(writer, c, 0, 1)
    assert worker.manifest_for_path(c.signed.manifest.path) == c.signed
    path = worker.piece_path(c.cid, 1)
    with open(path, "r+b") as f:
        f.write(b"ZZZZ")  # damaged in place
    unlink = os.unlink

    def read_only(target, *args, **kwargs):
        if str(target).endswith(".piece"):
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        return unlink(target, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", read_only)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.piecestore"):
        for _ in range(3):  # requests, each looking up the piece several times
            assert worker.read_piece(c.cid, 1) is None and not worker.has(c.cid, 1) and worker.piece_fd(c.cid, 1) is None
    assert worker.corrupt_pieces == 1 and worker.write_failures == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "piece 1 of films/a.mkv does not match its signed hash" in said[0], said
    assert "cannot write (Read-only file system)" in said[1]
    monkeypatch.undo()  # writable again; another worker stores the piece afresh (a new file renamed over it)
    Path(f"{path}.x").write_bytes(c.piece(1))
    os.replace(f"{path}.x", path)
    assert worker.read_piece(c.cid, 1) == c.piece(1)


def test_a_piece_or_content_another_worker_evicts_while_a_worker_starts_is_skipped(root: Path, monkeypatch: pytest.MonkeyPatch):
    """Workers of an edge restarted with a lower --max-cache evict at the same time: one found a piece file the other had
    just removed, and its start failed (exit 2, "No such file or directory": one restart in six, a fixer session)."""
    gone, kept = make_content("gone.mkv"), make_content("kept.mkv")
    stored(open_store(root), gone, 0, 1, 2)
    stored(open_store(root), kept, 0, 1, 2)
    scandir = os.scandir

    def racing(path):  # as the directory is read, the other worker evicts: one piece, and the whole of "gone"
        if not isinstance(path, str | Path) or Path(path).name not in (kept.cid, gone.cid):
            return scandir(path)
        entries = list(scandir(path))
        if Path(path).name == kept.cid:
            os.unlink(Path(path) / "1.piece")
        else:
            shutil.rmtree(path)
            raise FileNotFoundError(path)
        return _Listing(entries)

    monkeypatch.setattr(piecestore.os, "scandir", racing)
    store = PieceStore(root, PUB, worker=(1, 2))
    assert store.held(kept.cid) == {0, 2} and store.held(gone.cid) == set()


class _Listing(list):
    """What ``os.scandir`` gives: its entries, iterated directly or in a ``with``."""

    def __enter__(self):
        return iter(self)

    def __exit__(self, *exc) -> None:
        return None
