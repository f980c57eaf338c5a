"""The origin's catalogue: which files are published, and their signed manifests.

The published directory is scanned every second or so; a file that is new or
whose (size, mtime, inode) changed is hashed again in a worker thread, and
one that vanished is withdrawn.  Manifests are kept in a state file, so a
restart re-hashes nothing that did not change: a snapshot, and a journal of
the changes since, which a save appends to (O(what changed), not the whole
catalogue: a live stream changes it at every segment).  Request paths are looked up
here and never joined to the directory, which is what keeps ``..`` and
symlink tricks from reaching a byte outside it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeswarm.errors import EdgeswarmError
from edgeswarm.policy.live import is_playlist, is_segment
from edgeswarm.policy.recent import Recent
from edgeswarm.protocol import hls, jsondoc
from edgeswarm.protocol.httpspec import content_type
from edgeswarm.protocol.manifest import MAX_FILE, Manifest, ManifestError, SignedManifest, hash_pieces, piece_size_for
from edgeswarm.protocol.paths import MAX_SEGMENTS, path_problem, publish_problem, reserved_segment
from edgeswarm.trust.protect import cipher_for, is_protected, new_protection
from edgeswarm.trust.signing import key_fingerprint
from edgeswarm.wholefile import write_whole

log = logging.getLogger(__name__)

StatKey = tuple[int, int, int]  # size, mtime_ns, inode
_Found = tuple[str, Path, os.stat_result, Manifest | None]  # a file to hash: path, full path, stat, the version it replaces
KEPT_PLAYLIST = 1 << 20  # a playlist up to this size is kept in memory as signed, and its superseded versions a while
SUPERSEDED_KEPT = 8  # superseded playlist versions still served by id: a node that was handed one can fetch its bytes
FLOORS_KEPT = 100_000  # paths whose last version is remembered after it left the catalogue (see Catalog._floor)
PARTIAL = ".tmp"  # a writer's name for a file not yet complete (ffmpeg's hls temp_file): renamed when done
AHEAD = "/floors"  # the state file's row of floors ahead of the clock (Catalog._write_state): no published path starts with /
JOURNAL = "/journal"  # the snapshot's row naming its journal, and that journal's first line (Catalog._write_state)
JOURNAL_MIN = 1 << 20  # bytes of journal before the state is written whole again (or the snapshot's size, if larger)
HASH_NOTICE = 1 << 30  # bytes from which a file's hashing is logged as it begins: it takes seconds a GiB
LOCKED_HASH = 64 << 20  # bytes a full scan hashes at most while it holds the catalogue (a file new since its prepare)
QUEUED_HASH = HASH_NOTICE  # bytes from which a file is hashed in a queue of its own, beside the scan's rounds (scan)
UNFINISHED_GRACE = 2.0  # seconds a rewritten playlist that looks half-written is held back before it is published anyway


def _published(before: Entry | None, entry: Entry) -> str:
    """What a scan did to a path, as its log line says: a file hashed again to the same version (a mirror's copy made
    with ``cp -a``, whose inodes differ) was logged "republished", as if it had changed (a newcomer's walk through README)."""
    if before is None:
        return "published"
    return "republished" if before.signed.content_id != entry.signed.content_id else "hashed again, unchanged:"


@dataclass(frozen=True)
class Entry:
    file: Path
    stat: StatKey
    signed: SignedManifest
    raw: bytes  # the signed manifest as served
    key: bytes | None = None  # a protected file's content key: released only to token holders
    data: bytes | None = None  # a live playlist's bytes as signed: served from memory, as the file is rewritten at every segment

    @functools.cached_property
    def row(self) -> str:
        """This entry as the state file saves it (JSON), made once: a save wrote every entry anew, parsing each signed
        manifest again to do so (a quarter of a second of the origin's loop at 20 000 files, on each live playlist
        version: an adversarial session)."""
        key = f',"key":"{self.key.hex()}"' if self.key else ""
        return f'{{"stat":{json.dumps(list(self.stat))},"signed":{self.raw.decode()}{key}}}'

    def unchanged(self) -> bool:
        """Whether the file on disk is still the one hashed (same size, mtime and inode), as a scan would judge it."""
        try:
            return _stat_key(self.file.stat()) == self.stat
        except OSError:
            return False


Changes = dict[str, Entry | None]  # new entries by path, or None to withdraw


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _modified(key: StatKey) -> int:
    """A first version's ``modified``: the file's mtime in seconds (one before 1970 is no valid ``modified``: now)."""
    return max(0, key[1] // 1_000_000_000) or int(time.time())


def _moved(known: Mapping[str, Entry], found: Mapping[str, tuple[Path, os.stat_result]]) -> dict[StatKey, Entry]:
    """The entries of ``known`` whose file is no longer at their path, by their stat: a file found under another path
    with one of these stats (size, mtime and inode: a rename keeps them) is that file, moved."""
    return {entry.stat: entry for rel, entry in known.items() if rel not in found or _stat_key(found[rel][1]) != entry.stat}


def _read_whole(full: Path) -> tuple[bytes, StatKey]:
    """A small file's bytes and its stat key as read (one open, so the two belong together)."""
    with open(full, "rb") as f:
        data = f.read(KEPT_PLAYLIST + 1)
        return data, _stat_key(os.fstat(f.fileno()))


def _parsed(line: bytes) -> dict:
    """One journal line's object; empty if it is not one (cut by a crash)."""
    try:
        doc = jsondoc.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _document(rows: list[str], floors: Mapping[str, float]) -> str:
    """The JSON object of ``rows`` (each ``"path":row``, encoded) and of ``floors`` under ``AHEAD`` if any: a snapshot,
    or a journal line."""
    if floors:
        rows.append(f"{json.dumps(AHEAD)}:{json.dumps(floors)}")
    return "{" + ",".join(rows) + "}"


class _Stopped(EdgeswarmError):
    """The origin is stopping, or the file is no longer the one being read: a hash under way gives up between two
    pieces (the next start, or scan, hashes what is there then)."""


def _watched(
    transform: Callable[[bytes, int], bytes] | None, stopping: threading.Event, full: Path, key: StatKey
) -> Callable[[bytes, int], bytes]:
    """``transform`` for hash_pieces (or none), checking before each piece that the origin is not ``stopping`` and
    that ``full`` is still the file being read, as it was (``key``): a file deleted or replaced 1 s into the hash of
    its 6 GiB was read to its end, the next file waiting 9-17 s, and a file being copied in was read whole at every
    scan, 6.9 GiB read for 768 MiB copied (adversarial sessions)."""

    def piece(data: bytes, offset: int) -> bytes:
        if stopping.is_set():
            raise _Stopped
        try:
            if _stat_key(os.stat(full)) != key:
                raise _Stopped
        except FileNotFoundError:
            raise _Stopped from None
        return transform(data, offset) if transform is not None else data

    return piece


class Catalog:
    def __init__(self, root: Path, state_file: Path, key: Ed25519PrivateKey, protect: list[str] | None = None, new_key: bool = True):
        """``new_key``: the signing key was made at this start, so no node holds a version of these files; with an old
        key and no state (lost, unreadable), nodes may hold versions this catalogue cannot know (``_floor_of``)."""
        self.root = root.resolve()
        self.state_file = state_file
        self.key = key
        self.protect = list(protect or [])
        self.by_path: dict[str, Entry] = {}
        self.generation = 0  # raised by every change of by_path: what was derived from it (a user's usage) is stale
        self.by_id: dict[str, Entry] = {}
        self.superseded: Recent[str, Entry] = Recent(SUPERSEDED_KEPT)  # recent playlist versions by id, served from memory
        # path -> (when ``recheck`` withdrew it, the content id withdrawn), until a scan publishes it again
        self.republishing: dict[str, tuple[float, str]] = {}
        self.hashed_bytes = 0
        self.hashing_s = 0.0  # seconds spent hashing since start: a scan's cost less this is its walk (scanpace.py)
        self.walk_cpu_s = 0.0  # CPU seconds spent walking the folder since start: what the scan pace keeps to a share
        # prepare's walk when it found nothing to hash, and the catalogue it compared it with
        self._walked: tuple[dict[str, Entry], dict[str, tuple[Path, os.stat_result]]] | None = None
        self._skipped: dict[str, str] = {}  # path -> why it is not published, as last warned (see _skip)
        self._skipped_now: set[str] = set()  # the paths the scan under way skipped: the others leave _skipped after it
        self._unfinished: dict[str, float] = {}  # playlist -> since when its new versions look half-written (_half_written)
        self._tally = threading.Lock()  # the two above and the counters: a scan's rounds run beside prepare_large's thread
        self._unsaved = False  # the last write of the state file failed (and was warned about)
        self.journal_file = state_file.with_suffix(".journal")  # the changes since the snapshot (module docstring)
        self._journal: int | None = None  # the journal's number, as the snapshot names it; None: write a snapshot
        self._journal_room = 0  # bytes the journal may still grow before the next snapshot
        self._journaled = False  # the journal holds changes the snapshot lacks (fold)
        self._changing = asyncio.Lock()  # see change: one writer of the published folder's catalogue at a time
        # path -> (the manifest it replaces, its entry), hashed by ``scan`` before it takes the lock (``_refresh``)
        self._prepared: dict[str, tuple[Manifest | None, Entry]] = {}
        self._hashing_said: set[str] = set()  # large files whose hashing was logged and that are not published yet
        # set when the origin stops: a scan's thread hashing a large file gave up only at its end (a 6 GiB file kept a
        # stopped origin's process alive for 4-19 s, its port already closed)
        self.stopping = threading.Event()
        # path -> the ``modified`` of a version nodes may hold that the catalogue no longer has (withdrawn, re-hashed, or
        # a saved one not reused): the next version of the path comes after it (``_floor_of``)
        self._floor: Recent[str, int] = Recent(FLOORS_KEPT)
        self._history_lost = False  # the saved state was missing or unreadable although the key is old
        self._load_state(new_key)

    def _load_state(self, new_key: bool) -> None:
        """Reuse manifests of the previous run; re-sign them if the key changed."""
        self._history_lost = not new_key
        try:
            text = self.state_file.read_bytes()
            state = jsondoc.loads(text)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable catalogue state %s: %s", self.state_file, exc)
            return
        if not isinstance(state, dict):
            log.warning("ignoring unreadable catalogue state %s: not a JSON object", self.state_file)
            return
        self._history_lost = False
        self._replay(state, len(text))
        ahead = state.pop(AHEAD, None)
        if isinstance(ahead, dict):
            self._floor.update((rel, m) for rel, m in ahead.items() if isinstance(rel, str) and type(m) is int)
        public = self.key.public_key()  # once: every row's signature is checked against it
        resigned = 0
        for rel, row in state.items():
            try:
                resigned += self._load_row(rel, row, public)
            except (KeyError, TypeError, ValueError):  # a damaged row: published afresh, later than any version it held
                self._floor[rel] = int(time.time()) - 1
        if resigned:  # a mistyped --key made a new key with one INFO line, and every edge then refused what changed
            log.warning(
                "%d saved manifests were signed with another key than this start's (%s, %s): signed again with it. If the "
                "key was not replaced on purpose, stop and give the origin its old key; else every edge needs the new "
                "public key (docs/operations.md, rotating the origin key)",
                resigned,
                "made at this start" if new_key else "an existing key file",
                key_fingerprint(public),
            )

    def _replay(self, state: dict, snapshot_bytes: int) -> None:
        """Apply to the loaded snapshot ``state`` the journal it names, and append to that journal from now on.

        Another journal (one a snapshot was written after, its changes inside
        it) is not read; a line that does not parse (a crash mid-write) is
        skipped: the file it named is hashed again at the first scan."""
        number = state.pop(JOURNAL, None)
        try:
            lines = self.journal_file.read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning(
                "ignoring the catalogue journal %s: %s; what changed since the last snapshot is hashed again", self.journal_file, exc
            )
            return
        header = _parsed(lines[0])
        if type(number) is not int or header.get(JOURNAL) != number:
            return
        cut = False
        for line in filter(None, lines[1:]):
            change = _parsed(line)
            cut = cut or not change
            floors = change.pop(AHEAD, None)
            if isinstance(floors, dict):
                known = state.get(AHEAD)
                state[AHEAD] = {**(known if isinstance(known, dict) else {}), **floors}
            for rel, row in change.items():
                if row is None:
                    state.pop(rel, None)
                else:
                    state[rel] = row
        # after a line cut by a crash the next append would continue it, and be lost with it: a snapshot starts afresh
        self._journal = None if cut else number
        self._journaled = any(lines[1:])
        self._journal_room = max(JOURNAL_MIN, snapshot_bytes) - sum(len(line) + 1 for line in lines)

    def _load_row(self, rel: str, row: dict, public: Ed25519PublicKey) -> bool:
        """One path's saved version, reused if --protect and its key still fit it; whether it had to be signed again
        (another key signed it); KeyError, TypeError or ValueError if damaged."""
        resigned = False
        try:
            signed = SignedManifest.parse(json.dumps(row["signed"]).encode(), public)
        except ManifestError:
            signed = SignedManifest.sign(Manifest.from_dict(row["signed"]["manifest"]), self.key)  # ManifestError is a ValueError
            resigned = True
        size, mtime_ns, inode = (int(v) for v in row["stat"])  # StatKey's three
        try:
            key = bytes.fromhex(row["key"]) if isinstance(row.get("key"), str) else None
        except ValueError:
            key = None  # a damaged key: the check below republishes the file
        protection = signed.manifest.protection
        if (protection is not None) != is_protected(rel, self.protect) or (protection and not (key and protection.key_matches(key))):
            # --protect changed, or the key is lost: the next scan publishes it afresh, as a later version than
            # this one, which nodes hold (at the same ``modified`` they refused it and kept the plaintext copy)
            self._floor[rel] = signed.manifest.modified
            return resigned
        self._add(rel, Entry(self.root / rel, (size, mtime_ns, inode), signed, signed.to_json(), key))
        return resigned

    def _save_state(self, changes: Changes) -> None:
        """Save ``changes`` (applied): a journal line, or the whole state when the journal has grown to the snapshot's
        size (so a save costs O(what changed), amortised).  A failure (a full disk) is one warning until a save
        succeeds, not an error, and the next save writes the whole state (a line may have been cut).

        The state only spares a restart the hashing of what did not change,
        and a failure here came after the change was applied: it failed the
        upload that had just been published, and every scan with a traceback.
        Rewriting the whole state at each change wrote 9 MB at 20 000 files,
        25-46 ms of the origin's loop, at every segment of a live stream.
        """
        try:
            if self._journal is None or not self._append(changes):
                self._write_state()
        except OSError as exc:  # write_whole left the old state, and no temporary file
            if not self._unsaved:
                log.warning("cannot save the catalogue state %s: %s; a restart hashes again what changed since", self.state_file, exc)
            self._unsaved, self._journal = True, None
        else:
            self._unsaved = False

    def _append(self, changes: Changes) -> bool:
        """One journal line for ``changes`` (a withdrawn path's floor with it); False when the journal is full or gone."""
        withdrawn = {rel: self._floor[rel] for rel, e in changes.items() if e is None and rel in self._floor}
        line = (_document([f"{json.dumps(rel)}:{'null' if e is None else e.row}" for rel, e in changes.items()], withdrawn) + "\n").encode()
        if len(line) > self._journal_room:
            return False
        try:
            fd = os.open(self.journal_file, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)  # not created: a snapshot names it
        except FileNotFoundError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(line)
        self._journal_room -= len(line)
        self._journaled = True
        return True

    def fold(self) -> None:
        """A clean stop: the journal's changes go into a whole snapshot, so that the state file alone is the catalogue.

        A release from before the journal, rolled back onto a state it had
        changes in, read the older snapshot only: it signed a protected file
        again under a new content key, dated as the version nodes held, which
        they refused (502s until the file changed again: an adversarial
        session).  Nothing is written when the journal holds nothing and the
        last save succeeded; after a failed one (a full disk since freed), the
        state is written whole (a review)."""
        if not (self._journaled or self._unsaved):
            return
        try:
            self._write_state()
        except OSError as exc:  # write_whole left the old state, and the journal as it was
            kept = "the journal beside it keeps what changed" if not self._unsaved else "a restart hashes again what changed since"
            log.warning("cannot write the catalogue state %s whole at stop: %s; %s", self.state_file, exc, kept)
        else:
            self._unsaved = False

    def _write_state(self) -> None:
        """Every entry's row, and the floors still ahead of the clock (``AHEAD``): a playlist rewritten more than once
        a second dates each version a second after the last, ahead of the clock, and when its folder was emptied and
        the origin restarted, the next stream's versions (dated now) were older than what nodes held: they served the
        dead playlist on until the clock caught up (an adversarial session)."""
        now = time.time()
        number = time.time_ns()  # a new journal's: never one an earlier snapshot named
        rows = [f"{json.dumps(rel)}:{e.row}" for rel, e in self.by_path.items()]
        rows.append(f"{json.dumps(JOURNAL)}:{number}")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        snapshot = _document(rows, {rel: modified for rel, modified in self._floor.items() if modified > now}).encode()
        # mode: it holds content keys; no flush: it only spares a restart hashing.  The snapshot first: a crash before
        # the new journal leaves the old one, which the snapshot does not name (its changes are inside it)
        write_whole(self.state_file, snapshot, mode=0o600, flush=False)
        write_whole(self.journal_file, f'{{"{JOURNAL}":{number}}}\n'.encode(), mode=0o600, flush=False)
        self._journal, self._journal_room = number, max(JOURNAL_MIN, len(snapshot))
        self._journaled = False

    def _add(self, rel: str, entry: Entry) -> None:
        old = self.by_path.get(rel)
        if old is not None:
            self.by_id.pop(old.signed.content_id, None)
            if old.data is not None:  # a playlist version a node may have just been handed: its bytes stay a while
                self.superseded[old.signed.content_id] = old
        self.by_path[rel] = entry
        self.by_id[entry.signed.content_id] = entry
        self.republishing.pop(rel, None)
        self.generation += 1

    def _remove(self, rel: str) -> None:
        old = self.by_path.pop(rel, None)
        if old is not None:
            self.by_id.pop(old.signed.content_id, None)
            self.generation += 1
            self._floor[rel] = old.signed.manifest.modified

    # -- scanning (blocking: run in a thread) --------------------------------
    def _walk(self) -> dict[str, tuple[Path, os.stat_result]]:
        """Every publishable regular file under root, by relative path (its CPU time counted in ``walk_cpu_s``); the
        names it skips start this scan's ``_skipped_now`` afresh."""
        with self._tally:
            self._skipped_now = set()
        started = time.thread_time()
        try:
            return self._walked_now()
        finally:
            self.walk_cpu_s += time.thread_time() - started

    def _walked_now(self) -> dict[str, tuple[Path, os.stat_result]]:
        found: dict[str, tuple[Path, os.stat_result]] = {}
        for base, filenames in self._directories():
            for name in filenames:
                full = base / name
                rel = full.relative_to(self.root).as_posix()
                if _unseen(rel):
                    continue
                if not _utf8(rel):  # a name of another encoding (Latin-1): no URL names it, and it failed every scan
                    self._skip(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "its name is not UTF-8")
                    continue
                reason = _name_problem(rel)
                if reason is None and full.is_symlink():
                    reason = self._link_problem(full)
                try:
                    st = full.stat()
                except OSError:
                    continue
                if reason is None and not os.path.isfile(full):
                    continue
                if reason:
                    self._skip(rel, reason)
                    continue
                found[rel] = (full, st)
        return found

    def _directories(self) -> list[tuple[Path, list[str]]]:
        """Each visible directory under root (root included) with its file names, walked without recursion.

        os.walk recurses in Python 3.11, so a tree some thousand levels deep
        failed every scan with a RecursionError; and no file deeper than
        MAX_SEGMENTS could be published anyway, so the walk stops there.
        """
        out: list[tuple[Path, list[str]]] = []
        stack: list[tuple[Path, int]] = [(self.root, 1)]  # a directory, and the segments a file in it would have
        while stack:
            base, depth = stack.pop()
            for dirpath, dirnames, filenames in os.walk(base):  # one level: the subdirectories go on the stack
                out.append((Path(dirpath), filenames))
                for d in dirnames:
                    sub = Path(dirpath) / d
                    if d.startswith(".") or sub.is_symlink():  # hidden; or a symlink, which os.walk does not follow either
                        continue
                    if depth >= MAX_SEGMENTS:
                        self._skip(sub.relative_to(self.root).as_posix() + "/", f"deeper than {MAX_SEGMENTS} path segments")
                    else:
                        stack.append((sub, depth + 1))
                dirnames.clear()
        return out

    def _link_problem(self, link: Path) -> str | None:
        """Why a symlink in the folder is not published: a loop (it failed every scan, so nothing else was published),
        or a target out of the folder, hidden in it (one to .edgeswarm/origin.key published the origin's private
        signing key: a link publishes nothing a file in its target's place would not) or still being written (a
        ``.tmp``, an adversarial session)."""
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):  # a loop (RuntimeError on 3.11, OSError ELOOP later), or dangling
            return "it is a symlink loop, or to nothing"
        if not target.is_relative_to(self.root):
            return "it is a symlink out of the published directory"
        if _hidden(target.relative_to(self.root).as_posix()):
            return "it is a symlink to a hidden file (such as the origin's state)"
        if _unseen(target.relative_to(self.root).as_posix()):
            return f"it is a symlink to a file still being written (*{PARTIAL})"
        return None

    def _skip(self, rel: str, reason: str) -> None:
        """Warn about a path not published once per reason, not at every scan (one a second, for ever); a path that is
        published again (``_publish``) is warned about again the next time it fails."""
        with self._tally:
            self._skipped_now.add(rel)
            if self._skipped.get(rel) == reason:
                return
            self._skipped[rel] = reason
        log.warning("not publishing %.300s: %s", rel, reason)

    def scan_changes(self, known: dict[str, Entry], hash_up_to: int | None = None) -> dict[str, Entry | None]:
        """What differs between the directory and ``known``: new entries, or None to withdraw.

        Blocking (walks and hashes): run it in a thread and hand it a copy of
        ``by_path``; ``apply`` then changes the catalogue on the event loop.
        ``hash_up_to``: a larger file not ``prepare``d (new since) is left to
        the next scan, whose ``prepare`` hashes it without holding ``change``.
        """
        changes: dict[str, Entry | None] = {}
        walked, self._walked = self._walked, None
        found = walked[1] if walked is not None and walked[0] == known else None  # nothing published between
        if found is None:
            found = self._walk()
        for rel in known:
            if rel not in found:
                changes[rel] = None
        moved = _moved(known, found)
        for rel, (full, st) in found.items():
            self._refresh(rel, full, _stat_key(st), known, changes, hash_up_to, moved)
        # names this scan did not skip are gone (or fixed): every name ever refused stayed, for good (an adversarial
        # session: 2 200 entries with one file on disk)
        with self._tally:
            self._skipped = {rel: why for rel, why in self._skipped.items() if rel in self._skipped_now}
        return changes

    def _refresh(
        self,
        rel: str,
        full: Path,
        key: StatKey,
        known: dict[str, Entry],
        changes: dict[str, Entry | None],
        hash_up_to: int | None = None,
        moved: Mapping[StatKey, Entry] | None = None,
    ) -> None:
        """Hash and sign ``rel`` again into ``changes`` unless its stat says it is the version ``known`` holds; what
        ``prepare`` hashed of it is taken up if it is this version of the file, replacing the same one; a file
        ``moved`` here is not hashed at all if its hashes hold here (``_reused``)."""
        entry = known.get(rel)
        if entry is not None and entry.stat == key:
            return
        previous = entry.signed.manifest if entry else None
        prepared = self._prepared.pop(rel, None)
        # hashed against the version known now, or against one withdrawn since (a read found it replaced: ``recheck``),
        # which it comes after all the same: that hash was thrown away, and the file read again (an adversarial session)
        if prepared is not None and (prepared[0] is previous or previous is None) and prepared[1].stat == key:
            changes[rel] = prepared[1]
            return
        reused = self._reused(rel, full, key, previous, moved.get(key)) if moved else None
        if reused is not None:
            changes[rel] = reused
            return
        if hash_up_to is not None and key[0] > hash_up_to:  # the next scan's prepare hashes it (scan_changes)
            if rel in self._skipped:  # this scan's prepare could not read it either: still said, not said again (a review:
                self._skipped_now.add(rel)  # an unreadable file over 64 MiB was warned about at every scan, once a second)
            return
        fresh = self._publish(rel, full, key, previous)
        if fresh is not None:
            changes[rel] = fresh

    def prepare(self, known: dict[str, Entry]) -> list[_Found]:
        """Hash the files under ``QUEUED_HASH`` that are new or changed against ``known``, smallest first, for the next
        ``scan_changes`` to take up, and return the larger ones, for ``prepare_large``: blocking, and run outside
        ``change``, so that the live watcher and uploads are not held behind the hash of a large file (a 30 GiB file
        held a live playlist's next version 35 s: an adversarial session).  The scan under the lock walks again, and
        takes up only what still matches."""
        found = self._walk()
        self._hashing_said &= found.keys()
        small: list[_Found] = []
        large: list[_Found] = []
        moved = _moved(known, found)
        for rel, (full, st) in found.items():
            entry, key = known.get(rel), _stat_key(st)
            if entry is not None and entry.stat == key:
                continue
            previous = entry.signed.manifest if entry else None
            if (fresh := self._reused(rel, full, key, previous, moved.get(key))) is not None:
                self._prepared[rel] = (previous, fresh)  # not hashed: neither queued behind large files nor 404 meanwhile
            else:
                (large if st.st_size >= QUEUED_HASH else small).append((rel, full, st, previous))
        for rel, full, st, previous in sorted(small, key=lambda file: file[2].st_size):
            if (fresh := self._publish(rel, full, _stat_key(st), previous)) is not None:
                self._prepared[rel] = (previous, fresh)
        # nothing new (a folder at rest, most scans): the scan under the lock takes this walk up instead of walking
        # again a few milliseconds later; twice, the walk of 20 000 files paced scans to every 28-31 s (an adversarial
        # session).  Anything else: it walks again, for what changed while this hashed
        self._walked = (known, found) if not (small or large or self._prepared) else None
        return large

    def prepare_large(self, queue: _LargeFiles) -> None:
        """``prepare`` for the large files ``queue`` holds, smallest first, until it is empty: blocking, and run beside
        the rounds of ``scan`` that publish the rest and queue what else grew large (a new small file waited 3 minutes
        behind a 100 GiB one, another stop's note).  Each is looked at again as its turn comes: replaced, it was read
        whole against its old size, and thrown away; deleted, it was "unreadable"; a named pipe put in its place held
        the scan for good (an adversarial session)."""
        while not self.stopping.is_set() and (queued := queue.next()) is not None:
            rel, full, previous = queued
            try:
                st = full.stat()
            except OSError:
                continue  # gone: the next walk says why, if it is there
            if not stat.S_ISREG(st.st_mode) or st.st_size < QUEUED_HASH:
                continue  # no file to hash, or the rounds' own now
            if st.st_size <= MAX_FILE and rel not in self._hashing_said:  # else nothing said why it is not there
                log.info("hashing %.300s (%.1f GiB): published once hashed", rel, st.st_size / (1 << 30))
                self._hashing_said.add(rel)  # once: one still being copied in, or unreadable, is hashed at every scan
            if (fresh := self._publish(rel, full, _stat_key(st), previous)) is not None:
                self._prepared[rel] = (previous, fresh)
                self._hashing_said.discard(rel)

    async def scan(self, say: Callable[[str], None] | None = None, every: float = 1.0) -> list[str]:
        """A full scan, its hashing done first outside ``change`` (``prepare``); the log lines of what changed, each
        also ``say``-d as it happens.  While large files are hashed (``prepare_large``), a round every ``every``
        seconds publishes what else changed meanwhile and each large file once hashed, and queues large files new
        since (a 65 MiB file waited for the whole queue, a replaced film answered 503 as long: an adversarial
        session)."""
        started = time.monotonic()
        lines: list[str] = []
        queue, large = _LargeFiles(), None
        try:
            while True:
                queue.add(await asyncio.to_thread(self.prepare, dict(self.by_path)))
                if queue and (large is None or large.done()):
                    if large is not None:
                        await large  # its error, if any
                    large = asyncio.create_task(asyncio.to_thread(self.prepare_large, queue))
                hashing = large if large is not None and not large.done() else None  # once done: one more round takes them up
                _, new = await self.change(functools.partial(self.scan_changes, hash_up_to=LOCKED_HASH))
                for line in new:
                    if say is not None:
                        say(line)
                lines += new
                if hashing is None:
                    break
                await asyncio.wait({hashing}, timeout=every)
        finally:
            if large is not None:
                await _settled(large)
            self._prepared.clear()
            self._walked = None
        # withdrawn before this scan began and not published by it: gone, or unreadable (the walk said why)
        self.republishing = {rel: held for rel, held in self.republishing.items() if held[0] >= started}
        return lines

    def changes_for(self, rels: list[str], known: dict[str, Entry]) -> dict[str, Entry | None]:
        """``scan_changes`` for the named files only (a live playlist and its segments): no walk of the tree.

        Blocking (stats and hashes).  A file that is missing is left to the
        next full scan; one that changed is hashed again, in the order given,
        so a playlist named last is published after the segments it names.
        """
        changes: dict[str, Entry | None] = {}
        for rel in rels:
            # the walk's rules: a user's playlist naming ../../.edgeswarm/origin.key published the origin's private key
            if _unseen(rel) or _name_problem(rel):
                continue
            full = self.root / rel
            try:
                if full.is_symlink() or not full.is_file():
                    continue
                key = _stat_key(full.stat())
            except OSError:
                continue
            self._refresh(rel, full, key, known, changes)
        return changes

    async def change(self, work: Callable[[dict[str, Entry]], Changes]) -> tuple[Changes, list[str]]:
        """Run ``work`` (blocking: it hashes, and may move an upload into place) in a thread on a copy of ``by_path``,
        then ``apply`` what it returns: the changes and their log lines.

        The full scan, the live watcher and an upload all change the catalogue
        through here, one at a time, so none sees a file another is between
        placing and applying (an upload renamed into place was seen by the live
        watcher as a rewritten playlist, which published what it named), nor
        applies an older version of a file over a newer one.
        """
        async with self._changing:
            changes = await asyncio.to_thread(work, dict(self.by_path))
            return changes, self.apply(changes)

    def apply(self, changes: dict[str, Entry | None]) -> list[str]:
        """Make scan results visible; returns a log line per change."""
        lines = []
        for rel, entry in changes.items():
            if entry is None:
                self._remove(rel)
                lines.append(f"withdrew {rel}")
            else:
                lines.append(f"{_published(self.by_path.get(rel), entry)} {rel} ({entry.signed.manifest.size} bytes)")
                self._add(rel, entry)
        if changes:
            self._save_state(changes)
        return lines

    def _reused(self, rel: str, full: Path, key: StatKey, previous: Manifest | None, moved: Entry | None) -> Entry | None:
        """``rel``'s entry made of the one its file was published as under another path (``moved``, from ``_moved``)
        if its piece hashes hold here (``_moved_manifest``), with no read of the file; else None: hashed as any new
        file, a large one in the queue (a moved 4 GiB file hashed on the spot held the scan 4-10 s: a review)."""
        manifest = self._moved_manifest(rel, moved) if moved is not None else None
        if manifest is None:
            return None
        with self._tally:
            self._skipped.pop(rel, None)
        return self._signed(rel, full, key, manifest, previous)

    def _publish(self, rel: str, full: Path, key: StatKey, previous: Manifest | None = None) -> Entry | None:
        """Hash and sign one file; None if it changed while being read (next scan retries).

        ``previous`` is the version it replaces: a different new version gets
        a later ``modified`` even if the file's mtime is not later (a rewrite
        within the same second, an older file copied in), because nodes
        accept only manifests that move forward (manifestfetch.ManifestOrder).
        """
        if key[0] > MAX_FILE:  # no node would take its pieces: every edge answered 502 for it, blaming the origin
            self._skip(rel, f"its {key[0]} bytes are more than a file may have ({MAX_FILE} bytes, 512 GiB): split it")
            return None
        started = time.monotonic()
        try:
            return self._hash_and_sign(rel, full, key, previous)
        finally:
            with self._tally:
                self.hashing_s += time.monotonic() - started

    def _hash_and_sign(self, rel: str, full: Path, key: StatKey, previous: Manifest | None) -> Entry | None:
        piece_size = piece_size_for(key[0], segment=is_segment(rel))
        content_key, protection = new_protection() if is_protected(rel, self.protect) else (None, None)
        data = None
        try:
            if protection is None and is_playlist(rel) and key[0] <= KEPT_PLAYLIST:
                data, after = _read_whole(full)
                # the previous version is served meanwhile, the next poll or scan reads it again (not an upload's: staged
                # whole, and it would fail)
                if previous is not None and after == key and full == self.root / rel and self._half_written(rel, data):
                    return None
                pieces = tuple(hashlib.sha256(data[i : i + piece_size]).hexdigest() for i in range(0, len(data), piece_size))
            else:
                cipher = cipher_for(content_key, protection) if content_key is not None and protection is not None else None
                pieces = hash_pieces(full, piece_size, _watched(cipher, self.stopping, full, key))
                after = _stat_key(full.stat())
        except FileNotFoundError:
            return None  # deleted meanwhile: "cannot read it" said of a file no longer there
        except OSError as exc:  # unreadable (chmod 000): as any file not published, warned about once
            self._skip(rel, f"cannot read it: {exc.strerror or exc}")
            return None
        except _Stopped:
            return None
        if after != key:
            return None
        with self._tally:
            self._skipped.pop(rel, None)
            self.hashed_bytes += key[0]
        manifest = Manifest(
            path=rel,
            size=key[0],
            content_type=content_type(rel),
            piece_size=piece_size,
            pieces=pieces,
            modified=_modified(key),
            protection=protection,
        )
        return self._signed(rel, full, key, manifest, previous, content_key, data)

    def _moved_manifest(self, rel: str, moved: Entry) -> Manifest | None:
        """``moved``'s manifest as ``rel``'s, if its piece hashes hold there: the same piece size at this path (a media
        segment's are smaller), and neither path protected (a protected file's pieces are hashed encrypted under a key
        of its own) nor a playlist kept in memory.  Reorganising a library re-hashed every file moved, 5 GiB for
        one ``mv``, each new path 404 until its hash ended (an adversarial session)."""
        old = moved.signed.manifest
        if moved.key is not None or moved.data is not None or is_protected(rel, self.protect) or is_playlist(rel):
            return None
        if piece_size_for(old.size, segment=is_segment(rel)) != old.piece_size:
            return None
        return replace(old, path=rel, content_type=content_type(rel), modified=_modified(moved.stat))

    def _signed(
        self,
        rel: str,
        full: Path,
        key: StatKey,
        manifest: Manifest,
        previous: Manifest | None,
        content_key: bytes | None = None,
        data: bytes | None = None,
    ) -> Entry:
        """``manifest`` of ``rel`` dated to move forward past what nodes may hold of the path, signed: its entry."""
        protection = manifest.protection
        floor = self._floor_of(rel, protection is not None) if previous is None else None
        if floor is not None and manifest.modified <= floor:
            manifest = replace(manifest, modified=floor + 1)
        if previous is not None and manifest.modified <= previous.modified:
            same = replace(manifest, modified=previous.modified)  # the same bytes again: the same version
            manifest = same if same == previous else replace(manifest, modified=previous.modified + 1)
        signed = SignedManifest.sign(manifest, self.key)
        return Entry(full, key, signed, signed.to_json(), content_key, data)

    def _half_written(self, rel: str, data: bytes) -> bool:
        """Whether this new version of a published playlist looks half-written, and is held back (``_unfinished_why``).

        A packager that rewrites its playlist in place had versions cut
        mid-line published, an empty one or one naming ``s0003`` for
        ``s00031.ts``, 404s for every viewer's read-ahead (an adversarial
        session; ffmpeg renames a whole playlist into place).  Versions that
        keep looking so for ``UNFINISHED_GRACE`` seconds, whichever they are,
        are what their writer means: published, with a warning (counted per
        version, a playlist rewritten every second naming a file a cleanup job
        had deleted was held for good, the stream frozen: a review).
        """
        why = self._unfinished_why(rel, data)
        now = time.monotonic()
        with self._tally:
            if why is None:
                self._unfinished.pop(rel, None)
                return False
            since = self._unfinished.setdefault(rel, now)
            if now - since < UNFINISHED_GRACE:
                return True
        log.warning("publishing the new version of %.300s though %s: it stayed so %g s", rel, why, UNFINISHED_GRACE)
        return False

    def _unfinished_why(self, rel: str, data: bytes) -> str | None:
        """Why ``data`` looks like a playlist still being written: it does not end a line, does not parse, names a file
        that is not there, or names no segment where the version published does (one cut after its header)."""
        if not data.endswith(b"\n"):
            return "it does not end with a line break"
        try:
            playlist = hls.parse(data.decode("utf-8", "replace"), rel)
        except hls.PlaylistError as exc:
            return f"it is not a playlist ({exc})"
        missing = next((p for p in playlist.media_paths if p not in self.by_path and not (self.root / p).is_file()), None)
        if missing is not None:
            return f"it names {missing}, which is not there"
        published = self.by_path.get(rel)
        if not playlist.segments and published is not None and published.data and b"#EXTINF" in published.data:
            return "it names no segment, where the version published does"
        return None

    def _floor_of(self, rel: str, protected: bool) -> int | None:
        """The ``modified`` a first version of ``rel`` in this catalogue must pass, if nodes may hold a version of it.

        One it had (withdrawn, withdrawn to be hashed again, or saved and not
        reused: ``_floor``).  Without one, and with its history lost (no
        state, an old key), or for a protected file (its fresh content key
        makes any version a new one): whatever nodes hold was published before
        now.  Nodes take only later versions (manifestfetch.ManifestOrder): at
        the mtime, the new version tied with or fell behind theirs, which they
        served on for good (a protected one's key gone).
        """
        floor = self._floor.get(rel)
        if floor is None and (protected or self._history_lost):
            return int(time.time()) - 1
        return floor

    def check_placeable(self, rel: str) -> None:
        """OSError if no file can be placed at ``rel`` now: a directory there, a file where one of its folders should be,
        or a symlinked folder on the way out of the published directory.  Asked before an upload's body too: the
        origin read a whole body (every retry of it) before it said so (an adversarial session)."""
        target = self.root / rel
        if target.is_dir():
            raise IsADirectoryError(f"{rel} is a directory")
        for folder in target.relative_to(self.root).parents:
            if folder.parts and (self.root / folder).exists() and not (self.root / folder).is_dir():
                raise NotADirectoryError(f"{folder} is a file, not a folder")
        if not target.parent.resolve().is_relative_to(self.root):  # a symlinked directory on the way: before any mkdir
            raise PermissionError(f"{rel} would leave the published directory")

    def publish_staged(self, rel: str, staged: Path) -> Entry:
        """Sign a verified upload and move it into place as ``rel``; the entry to apply.  Blocking: run it as the work of
        ``change``, so that no scan sees the file placed and not yet applied.

        The manifest is made from the staged file, then the file is renamed
        (same inode, size and mtime, so the next scan finds it unchanged);
        across file systems it is copied to a hidden name beside the target
        first, so the published path only ever holds the whole file.
        OSError when ``rel`` cannot be a file (a directory in the way, or a
        file where a directory should be), ValueError when it is too deep or
        too long to publish (checked before any directory is made); the
        staged file is then left, and nothing in the published directory.
        """
        problem = publish_problem(rel)
        if problem is not None:
            raise ValueError(f"{rel[:200]} cannot be published: {problem}")
        target = self.root / rel
        self.check_placeable(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        previous = self.by_path.get(rel)
        entry = self._publish(rel, staged, _stat_key(staged.stat()), previous.signed.manifest if previous else None)
        if entry is None:
            raise OSError(f"the upload of {rel} changed while it was hashed")
        try:
            os.replace(staged, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            hidden = target.with_name(_hidden_name(target.name, "publishing"))
            try:
                shutil.copyfile(staged, hidden)
                os.replace(hidden, target)
            except OSError:  # a full disk: the partial copy stayed for good (the walk never sweeps a hidden file)
                hidden.unlink(missing_ok=True)
                raise
            staged.unlink()
        return replace(entry, file=target, stat=_stat_key(target.stat()))

    def recheck(self, rel: str, pending: bool = True) -> None:
        """A served piece did not match its hash: withdraw it until the next scan re-hashes it (``republishing``
        meanwhile, if a new version is ``pending``: a file replaced by a rename, as operations.md advises, was "not
        published" until then)."""
        old = self.by_path.get(rel)
        self._remove(rel)
        if old is not None and pending:
            self.republishing[rel] = (time.monotonic(), old.signed.content_id)


class _LargeFiles:
    """The large files a scan has yet to hash, smallest first, each version once (its path and stat): what a round
    finds that was queued, is being hashed, or was hashed and not yet taken up is not queued again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # rounds add on the event loop's thread; prepare_large takes on its own
        self._waiting: dict[str, tuple[Path, int, Manifest | None]] = {}
        self._queued: set[tuple[str, StatKey]] = set()

    def add(self, files: list[_Found]) -> None:
        with self._lock:
            for rel, full, st, previous in files:
                if (version := (rel, _stat_key(st))) not in self._queued:
                    self._queued.add(version)
                    self._waiting[rel] = (full, st.st_size, previous)

    def next(self) -> tuple[str, Path, Manifest | None] | None:
        with self._lock:
            if not self._waiting:
                return None
            rel = min(self._waiting, key=lambda r: self._waiting[r][1])
            full, _, previous = self._waiting.pop(rel)
            return rel, full, previous

    def __bool__(self) -> bool:
        return bool(self._waiting)


async def _settled(task: asyncio.Task) -> None:
    """Wait for ``task``'s end, even when cancelled meanwhile (a thread cannot be stopped: ``stopping`` makes it give
    up), so that no hash outlives its scan; its error, if any, is raised."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _unseen(rel: str) -> bool:
    """Skipped without a word, by the walk and for a playlist alike: hidden (the origin's state, uploads in progress),
    or still being written (ffmpeg's temp_file)."""
    return _hidden(rel) or rel.endswith(PARTIAL)


def _name_problem(rel: str) -> str | None:
    """Why a path may not be published (logged by the walk), or None."""
    reason = path_problem(rel) or publish_problem(rel)
    if reason is None and reserved_segment(rel) is not None:
        reason = "its first path segment is reserved for node endpoints"
    return reason


def _utf8(text: str) -> bool:
    """Whether a path as the file system gave it is UTF-8 (else Python holds its other bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hidden(rel: str) -> bool:
    """A path with a hidden segment (``.x``: the origin's state, users' uploads in progress): never published."""
    return any(segment.startswith(".") for segment in rel.split("/"))


def _hidden_name(name: str, what: str) -> str:
    """A hidden name beside ``name`` for a copy in progress, within NAME_MAX (255 bytes) whatever ``name``'s length:
    ``.NAME.publishing`` refused a 244-255-byte name after its whole upload ("File name too long", an adversarial
    session).  Its first 200 bytes, and a hash of the whole so that two long names sharing them do not meet."""
    raw = os.fsencode(name)
    return f".{raw[:200].decode(errors='ignore')}.{hashlib.sha256(raw).hexdigest()[:8]}.{what}"
