"""The origin's staging area for uploads: partial files kept in its state directory until whole and verified.

One unfinished upload per (user, path): ``<key>.part`` holds the bytes so far
and ``<key>.json`` what was declared (user, path, length, SHA-256).  A request
for the same path that declares another length or hash starts afresh.  Nothing
here is ever in the published directory: the origin renames a part into
place only once it is whole and its hash matches (Catalog.publish_staged), so
a refused or abandoned upload leaves nothing half-published.  Parts untouched
for ``ttl`` seconds are swept (the origin does so on a timer).

Each user's unfinished uploads are also indexed in memory, read from disk
once at start: the quota check of every request needs them, and reading the
declarations of every user's uploads each time made one user's abandoned
uploads slow everybody's.  Blocking file I/O: call from a thread, except
``pending`` and ``count``, which touch no disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeswarm.protocol import jsondoc
from edgeswarm.wholefile import write_whole

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20
STRAY_AGE = 60.0  # a part without its declaration (a crash between the two writes) goes after this long


@dataclass(frozen=True)
class Upload:
    """One unfinished upload: who, where to, what was declared, and its files."""

    user: str
    path: str
    length: int
    sha256: str
    part: Path

    @property
    def meta(self) -> Path:
        return self.part.with_suffix(".json")

    def offset(self) -> int:
        """Bytes held so far."""
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0


class Staging:
    def __init__(self, directory: Path, ttl: float = 86400.0):
        self.dir = directory
        self.ttl = ttl
        self._lock = threading.Lock()  # the index is changed from worker threads
        self._index: dict[str, dict[str, int]] = {}  # user -> path -> declared length, of the uploads on disk
        self._load_index()

    def _load_index(self) -> None:
        """Index the uploads a previous run left (once, at start: the only full read of the declarations)."""
        try:
            metas = list(self.dir.glob("*.json"))
        except OSError:
            return
        for meta in metas:
            held = self._read(meta)
            if held is not None:
                self._note(held.user, held.path, held.length)

    def _note(self, user: str, path: str, length: int) -> None:
        with self._lock:
            self._index.setdefault(user, {})[path] = length

    def _forget(self, user: str, path: str) -> None:
        with self._lock:
            held = self._index.get(user)
            if held is not None:
                held.pop(path, None)
                if not held:
                    del self._index[user]

    def _key(self, user: str, path: str) -> str:
        return hashlib.sha256(f"{user}\0{path}".encode()).hexdigest()[:40]

    def find(self, user: str, path: str) -> Upload | None:
        """The unfinished upload of ``path`` by ``user``, if any."""
        return self._read(self.dir / f"{self._key(user, path)}.json")

    @staticmethod
    def _read(meta: Path) -> Upload | None:
        """The upload a declaration describes, or None for one that is gone or damaged."""
        try:
            doc = jsondoc.loads(meta.read_text())
            return Upload(str(doc["user"]), str(doc["path"]), int(doc["length"]), str(doc["sha256"]), meta.with_suffix(".part"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def open(self, user: str, path: str, length: int, sha256: str, fresh: bool) -> Upload:
        """The upload to append to: the held one if it declared the same file and ``fresh`` is false, else a new empty one."""
        held = self.find(user, path)
        if held is not None and not fresh and held.length == length and held.sha256 == sha256:
            return held
        if held is not None:
            self.discard(held)
        self.dir.mkdir(parents=True, exist_ok=True)
        upload = Upload(user, path, length, sha256, self.dir / f"{self._key(user, path)}.part")
        declared = {"user": user, "path": path, "length": length, "sha256": sha256, "started": time.time()}
        try:
            upload.part.write_bytes(b"")
            write_whole(upload.meta, json.dumps(declared).encode(), flush=False)  # whole or absent, its temporary file gone
        except OSError:  # a full disk: every refused attempt left an empty part and declaration behind
            upload.part.unlink(missing_ok=True)
            raise
        self._note(user, path, length)
        return upload

    def pending(self, user: str) -> dict[str, int]:
        """The declared lengths of ``user``'s unfinished uploads, by path: what they reserve of the quota (from memory)."""
        with self._lock:
            return dict(self._index.get(user, {}))

    def count(self, user: str) -> int:
        """How many unfinished uploads ``user`` has (from memory)."""
        with self._lock:
            return len(self._index.get(user, {}))

    def discard(self, upload: Upload) -> None:
        """Forget an upload: its part and its declaration."""
        for f in (upload.part, upload.meta):
            f.unlink(missing_ok=True)
        self._forget(upload.user, upload.path)

    def _forget_meta(self, meta: Path) -> None:
        """Drop the upload a declaration names from the index (its files are going)."""
        held = self._read(meta)
        if held is not None:
            self._forget(held.user, held.path)

    @staticmethod
    def sha256(upload: Upload) -> str:
        """The SHA-256 of the bytes held."""
        h = hashlib.sha256()
        with open(upload.part, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def sweep(self, now: float | None = None) -> int:
        """Remove uploads untouched for ``ttl`` seconds, and strays (a part without its declaration); how many files went.

        It lists and stats the whole directory: run it on a timer, not per request.
        """
        now = time.time() if now is None else now
        groups: dict[str, list[tuple[Path, float]]] = {}
        try:
            for f in self.dir.iterdir():
                with contextlib.suppress(OSError):
                    groups.setdefault(f.name.split(".", 1)[0], []).append((f, f.stat().st_mtime))
        except OSError:
            return 0
        removed = 0
        for files in groups.values():
            newest = max(m for _, m in files)
            declared = any(f.suffix == ".json" for f, _ in files)
            if now - newest > (self.ttl if declared else STRAY_AGE):
                for f, _ in files:
                    if f.suffix == ".json":
                        self._forget_meta(f)
                    f.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("swept %d files of abandoned uploads from %s", removed, self.dir)
        return removed
