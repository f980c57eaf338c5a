"""Small files written whole or not at all: keys, ids, state and orders.

A write that a full disk or a crash cuts short must leave the old file, or
none, never a torn one: a first start on a full disk left an empty
``swarm.key`` and ``origin.key``, and every restart after it failed with
"not a PEM private key" until someone deleted them (an adversarial session).
So the bytes go to a temporary file beside the target, are flushed to disk
(unless the caller would rather not wait), and only then take the target's
name.  Pieces have a writer of their own
(piecestore.py), which keeps the same order without the flush.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path


def write_whole(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o644, exclusive: bool = False, flush: bool = True) -> bool:
    """Put ``data`` at ``path`` in one step; ``data`` may come in chunks, written as they come (a large file never
    whole in memory: the tracker's snapshot); ``exclusive``: only if nothing is there yet (False if another writer was
    first, whose file stays); ``flush``: on disk before it takes the name (not for a large file rewritten often that
    only spares work, such as the origin's catalogue state).  An OSError names ``path``; the temporary file never
    outlives the call."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # this process's own: workers may write the same file
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                f.writelines(data)
            if flush:
                f.flush()
                os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # unlike a rename, fails when the name is taken
        except FileExistsError:
            return False
        return True
    except OSError as exc:
        if exc.filename is None:  # a write's error names no file: "[Errno 28] No space left on device" alone
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):  # replaced: gone already
            os.unlink(tmp)


class SaidOnce:
    """A small state file written whole again and again, a failed write (a full disk) warned about once until one
    succeeds: a line per write was a line per torrent handed out, per preheat order taken (an adversarial session).
    ``warning`` is a logging format of the path and the reason."""

    def __init__(self, path: Path, logger: logging.Logger, warning: str):
        self.path, self._log, self._warning = path, logger, warning
        self.failing = False  # the last write failed (and was warned about)

    def write(self, data: bytes) -> None:
        try:
            write_whole(self.path, data)
        except OSError as exc:
            if not self.failing:
                self._log.warning(self._warning, self.path, exc.strerror or exc)
            self.failing = True
        else:
            self.failing = False
