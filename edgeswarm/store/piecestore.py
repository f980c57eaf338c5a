"""Verified pieces on disk, kept across restarts and under a byte quota.

Layout: ``ROOT/content/<content-id>/manifest.json`` (the signed manifest as
received) and one file per held piece, ``<index>.piece``.  A piece is written
to a temporary file and renamed into place, so after a crash - even SIGKILL in
the middle of a write - a piece file is either whole or absent, and the set of
piece files *is* the have-set: there is no second index to fall out of step.
Pieces are checked against the manifest before they are written; nothing
unverified is ever stored.  A piece found on disk at start is checked again
the first time it is read (before its descriptor is handed out), so one that
changed while the node was stopped is dropped and fetched again, never served.
A piece file whose bytes the store wrote or checked carries a fixed mtime
(``GOOD_MTIME_NS``, 1970-01-01 00:00:01): any write to it since (a tool, an
operator's mistake) moves its mtime, and the store reads it back and checks
it again before the next hit hands out its descriptor.  Bit rot moves no
mtime: that is caught at the next start.  The mark is what the cache's file
system keeps of that time (FAT keeps 1980-01-01: ``good_mtime``, probed at
start); on one that sets no times at all (some FUSE, CIFS or NFS mounts), no
mark is made and such overwrites are caught at the next start.

A write that fails (disk full, I/O error) leaves no temporary file behind and
stores nothing: the caller still holds the verified bytes and may serve them.

Descriptors: the store keeps up to ``open_files`` piece files open (the node
sizes it from its open-file limit: node/connlimit.py ``file_budget``).  When
the process runs out of descriptors anyway (EMFILE, or ENFILE for the whole
system), an open or a write closes the least recently used half of them and
tries once more; if that fails too, a read raises ``OutOfDescriptors`` (a 503
for that one request) and a write ``PieceNotStored``.  One log line says so,
at most once a minute.

Several worker processes of one edge (``edge --workers N``) share one
directory, each with a store of its own (``worker=(index, count)``):

- a temporary file is named after its writer's pid, so two workers storing
  the same piece at once never write into one file; each renames a whole,
  verified piece into place, and the last rename wins with identical bytes;
- a piece another worker stored is taken up (``adopt``) when asked for, checked
  against the manifest on first read like one found at start, instead of
  being fetched again;
- the quota is split: each worker evicts, down to ``max_bytes / count``, the
  pieces it wrote and, of those found at start, the ones whose hash falls to
  it.  A worker restarted after its predecessor died counts all it finds,
  against the whole ``max_bytes`` (the pieces the dead one wrote whose hash
  falls to a living worker were counted by nobody: each SIGKILL left about
  half of them over ``--max-cache`` for good; counted against its share, a
  restart deleted (N-1)/N of the cache at once: two adversarial sessions).
  Every piece on disk is so counted by at least one worker.  The restarted
  worker's quota is then what it found (within ``max_bytes``), and each byte
  it writes takes one off it, down to its share: kept at ``max_bytes``, its
  new pieces came on top of the others' shares, N x ``max_bytes`` once every
  worker had restarted (an adversarial session).  So the directory stays
  within ``max_bytes``, and after a worker's restart within twice it at
  worst, until the restarted worker's evictions (two bytes for each it
  writes) bring it back.  A piece one worker evicts while
  another serves it is read to the end through the open descriptor, and
  then dropped from the other's have-set when it is next looked up: a kept
  descriptor whose file has no link left is closed then, and the file
  opened again, so that no worker holds the bytes of evicted pieces on disk.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import resource
import shutil
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeswarm.errors import EdgeswarmError, HttpError
from edgeswarm.policy.eviction import EvictionPolicy
from edgeswarm.policy.live import is_playlist
from edgeswarm.processes import pid_alive
from edgeswarm.protocol.manifest import ManifestError, SignedManifest, is_content_id
from edgeswarm.protocol.units import ascii_decimal

log = logging.getLogger(__name__)
OPEN_FILES = 512  # piece descriptors kept open for hits, at most (fewer under a low open-file limit)
WRITE_PROBLEM_S = 300.0  # seconds a failed write is reported in /status (write_problem) if none succeeds meanwhile
# seconds without a failed write before one that succeeds ends an episode of failing writes: on a nearly full disk a
# file's short last piece, or a piece in the room a failed write's temporary file gave back, is stored between two
# that fail, and the warning and /status's cache_error came and went a few times a second (an adversarial session)
WRITES_GOOD_S = 10.0
UNLINKED_SWEEP_S = 1.0  # seconds between two closings of the descriptors of pieces another worker evicted
GOOD_MTIME_NS = 1_000_000_000  # the mtime of a piece file whose bytes the store wrote or checked (module docstring)
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)  # the process's or the system's file table is full
FDS_LOG_INTERVAL = 60.0  # seconds between two lines about running out of descriptors
# manifests of contents none of whose pieces is held (all evicted, or none fetched yet) kept at most; beyond, the
# longest bare go, directory and all (asked for again, a content's manifest is fetched again).  Kept for good, every
# segment of a live stream an edge had served stayed in its memory and on its disk: ~2.5 KB and an inode each, 43 200
# a day for one rendition of 2-second segments.
MAX_BARE = 4096
BARE_GRACE = 60.0  # seconds a bare manifest is kept whatever the bound: its first piece may be on its way
BARE_DROPS = 8  # bare contents dropped at most each time another goes bare (a directory removed each)
# seconds a content directory without a manifest is left alone at a worker's start: another worker may be storing it
# right now (the directory first, then its manifest: _save_manifest); older and empty, a full disk left it (_no_manifest)
LEFTOVER_AGE = 60.0
SETTLED_NS = 2_000_000_000  # a directory changed less than this long ago may change again within its mtime's tick
T = TypeVar("T")


class _DirectoryGone(EdgeswarmError):
    """A piece's write found its content's directory gone (PieceStore._write)."""


class CorruptPiece(EdgeswarmError, ValueError):
    """Bytes that do not match the manifest; they are never stored."""


class PieceNotStored(EdgeswarmError, OSError):
    """A verified piece the disk would not take (full, or failing): the bytes are good, only the cache missed out."""


class CacheError(EdgeswarmError, OSError):
    """A cache directory that cannot be used at all (a file in the way, read-only, no permission): the node cannot start."""


_FULL_SAID: set[Path] = set()  # caches that make_cache found full: said once


def make_cache(root: Path) -> None:
    """The store's directories under ``root``, and proof that files can be made there; CacheError with the reason if not.

    A probe refused for want of room (ENOSPC: no byte or no inode left; EDQUOT)
    proves a full cache, not an unusable one: its pieces are read, and writes
    fail as at runtime, where the store says so and serves from memory.  A
    restart, or a worker's replacement, out of inodes stopped with "is
    unusable" (exit 2) although the same node ran a moment before (an
    adversarial session).  One warning a cache, for a process and its forks.
    """
    content = root / "content"
    probe = root / f".probe.{os.getpid()}"
    try:
        content.mkdir(parents=True, exist_ok=True)
        try:
            probe.touch()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if (said := root.resolve()) not in _FULL_SAID:
                _FULL_SAID.add(said)
                log.warning("cache %s is full (%s: not one more file fits): nothing new is cached until there is room", root, exc.strerror)
        else:
            probe.unlink()
    except OSError as exc:
        raise CacheError(f"cache {root} is unusable: {exc.filename or root}: {exc.strerror or exc}") from None


def _kept_mtime(root: Path) -> int | None:
    """What the file system under ``root`` keeps of the mtime GOOD_MTIME_NS (FAT rounds it to 1980), or None if it
    sets no file times (a write that set one failed there, and nothing was cached: a review)."""
    probe = root / f".mtime.{os.getpid()}"
    try:
        probe.touch()
        try:
            os.utime(probe, ns=(time.time_ns(), GOOD_MTIME_NS))
            return probe.stat().st_mtime_ns
        finally:
            probe.unlink()
    except OSError:
        return None


class OutOfDescriptors(HttpError):
    """A held piece that cannot be opened now, the process being out of descriptors even after closing cached ones.

    A 503 for the request that asked (it may retry at once); the piece stays held.
    """

    def __init__(self, path: str):
        super().__init__(503, f"out of file descriptors: cannot open {path} now; retry", {"Retry-After": "1"})


class PieceStore:
    def __init__(
        self,
        root: Path,
        public_key: Ed25519PublicKey,
        max_bytes: int | None = None,
        worker: tuple[int, int] | None = None,
        open_files: int | None = None,
        counts_found: bool = False,
        pinned_paths: frozenset[str] = frozenset(),
    ):
        """``pinned_paths``: paths whose newest stored version is pinned from the start (``peer --seed``), before the
        quota evicts what it found: a seeder restarted under a smaller --max-cache evicted its seeds' pieces at start,
        then fetched them again from the edge once its seeds were pinned, at each restart (an adversarial session)."""
        self.root = root
        self.open_files = max(1, min(OPEN_FILES, open_files or OPEN_FILES))  # piece descriptors kept open at most
        self.worker = worker  # (index, count) when worker processes share the directory; None: this process alone
        self.counts_found = counts_found  # a restarted worker: its quota counts every piece found at start, not its share
        self.on_drop: Callable[[str], None] = lambda cid: None  # told each content dropped (the node's metrics forget it)
        # this worker's quota once what it found at start is gone (module docstring); None: its quota is max_bytes
        self.share = max(1, max_bytes // worker[1]) if worker is not None and max_bytes is not None else None
        if self.share is not None and not counts_found:
            max_bytes = self.share
        self.content_dir = root / "content"
        self._content_prefix = f"{self.content_dir}/"
        self.public_key = public_key
        self.policy = EvictionPolicy[tuple[str, int]](max_bytes)
        self.pinned: set[str] = set()  # content ids whose pieces are never evicted (peer --seed)
        self._pinned_paths = pinned_paths
        self.policy.pinned = lambda key: key[0] in self.pinned
        self._manifests: dict[str, SignedManifest] = {}
        self._raw: dict[str, bytes] = {}
        self._held: dict[str, set[int]] = {}
        self._by_path: dict[str, str] = {}
        self._fds: OrderedDict[tuple[str, int], int] = OrderedDict()  # open descriptors of held pieces, least recent first
        self._unsaved: set[str] = set()  # contents whose manifest a failing disk would not take (yet)
        self._unverified: set[tuple[str, int]] = set()  # found on disk at start, not yet read back and checked
        # bad pieces whose file could not be removed (a read-only disk) -> that file's (inode, ctime): not taken up
        # again (adopt) until it changes (_remove_bad)
        self._bad: dict[tuple[str, int], tuple[int, int]] = {}
        self._unusable: dict[str, int] = {}  # worker mode: directories whose manifest did not load -> their mtime (_adopt_new)
        self._bare: OrderedDict[str, float] = OrderedDict()  # contents holding no piece -> since when, oldest first
        # why writes fail, while they do (a full disk): logged once per episode, which a write that succeeds ends
        # WRITES_GOOD_S after the last that failed
        self.write_error: str | None = None
        self._write_failed = 0.0  # when a write last failed (monotonic)
        self.write_failures = 0  # writes refused since start: /metrics says what /status's cache_error says
        self.evicted_pieces = 0
        self._next_scan = 0.0  # worker mode: when the directory may next be scanned for others' contents
        self.corrupt_pieces = 0
        self.fd_shortages = 0  # times an open or a write ran out of descriptors (each closed cached ones and retried)
        self._fds_logged = -FDS_LOG_INTERVAL  # when a line about it was last logged
        self._fds_unlogged = 0  # shortages since that line
        make_cache(root)
        self.good_mtime = _kept_mtime(root)  # GOOD_MTIME_NS as this file system keeps it; None if it sets no times
        self._load()

    # -- start-up -------------------------------------------------------
    def _load(self) -> None:
        """Rebuild the in-memory view from disk, dropping anything half-written or wrong."""
        found: list[tuple[float, str, int, int]] = []
        leftovers = 0
        for cdir in sorted(self.content_dir.iterdir()):
            if not cdir.is_dir():
                continue
            try:
                signed = self._load_manifest(cdir)
            except FileNotFoundError:
                leftovers += self._no_manifest(cdir)
                continue
            if signed is None:
                continue
            m = signed.manifest
            for entry in _entries(cdir):
                name = entry.name
                if name.endswith(".tmp"):
                    if not self._writer_alive(name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                    continue
                index = ascii_decimal(name.removesuffix(".piece")) if name.endswith(".piece") else None
                if index is None:
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # another worker evicted it (its start, at a lowered --max-cache): exit 2 before
                    continue
                if index >= m.piece_count or not entry.is_file() or st.st_size != m.piece_span(index)[1]:
                    log.warning("dropping damaged piece %s", entry.path)
                    self.corrupt_pieces += 1
                    _remove(entry)
                    continue
                self._held[signed.content_id].add(index)
                self._bare.pop(signed.content_id, None)
                self._unverified.add((signed.content_id, index))
                if self._counts(signed.content_id, index):
                    found.append((st.st_atime, signed.content_id, index, st.st_size))
        self.pinned.update(self._by_path[path] for path in self._pinned_paths if path in self._by_path)
        evicted = self.evicted_pieces
        for _, cid, index, size in sorted(found):  # oldest first: the policy sees them in access order
            for victim in self.policy.add((cid, index), size):
                self._delete_piece(*victim)
        evicted = self.evicted_pieces - evicted  # a quota smaller than at the last start: what it took was not said
        if leftovers:
            log.info("piece store %s: removed %d empty content directories (their manifests the disk refused)", self.root, leftovers)
        if self.share is not None and self.counts_found:  # what it found, and no more: put_piece takes it down to its share
            self.policy.capacity = max(self.share, self.policy.used)
        log.info(
            "piece store %s: %d contents, %d pieces, %d bytes%s; up to %d piece files kept open",
            self.root,
            len(self._manifests),
            len(found) - evicted,
            self.policy.used,
            f" (evicted {evicted} pieces found at start to fit --max-cache)" if evicted else "",
            self.open_files,
        )

    def _counts(self, cid: str, index: int) -> bool:
        """Whether this store's quota counts a piece found at start: all of them (alone, or restarted), or its share among
        workers (module docstring)."""
        if self.worker is None or self.counts_found:
            return True
        return zlib.crc32(f"{cid}/{index}".encode()) % self.worker[1] == self.worker[0]

    def _writer_alive(self, name: str) -> bool:
        """A temporary file another live worker is writing right now (``<name>.<pid>.tmp``): not to be removed."""
        parts = name.split(".")
        pid = ascii_decimal(parts[-2]) if len(parts) >= 4 else None  # <index>.piece.<pid>.tmp, manifest.json.<pid>.tmp
        return self.worker is not None and pid is not None and pid != os.getpid() and pid_alive(pid)

    def _load_manifest(self, cdir: Path) -> SignedManifest | None:
        """A content directory's checked manifest, or None (a bad one is said and its directory dropped);
        FileNotFoundError if it has none (``_no_manifest``)."""
        try:
            raw = (cdir / "manifest.json").read_bytes()
            signed = SignedManifest.parse(raw, self.public_key)
            if signed.content_id != cdir.name:
                raise ManifestError("content id does not match its directory")
        except FileNotFoundError:
            raise
        except (OSError, ManifestError) as exc:
            log.warning("dropping cached content %s: %s", cdir.name, exc)
            shutil.rmtree(cdir, ignore_errors=True)
            return None
        self._remember(signed, raw)
        return signed

    def _no_manifest(self, cdir: Path) -> int:
        """A content directory found at start without its manifest; 1 if it was an empty one, removed, else 0.

        Empty (but for dead writers' temporary files), a full disk left it:
        the directory was made, its manifest refused.  Such ones are removed
        and counted for one line (``_load``): each was "dropping cached
        content ...: it has no manifest", a warning of something never
        cached, 202 at once (an adversarial session).  With workers, one
        holding more, or younger than LEFTOVER_AGE, may be another worker's
        being stored right now: left alone.  Alone, one holding pieces is
        dropped with a warning (killed between its mkdir and its manifest).
        """
        try:
            empty = all(name.endswith(".tmp") and not self._writer_alive(name) for name in os.listdir(cdir))
            settled = self.worker is None or time.time() - cdir.stat().st_mtime >= LEFTOVER_AGE
        except OSError:
            return 0
        if empty and settled:
            shutil.rmtree(cdir, ignore_errors=True)
            return 1
        if self.worker is None:
            log.warning("dropping cached content %s: it has no manifest", cdir.name)
            shutil.rmtree(cdir, ignore_errors=True)
        return 0

    def _remember(self, signed: SignedManifest, raw: bytes) -> None:
        cid = signed.content_id
        self._manifests[cid] = signed
        self._raw[cid] = raw
        if not self._held.setdefault(cid, set()):
            self._bared(cid)
        old = self._by_path.get(signed.manifest.path)
        if old is None or self._manifests[old].manifest.modified <= signed.manifest.modified:
            self._by_path[signed.manifest.path] = cid

    # -- manifests --------------------------------------------------------
    def put_manifest(self, signed: SignedManifest, raw: bytes) -> None:
        """Store a verified manifest; an older version of the same path is dropped."""
        cid = signed.content_id
        if cid in self._manifests:
            return
        with contextlib.suppress(PieceNotStored):  # kept in memory only; saved with its first piece that can be stored
            self._save_manifest(cid, raw)
        previous = self._by_path.get(signed.manifest.path)
        self._remember(signed, raw)
        if previous is not None and previous != cid and self._by_path[signed.manifest.path] == cid:
            # a playlist changes at every segment: a line each time was 30 a minute per node per live stream
            level = logging.DEBUG if is_playlist(signed.manifest.path) else logging.INFO
            log.log(level, "%s changed: dropping cached version %s", signed.manifest.path, previous[:12])
            self.drop_content(previous)

    def manifest(self, cid: str) -> SignedManifest | None:
        return self._manifests.get(cid) or self._adopt_manifest(cid)

    def _adopt_manifest(self, cid: str) -> SignedManifest | None:
        """A content another worker stored, taken up from its checked manifest on disk (a sibling's only-if-cached ask)."""
        if self.worker is None or not is_content_id(cid):
            return None
        try:
            raw = (self.content_dir / cid / "manifest.json").read_bytes()
            signed = SignedManifest.parse(raw, self.public_key)
        except (OSError, ManifestError):
            return None
        if signed.content_id != cid:
            return None
        self._remember(signed, raw)
        return signed

    def raw_manifest(self, cid: str) -> bytes | None:
        return self._raw.get(cid)

    def manifest_for_path(self, path: str) -> SignedManifest | None:
        cid = self._by_path.get(path)
        if cid is None and self._adopt_new():
            cid = self._by_path.get(path)
        return self._manifests.get(cid) if cid else None

    def _adopt_new(self) -> bool:
        """Take up the contents other workers stored since (at most once a second: a miss of an unknown path is cheap)."""
        now = time.monotonic()
        if self.worker is None or now < self._next_scan:
            return False
        self._next_scan = now + 1.0
        with contextlib.suppress(OSError):
            unusable: dict[str, int] = {}
            for name in os.listdir(self.content_dir):
                if name not in self._manifests:
                    self._adopt_unknown(name, unusable)
            self._unusable = unusable
        return True

    def _adopt_unknown(self, name: str, unusable: dict[str, int]) -> None:
        """Take up the content of directory ``name``, unless its manifest did not load at the last scan and the
        directory has not changed since (then, and if it fails now, it goes into ``unusable`` with its mtime).  Each scan
        read every directory without a usable manifest again: a fifth of a core per worker for 20 000 of them (an
        adversarial session).  One changed within SETTLED_NS is read again whatever its mtime says: its manifest may
        come within the same tick of a coarse clock."""
        try:
            mtime = os.stat(f"{self._content_prefix}{name}").st_mtime_ns
        except OSError:
            return
        unchanged = self._unusable.get(name) == mtime
        if unchanged or (self._adopt_manifest(name) is None and time.time_ns() - mtime >= SETTLED_NS):
            unusable[name] = mtime

    def drop_content(self, cid: str) -> None:
        self.on_drop(cid)
        signed = self._manifests.pop(cid, None)
        self._raw.pop(cid, None)
        self._bare.pop(cid, None)
        self._unsaved.discard(cid)
        for index in self._held.pop(cid, set()):
            self.policy.remove((cid, index))
            self._close(cid, index)
            self._unverified.discard((cid, index))
        if signed is not None and self._by_path.get(signed.manifest.path) == cid:
            del self._by_path[signed.manifest.path]
        shutil.rmtree(self.content_dir / cid, ignore_errors=True)

    def forget_path(self, path: str) -> None:
        """The origin no longer publishes ``path``: drop what we hold of it."""
        cid = self._by_path.get(path)
        if cid:
            self.drop_content(cid)

    # -- pieces -------------------------------------------------------------
    def has(self, cid: str, index: int) -> bool:
        return index in self._held.get(cid, ()) or self.adopt(cid, index)

    def adopt(self, cid: str, index: int) -> bool:
        """Take up a piece another worker stored (checked on first read, and counted in that worker's quota, not ours)."""
        if self.worker is None or cid not in self._manifests or index in self._held[cid]:
            return False
        try:
            st = os.stat(self.piece_path(cid, index))
        except OSError:
            return False
        if self._bad and self._is_bad(cid, index, st):
            return False
        m = self._manifests[cid].manifest
        if index >= m.piece_count or st.st_size != m.piece_span(index)[1]:
            return False
        self._held[cid].add(index)
        self._bare.pop(cid, None)
        self._unverified.add((cid, index))
        return True

    def _is_bad(self, cid: str, index: int, st: os.stat_result) -> bool:
        """Whether a piece file is the bad one this store could not remove (``_remove_bad``), not another worker's."""
        key = (cid, index)
        if key not in self._bad:
            return False
        if self._bad[key] == (st.st_ino, st.st_ctime_ns):
            return True
        del self._bad[key]  # changed since (written again, the disk writable again): another's to take up
        return False

    def held(self, cid: str) -> set[int]:
        return self._held.get(cid, set())

    def adopt_all(self, cid: str) -> None:
        """Take up every piece of ``cid`` the other workers stored: the have-set of the whole directory (an edge's /status)."""
        if self.worker is None or cid not in self._manifests:
            return
        with contextlib.suppress(OSError), os.scandir(self.content_dir / cid) as entries:
            for entry in entries:
                index = ascii_decimal(entry.name.removesuffix(".piece")) if entry.name.endswith(".piece") else None
                if index is not None:
                    self.adopt(cid, index)

    def piece_path(self, cid: str, index: int) -> str:
        """A plain string: pathlib's joins were a tenth of a cache hit's CPU time."""
        return f"{self._content_prefix}{cid}/{index}.piece"

    def put_piece(self, cid: str, index: int, data: bytes) -> None:
        """Verify and store one piece; raises CorruptPiece (and stores nothing) on a mismatch."""
        signed = self._manifests.get(cid)
        if signed is None:
            raise KeyError(f"no manifest for content {cid}")
        if not signed.manifest.check_piece(index, data):
            raise CorruptPiece(f"piece {index} of {signed.manifest.path} does not match its signed hash")
        if index in self._held[cid]:
            return
        if cid in self._unsaved:
            self._save_manifest(cid, self._raw[cid])
        path = self.piece_path(cid, index)
        try:
            try:
                self._write(path, data, marked=True, gone_ok=True)
            except _DirectoryGone:  # another worker dropped the content's directory (bare there): made again, as a disk
                self._save_manifest(cid, self._raw[cid])  # that fails would not be (logged as one, it stopped read-ahead)
                self._write(path, data, marked=True)
        except PieceNotStored as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # the content's directory went (or a file took its place)
                self._unsaved.add(cid)  # made again, with its manifest, before the next piece
            raise
        self._held[cid].add(index)
        self._bare.pop(cid, None)
        self._shrink(len(data))
        for victim in self.policy.add((cid, index), len(data)):
            self._delete_piece(*victim)

    def _shrink(self, written: int) -> None:
        """A restarted worker's quota, above its share by what it found at start, loses as much as it writes, down to
        its share: kept at the whole --max-cache, its new pieces came on top of the other workers' shares for good, N x
        --max-cache on disk once every worker had restarted (an adversarial session)."""
        capacity = self.policy.capacity
        if self.share is not None and capacity is not None and capacity > self.share:
            self.policy.capacity = max(self.share, capacity - written)

    def _save_manifest(self, cid: str, raw: bytes) -> None:
        """A content's directory and manifest on disk, before any of its pieces: without it they would be dropped at start.

        Out of inodes, read-only, or a file in the way, that is a write that failed (PieceNotStored), tried
        again with the content's next piece.
        """
        cdir = self.content_dir / cid
        self._unsaved.add(cid)
        try:
            cdir.mkdir(parents=True, exist_ok=True)  # parents: the contents directory itself may have been removed under us
        except OSError as exc:
            raise self._not_stored(cdir, exc) from None
        try:
            self._write(cdir / "manifest.json", raw)
        except PieceNotStored:
            # left empty, it was an inode for good, for every content asked for while the disk was full, and every worker
            # read it at each scan (an adversarial session); not empty (pieces, another's write): it stays
            with contextlib.suppress(OSError):
                cdir.rmdir()
            raise
        self._unsaved.discard(cid)

    def _not_stored(self, path: str | Path, exc: OSError) -> PieceNotStored:
        """The failure of a write, logged once per episode of failing writes (a full disk fails every one of them)."""
        if self.write_error is None:
            log.warning("piece store %s: cannot write (%s); nothing is cached until writes succeed again", self.root, exc.strerror or exc)
        self.write_error = str(exc.strerror or exc)
        self._write_failed = time.monotonic()
        self.write_failures += 1
        return PieceNotStored(exc.errno, f"cannot store {path}: {exc.strerror or exc}")

    def _write(self, path: str | Path, data: bytes, marked: bool = False, gone_ok: bool = False) -> None:
        """Write to a temporary file (``marked``: with the mark of checked bytes) and rename it into place; on any
        failure remove it and raise PieceNotStored (``gone_ok``: _DirectoryGone, uncounted, if its directory is gone)."""
        tmp = f"{path}.{os.getpid()}.tmp"  # one writer's own: another worker may be storing the same piece
        try:
            with self._retrying(lambda: open(tmp, "wb"), tmp) as f:
                f.write(data)
            if marked:  # once written and closed: the buffer's last write would move it again
                self._mark(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if gone_ok and exc.errno == errno.ENOENT:
                raise _DirectoryGone from None
            raise self._not_stored(path, exc) from None
        if self.write_error is not None and time.monotonic() - self._write_failed >= WRITES_GOOD_S:
            log.info("piece store %s: writes succeed again", self.root)
            self.write_error = None

    def piece_fd(self, cid: str, index: int) -> int | None:
        """A descriptor for a held piece (counted as a hit), or None if it is not held.

        Descriptors are kept open, up to ``open_files`` of them, as nginx's
        open_file_cache does: open() was the largest cost of a cache hit.  The
        store owns them - callers use pread/sendfile with explicit offsets and
        never close them, nor keep them across an await (another request may
        close it meanwhile and the number go to another file).  A piece found
        on disk at start is read back and checked the first time it is
        opened; a bad one is dropped (None).  So is one whose size is not its
        piece's, and one written since it was last known good (its mtime is
        not ``good_mtime``, the mark) is read back and checked again: either went out
        as it was, until a restart, to clients who cannot check pieces
        (players, curl).  The one fstat a hit costs tells both.  OutOfDescriptors (a 503) if the
        process has no descriptor left for it, even after closing cached ones.
        """
        if index not in self._held.get(cid, ()) and not self.adopt(cid, index):
            return None
        key = (cid, index)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # unlinked under us: another worker evicted (or rewrote) it (close_unlinked)
                self._close(cid, index)
                fd = None
        if fd is None:
            fd = self._open(cid, index)
            if fd is None:
                return None
            st = os.fstat(fd)
        length = self._manifests[cid].manifest.piece_span(index)[1]
        problem = f"is {st.st_size} of its {length} bytes" if st.st_size != length else None
        if problem is None and self.good_mtime is not None and st.st_mtime_ns != self.good_mtime:
            problem = self._check(cid, index, fd)
        if problem:  # cut short, grown or rewritten under us
            self._close(cid, index)
            self._drop(cid, index, problem)
            return None
        self.policy.hit(key)
        return fd

    def _open(self, cid: str, index: int) -> int | None:
        """Open a held piece and keep its descriptor; one found on disk at start is checked against its manifest first."""
        key = (cid, index)
        path = self.piece_path(cid, index)
        try:
            fd = self._retrying(lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC), path)
        except FileNotFoundError:
            self._drop(cid, index, None)
            return None
        except OSError as exc:
            if exc.errno in OUT_OF_FDS:
                raise OutOfDescriptors(path) from None
            raise
        if key in self._unverified:
            problem = self._check(cid, index, fd)
            self._unverified.discard(key)
            if problem:
                os.close(fd)
                self._drop(cid, index, problem)
                return None
        self._fds[key] = fd
        if len(self._fds) > self.open_files:
            os.close(self._fds.pop(next(iter(self._fds))))
        return fd

    def _retrying(self, opener: Callable[[], T], path: str) -> T:
        """``opener()``, and once more after closing the older half of the cached descriptors if the process is out of them.

        The cache is only a cache: a piece it no longer holds open is reopened
        on its next hit, while a failed open would fail a download (and a full
        file table stops accept() too).
        """
        try:
            return opener()
        except OSError as exc:
            if exc.errno not in OUT_OF_FDS:
                raise
        closed = self.shed_descriptors()
        try:
            result = opener()
        except OSError as exc:
            self._short_of_fds(closed, f"{path} still could not be opened ({exc.strerror or exc})")
            raise
        self._short_of_fds(closed, None)
        return result

    def _short_of_fds(self, closed: int, failure: str | None) -> None:
        """Count a shortage of descriptors; one line says so, at most once a FDS_LOG_INTERVAL, however often it recurs."""
        self.fd_shortages += 1
        now = time.monotonic()
        if now - self._fds_logged < FDS_LOG_INTERVAL:
            self._fds_unlogged += 1
            return
        since = f" ({self._fds_unlogged} more times since the last such line)" if self._fds_unlogged else ""
        self._fds_logged, self._fds_unlogged = now, 0
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        log.warning(
            "piece store %s: out of file descriptors (open-file limit %s): closed %d cached piece files, %s%s",
            self.root,
            "unlimited" if limit == resource.RLIM_INFINITY else limit,
            closed,
            f"and {failure}: given up" if failure else "and retried",
            since,
        )

    def shed_descriptors(self) -> int:
        """Close the least recently used half of the cached piece descriptors (at least one); how many were closed."""
        count = (len(self._fds) + 1) // 2
        for _ in range(count):
            os.close(self._fds.popitem(last=False)[1])
        return count

    def _check(self, cid: str, index: int, fd: int) -> str | None:
        """What is wrong with a piece on disk, or None if it matches its signed hash (and then its file says so:
        ``_mark``)."""
        m = self._manifests[cid].manifest
        try:
            data = os.pread(fd, m.piece_span(index)[1], 0)
        except OSError as exc:
            return f"is unreadable ({exc.strerror or exc})"
        if not m.check_piece(index, data):
            return "does not match its signed hash"
        self._mark(fd)
        return None

    def _mark(self, file: int | str) -> None:
        """Mark a piece file's bytes as checked (its mtime), where the file system keeps the mark (``good_mtime``)."""
        if self.good_mtime is not None:
            with contextlib.suppress(OSError):  # not marked: checked again at its next hit, which costs time, not safety
                os.utime(file, ns=(time.time_ns(), GOOD_MTIME_NS))

    def _drop(self, cid: str, index: int, problem: str | None) -> None:
        """Forget a piece that is gone or bad on disk: the have-set shrinks, and it is fetched again when wanted."""
        self._unverified.discard((cid, index))
        self._held[cid].discard(index)
        self.policy.remove((cid, index))
        if problem:
            log.warning("piece %d of %s %s on disk: dropped, to be fetched again", index, self._manifests[cid].manifest.path, problem)
            self.corrupt_pieces += 1
            self._remove_bad(cid, index)

    def _remove_bad(self, cid: str, index: int) -> None:
        """Delete a bad piece's file.  One that cannot be (a read-only disk) is a write that failed (said once per
        episode), and is remembered by its inode and ctime: with workers, the next lookup took it up again as stored by
        another worker, checked, dropped and warned about it, three times a request for good (an adversarial session)."""
        path = self.piece_path(cid, index)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                self._bad[(cid, index)] = (st.st_ino, st.st_ctime_ns)
            self._not_stored(path, exc)

    def verify_held(self, cid: str) -> set[int]:
        """Check the held pieces of ``cid`` not yet checked since start, dropping bad ones; the pieces left."""
        for index in sorted(self.held(cid)):
            if (cid, index) in self._unverified and (cid, index) not in self._fds:
                self._open(cid, index)
        return self.held(cid)

    def read_piece(self, cid: str, index: int) -> bytes | None:
        fd = self.piece_fd(cid, index)
        if fd is None:
            return None
        length = self._manifests[cid].manifest.piece_span(index)[1]
        data = os.pread(fd, length, 0)
        if len(data) < length:  # cut short since piece_fd looked: dropped, to be fetched again
            self._close(cid, index)
            self._drop(cid, index, f"came up {length - len(data)} bytes short")
            return None
        return data

    def close_unlinked(self) -> int:
        """Close the kept descriptors of pieces another worker evicted (their files have no link left): held open,
        their bytes stayed on disk, out of ``du`` and of every worker's count (49 MB against an 8 MiB --max-cache after
        25 minutes: an adversarial session).  A fstat each; a worker's edge calls it every UNLINKED_SWEEP_S."""
        unlinked = [k for k, fd in self._fds.items() if os.fstat(fd).st_nlink == 0]
        for key in unlinked:
            self._close(*key)
        return len(unlinked)

    def _close(self, cid: str, index: int) -> None:
        fd = self._fds.pop((cid, index), None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _delete_piece(self, cid: str, index: int) -> None:
        self._close(cid, index)
        self._unverified.discard((cid, index))
        held = self._held.get(cid)
        if held is not None:
            held.discard(index)
        self.evicted_pieces += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.piece_path(cid, index))
        if held is not None and not held:
            self._bared(cid)

    def used(self, cid: str) -> None:
        """A request reads ``cid``: if it is bare, it is bare from now, the last in line for the bound (MAX_BARE).

        A content read again was the longest bare one, and so the first
        dropped: an edge past MAX_BARE under a small --max-cache dropped the
        manifests of files being served, and answered 502 "withdrawn while
        being fetched", after the 200's head for some (an adversarial
        session)."""
        if cid in self._bare:
            self._bare[cid] = time.monotonic()
            self._bare.move_to_end(cid)

    def _bared(self, cid: str) -> None:
        """``cid`` holds no piece now: at the end of the bare ones, and the longest bare past MAX_BARE go (not within
        BARE_GRACE, nor pinned ones).  With workers, one whose directory holds another's pieces is taken up instead."""
        now = time.monotonic()
        self._bare[cid] = now
        self._bare.move_to_end(cid)
        for _ in range(BARE_DROPS):  # a few a call: a cache that had piled up many drains as it is used, never in one go
            if len(self._bare) <= MAX_BARE:
                break
            oldest, since = next(iter(self._bare.items()))
            if now - since < BARE_GRACE:
                break
            del self._bare[oldest]
            if oldest not in self.pinned and not self._pieces_on_disk(oldest):
                self.drop_content(oldest)

    def _pieces_on_disk(self, cid: str) -> bool:
        """With workers, whether another one stored pieces of ``cid`` (taken up here if so); alone, never."""
        if self.worker is None:
            return False
        self.adopt_all(cid)
        return bool(self._held.get(cid))

    def read_ahead(self, pieces: int, piece_size: int) -> int:
        """How many of ``pieces`` (of ``piece_size`` bytes) a read fetches ahead of the one it sends.

        None while writes fail, as a peer's swarm fetches only what readers
        wait for (policy/engine.py).  A piece fetched ahead that cannot be
        stored is held in memory until its reader comes to it: an edge whose
        disk was full held 12 MiB for each slow reader (an adversarial
        session), and a few hundred took a small VM to its OOM killer.  At
        most half the pieces the quota keeps, as a peer's window (engine.py,
        ``room``): an edge under a small --max-cache evicted pieces fetched
        ahead before its reader came to them, and fetched them again, more
        from its parent than it served (an adversarial session).
        """
        if self.write_problem():  # as long as /status says so: a worker storing nothing meanwhile (its siblings did)
            return 0  # kept read-ahead off for good after the disk recovered (a review)
        capacity = self.capacity
        return pieces if capacity is None else min(pieces, capacity // piece_size // 2)

    def write_problem(self) -> dict[str, str]:
        """What a node's /status says while writes fail (a full or read-only disk), else nothing: a node that caches
        nothing said so in one log line only, and looked healthy while every miss went upstream (adversarial sessions).
        Only for WRITE_PROBLEM_S after the last failed write: an edge's worker that stores nothing meanwhile (another
        one did) would say it for good after the disk recovered (a review)."""
        why = self.write_error
        if why is None or time.monotonic() - self._write_failed > WRITE_PROBLEM_S:
            return {}
        return {"cache_error": f"{why}: nothing is cached until writes succeed again"}

    @property
    def capacity(self) -> int | None:
        """Bytes this store keeps at most (its share of --max-cache), None for no limit."""
        return self.policy.capacity

    @property
    def used_bytes(self) -> int:
        return self.policy.used

    def contents(self) -> Iterator[SignedManifest]:
        return iter(self._manifests.values())

    def listed(self, limit: int | None) -> dict[str, object]:
        """What a node's /status says of its cache: how many contents, and the first ``limit`` by path (every one for
        None, no list for 0), each with the pieces it holds; a worker takes up what the others stored first."""
        cached = list(self._manifests.values())
        listed: dict[str, object] = {"content_count": len(cached)}
        if limit == 0:
            return listed
        first = cached if limit is None else heapq.nsmallest(limit, cached, key=lambda c: c.manifest.path)
        rows = []
        for signed in sorted(first, key=lambda c: c.manifest.path):
            cid, m = signed.content_id, signed.manifest
            self.adopt_all(cid)
            rows.append({"path": m.path, "id": cid, "pieces": m.piece_count, "held": len(self.held(cid))})
        listed["contents"] = rows
        return listed


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeswarm.store.piecestore CACHE``: check a stopped node's whole cache now, rather than piece by piece on first read.

    Bad pieces are dropped as a node would drop them.  Prints what the check
    cost, the figure behind lazy checking (docs/operations.md).
    """
    import sys
    import time

    from edgeswarm.trust.signing import KeyFileError, load_public_key

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgeswarm.store.piecestore CACHE_DIR", file=sys.stderr)
        return 2
    root = Path(args[0])
    try:
        key = load_public_key((root / "origin.pub").read_bytes(), f"{root}/origin.pub")
    except (OSError, KeyFileError) as exc:
        print(f"piecestore: no pinned origin key in {root}: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from edgeswarm.store import cachelock  # here: it imports this module

    try:  # a running node's cache is refused, as a second node is: the check deleted a live worker's piece in flight
        with cachelock.held(root, "piecestore check"):  # (docs/operations.md, run on a live edge: an adversarial session)
            started = time.perf_counter()
            store = PieceStore(root, key)
            opened = time.perf_counter()
            pieces = sum(len(store.verify_held(signed.content_id)) for signed in list(store.contents()))
            checked = time.perf_counter()
            store.close()
    except CacheError as exc:
        print(f"piecestore: {exc}", file=sys.stderr)
        return 2
    mb = store.used_bytes / 1e6
    print(
        f"{root}: opened in {opened - started:.3f} s; {pieces} good pieces ({mb:.0f} MB), {store.corrupt_pieces} bad ones dropped, "
        f"checked in {checked - opened:.2f} s ({mb / max(checked - opened, 1e-9):.0f} MB/s)"
    )
    return 0


def _entries(cdir: Path) -> list[os.DirEntry]:
    """A content directory's entries at start; none if another worker removed it meanwhile (its last piece evicted)."""
    try:
        with os.scandir(cdir) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _remove(entry: os.DirEntry) -> None:
    """A damaged piece's path, whatever it is: a directory there failed every start with "Is a directory"."""
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)


if __name__ == "__main__":
    raise SystemExit(main())
