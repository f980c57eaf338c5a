"""The usage ledger: bytes per user, content and period, kept so the provider can bill.

Every edge counts, per (period, user, content, region), four kinds of bytes
(see USAGE_COUNTERS).  Only ``edge_sent`` is measured by the edge itself; the other
three are what the user's peer daemon says in its announces, and a user has
every reason to under-report what it took from the edge or to over-report
what it gave to others.  So the ledger keeps both and the report cross-checks
them instead of trusting either:

- The billing basis is ``edge_sent``.  ``reported_from_edge`` is only a check
  on it: when a user's claim about this edge differs from what the edge
  measured sending that user's peer daemon (``edge_sent_to_peers``, the part
  of ``edge_sent`` that the daemon can know of: the user's curl or browser
  downloads are not in it), the rows that include it are flagged
  ``edge-report-mismatch``.  A user who makes no claim (a plain HTTP client,
  or a peer that never announced) is not flagged: the absence of a report is
  not a contradiction.
- Peer-to-peer bytes are only credited when confirmed: in a (period, content)
  the uploads that peers claim must be matched by the downloads other peers
  claim, otherwise the claimants that nobody backs are flagged
  ``p2p-report-mismatch`` (``claims.overclaimers``): the author of a one-sided
  claim, not the honest users who traded the same content.
- ``claim_excess`` is what the edge cut from a peer's claims because it was
  more than was possible (``claims.ClaimPolicy``); more than slack of it flags
  that user's rows ``claim-over-bound``, and its claims are left out of the
  P2P check (they are already accounted for).
  A flag means "do not trust these figures without a look", not "wrong".

Both checks allow ``max(slack, tolerance × the larger figure)``.  Announces are
periodic, so a transfer that straddles a period boundary is measured by the
edge in one period and reported by the peer in the next, and an uploader and
its downloader announce at different moments; slack absorbs that for small
transfers and tolerance for large ones.

Writes never block the edge: ``add`` only aggregates in memory, and a
background task writes the aggregates every ``flush_interval`` seconds with an
UPSERT that adds bytes, so several edges (each its own ``edge`` column) can
share one PostgreSQL database and a restarted edge simply keeps adding.  A
failed write keeps the aggregates pending for the next try: losing the
database for a while costs memory, not bills, and never takes the edge down.
SQLite (one file, WAL mode, so a report can read while the edge writes) is the
default; a ``postgresql://`` DSN selects PostgreSQL with the same SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import os
import queue
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeswarm.errors import EdgeswarmError, said
from edgeswarm.policy.claims import differs, overclaimers
from edgeswarm.policy.vocabulary import p2p_share

log = logging.getLogger(__name__)

USAGE_COUNTERS = ("edge_sent", "edge_sent_to_peers", "reported_from_edge", "reported_from_peers", "reported_uploaded", "claim_excess")
BY = ("user", "content", "region")

EDGE_MISMATCH = "edge-report-mismatch"
P2P_MISMATCH = "p2p-report-mismatch"
OVER_BOUND = "claim-over-bound"

_COLUMNS = "period, edge, user_name, content, path, region, kind, bytes"
_KEY = "period, edge, user_name, content, region, kind"
_SCHEMA = f"""CREATE TABLE IF NOT EXISTS usage (
    period BIGINT NOT NULL,
    edge TEXT NOT NULL,
    user_name TEXT NOT NULL,
    content TEXT NOT NULL,
    path TEXT NOT NULL,
    region TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY ({_KEY})
)"""
# One statement for both databases: SQLite ≥ 3.24 and PostgreSQL share the ON CONFLICT syntax.
_UPSERT = (
    f"INSERT INTO usage ({_COLUMNS}) VALUES ({{p}}, {{p}}, {{p}}, {{p}}, {{p}}, {{p}}, {{p}}, {{p}}) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET path = excluded.path, "
    f"bytes = CASE WHEN usage.bytes > {{cap}} - excluded.bytes THEN {{cap}} ELSE usage.bytes + excluded.bytes END"
)
_SELECT = "SELECT period, edge, user_name, content, path, region, kind, bytes FROM usage WHERE period >= {p} AND period < {p}"
PERIOD = 3600  # seconds of a ledger row's period: the edges book by the UTC hour
ALL_PERIODS = (-(1 << 62), 1 << 62)  # since, until: every period there can be
CAP = 1 << 62  # a count saturates here, in memory and in the table: one liar's huge claims must not overflow a
# BIGINT, fail every write and so stop the ledger for everyone (its rows are flagged by the cross-checks anyway)
_WARN_EVERY = 60.0  # seconds between repeated warnings while the database stays unwritable
# A PostgreSQL write the server never answers (a partition, its host restarted while the network was out, a table an
# operator locked) waited for good: libpq notices a dead connection after about two hours, the ledger wrote nothing
# more and said nothing, and the edge ignored SIGTERM while its last flush waited (an adversarial session).  So the
# connection gives up on silence and on locks, and a stopping edge waits CLOSE_WAIT at most for its last write.
PG_OPTIONS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}
# and each write bounds itself (``_Postgres.limits``): 30 s in all, 10 s waiting for a lock
CHECK_TIMEOUT = 3  # seconds check_target gives a PostgreSQL server: one silent longer is an outage, and the edge starts
START_WAIT = 1.0  # seconds a starting edge waits for its PostgreSQL ledger's connection (Ledger.start)
CLOSE_WAIT = 5.0  # seconds a stopping edge waits for its last write (container runtimes SIGKILL after 10 s)


class LedgerError(EdgeswarmError):
    """A ledger target that cannot be used; the message names it (without a password) and says why."""


class LedgerFull(LedgerError):
    """An existing SQLite ledger that its full disk keeps from opening: no bad target, so it does not stop an edge.

    SQLite must create the ``-shm`` and ``-wal`` files of a WAL database to open
    it, and a clean stop deletes them: on a disk at 100 % (or out of inodes) the
    file the edge wrote a moment ago would not open, and a restart failed
    (exit 2, "disk I/O error") although the running edge had coped (an
    adversarial session).  ``Ledger.start`` warns and keeps rows pending.
    """


class LedgerUnreachable(LedgerError):
    """A PostgreSQL ledger that cannot be connected to for any reason but a refusal of ours (``_REFUSED``): down, out of
    reach, hung, starting or stopping, a proxy with nothing behind it.  No bad target, so it does not stop an edge
    (``check_target``): an edge (re)started during the database's maintenance exited 2, and a worker restarted then
    died again and again, where a running edge rides out the same outage with its rows pending.
    """


# libpq's words (and the server's, in English) for a connection the server refused for what we sent: a wrong user,
# password, database, pg_hba rule or TLS setting, or a DSN option libpq does not take.  check_target stops the edge's
# start for them; anything else may pass, and is an outage (LedgerUnreachable).  A server speaking another language
# is taken for an outage: the edge starts, and says each minute why it writes nothing.
_REFUSED = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|permission denied|no password supplied|"
    r"invalid (?:sslmode|connection option|integer value|port)|SSL was required|certificate verify failed|"
    r"is not permitted to log in|definition of service",
    re.IGNORECASE,
)


# SQLite's primary result codes that a full disk gives when opening: SQLITE_IOERR (creating the -shm, its
# IOERR_SHMSIZE), SQLITE_FULL, SQLITE_CANTOPEN (no inode for the -shm or -wal)
_FULL_DISK_CODES = (10, 13, 14)
_ROOM_NEEDED = 1 << 20  # free bytes below which a disk counts as full here: an open needs a 32 KiB -shm and a -wal


def is_dsn(target: str) -> bool:
    """PostgreSQL for a DSN, SQLite for anything else (a path), so an edge needs a single option."""
    return target.startswith(("postgresql://", "postgres://"))


def redact(target: str) -> str:
    """The target as it may appear in logs and messages: DSN passwords replaced by ***."""
    target = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", target)
    return re.sub(r"(password=)[^&\s]*", r"\1***", target)


class _Backend:
    """One connection and its placeholder style: the only things SQLite and PostgreSQL do not share."""

    placeholder = "?"
    limits: tuple[str, ...] = ()  # statements that bound a write, run first in its transaction

    def __init__(self, conn: Any):
        self.conn = conn

    def ensure_schema(self) -> None:
        # Look before creating: an edge's database role may be allowed to write rows but not to create
        # tables, and PostgreSQL checks that privilege even for CREATE TABLE IF NOT EXISTS.
        if not self.has_table():
            self.conn.execute(_SCHEMA)
            self.conn.commit()

    def upsert(self, rows: list[tuple]) -> None:
        try:
            cur = self.conn.cursor()
            for statement in self.limits:
                cur.execute(statement)
            cur.executemany(_UPSERT.format(p=self.placeholder, cap=CAP), rows)
            self.conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self.conn.rollback()
            raise

    def has_table(self) -> bool:
        cur = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'")
        return cur.fetchone() is not None

    def select(self, since: int, until: int = ALL_PERIODS[1]) -> list[tuple]:
        cur = self.conn.cursor()
        cur.execute(_SELECT.format(p=self.placeholder), (since, until))
        return cur.fetchall()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class _Postgres(_Backend):
    placeholder = "%s"
    # in the write's own transaction: a startup `options` parameter was refused by PgBouncer (the edge did not start)
    # and replaced PGOPTIONS (a search_path: the ledger went to another schema), a review
    limits = ("SET LOCAL statement_timeout = 30000", "SET LOCAL lock_timeout = 10000")

    def has_table(self) -> bool:
        cur = self.conn.execute("SELECT to_regclass('usage') IS NOT NULL")
        row = cur.fetchone()
        self.conn.rollback()  # end the implicit transaction so later reads see new rows
        return bool(row and row[0])

    def select(self, since: int, until: int = ALL_PERIODS[1]) -> list[tuple]:
        rows = super().select(since, until)
        self.conn.rollback()
        return rows


def _when_unlocked(step: Callable[[], Any], wait: float = 10.0) -> Any:
    """``step``, tried again while SQLite says the file is locked, for up to ``wait`` seconds.

    Switching a new file to WAL needs it to itself, and SQLite answers "database
    is locked" at once rather than calling the busy handler: the workers of one
    edge (``--workers``) open its ledger at the same moment.
    """
    import sqlite3  # here, as in _connect_sqlite

    deadline = time.monotonic() + wait
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _connect_sqlite(path: str, create: bool) -> _Backend:
    import sqlite3  # here: every command imports this module (cli/__init__.py names LedgerError); get and peer open no ledger

    p = Path(path).expanduser()
    existed = False  # a full disk stops no edge whose ledger it keeps from opening; one it keeps from being made does
    try:
        if create:
            existed = p.is_file()
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(p, timeout=10.0, check_same_thread=False)
        else:
            return _read_sqlite(path, p)
        conn.execute("PRAGMA busy_timeout = 10000")  # the edge and a report may touch the file at once
        mode = _when_unlocked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal":
            log.warning("ledger %s: journal mode is %s, not WAL; reports will wait for writes", path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL; a lost last flush is a few seconds of counts
    except (OSError, sqlite3.Error) as exc:
        full = _full_disk(p, exc)
        if full is None:
            raise LedgerError(f"cannot open SQLite ledger {path}: {said(exc)}") from None
        raise (LedgerFull if existed else LedgerError)(f"cannot open SQLite ledger {path}: {full}") from None
    return _Backend(conn)


def _full_disk(p: Path, exc: BaseException) -> str | None:
    """Why ``exc``, SQLite's error opening ``p``, is its disk being full ("No space left on device", and whether
    inodes are what ran out); None when it is not (another error, or a disk with room).

    SQLite says "disk I/O error" or "unable to open database file" where the
    disk is only full: the file system's own figures tell them apart.
    """
    import sqlite3

    if not isinstance(exc, sqlite3.Error) or getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _FULL_DISK_CODES:
        return None
    try:
        vfs = os.statvfs(p.parent)
    except OSError:
        return None
    if vfs.f_files > 0 and vfs.f_favail < 2:  # f_files 0: a file system that counts no inodes (btrfs)
        return f"{os.strerror(errno.ENOSPC)} (no inode left)"
    if vfs.f_bavail * vfs.f_frsize < _ROOM_NEEDED:
        return os.strerror(errno.ENOSPC)
    return None


def _read_sqlite(path: str, p: Path) -> _Backend:
    """An existing SQLite ledger, to read: nothing written to the file before it is known to be one.

    mode=rw, not ro: a WAL file being written by its edge is read through its
    -shm.  But a report must never create an empty ledger where the operator
    mistyped a path, nor set the journal mode of another file (that turned an
    empty file into a SQLite database), and a file without the usage table,
    which an edge creates with the file, is no edge's ledger: it reported "no
    usage recorded" for another application's database.

    On a full disk the -shm cannot be made (billing could not read the ledger
    of a stopped edge, an adversarial session): the file is then read as it is
    (immutable), which holds every row when no -wal holds some.
    """
    import sqlite3

    if not p.is_file():
        raise LedgerError(f"no ledger at {path}")
    try:
        backend, ledger = _open_to_read(p, "mode=rw")
    except (OSError, sqlite3.Error) as exc:
        full = _full_disk(p, exc)
        if full is None or _has_wal(p):
            raise LedgerError(f"cannot open SQLite ledger {path}: {full or said(exc)}") from None
        try:
            backend, ledger = _open_to_read(p, "mode=ro&immutable=1")
        except (OSError, sqlite3.Error):
            raise LedgerError(f"cannot open SQLite ledger {path}: {full}") from None
    if not ledger:
        backend.close()
        raise LedgerError(f"{path} is not an edgeswarm ledger: it has no usage table (another database, or a copy without its -wal file)")
    return backend


def _has_wal(p: Path) -> bool:
    """Whether the SQLite file ``p`` has a -wal holding anything (rows that a read of the file alone would miss)."""
    try:
        return os.stat(f"{p}-wal").st_size > 0
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unknown: as if it held rows


def _open_to_read(p: Path, mode: str) -> tuple[_Backend, bool]:
    """A connection to the SQLite file ``p`` opened with URI parameters ``mode``, and whether it has the usage table."""
    import sqlite3

    backend = _Backend(
        sqlite3.connect(f"file:{urllib.parse.quote(str(p.resolve()))}?{mode}", uri=True, timeout=10.0, check_same_thread=False)
    )
    try:
        backend.conn.execute("PRAGMA busy_timeout = 10000")  # the edge may be writing
        return backend, backend.has_table()
    except BaseException:
        backend.close()
        raise


def _connect_postgres(dsn: str, timeout: int = 10) -> _Backend:
    _dsn_problem(dsn)  # a DSN that does not parse is the operator's to fix, whatever the connection's words
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise LedgerError(f"PostgreSQL ledger {redact(dsn)} needs psycopg: {exc}") from None
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        ours: dict[str, Any] = {"connect_timeout": timeout, **PG_OPTIONS}
        conn = psycopg.connect(psycopg.conninfo.make_conninfo(dsn, **{k: v for k, v in ours.items() if k not in given}))
    except psycopg.Error as exc:
        why = f"cannot connect to PostgreSQL ledger {redact(dsn)}: {redact(said(exc))}"
        raise (LedgerError if _REFUSED.search(str(exc)) else LedgerUnreachable)(why) from None
    except Exception as exc:  # an unparseable DSN can surface as other errors
        raise LedgerError(f"bad PostgreSQL DSN {redact(dsn)}: {redact(said(exc))}") from None
    return _Postgres(conn)


def _dsn_problem(dsn: str) -> None:
    """LedgerError for a DSN that does not parse (read without connecting)."""
    try:
        import psycopg

        psycopg.conninfo.conninfo_to_dict(dsn)
    except ImportError:  # pragma: no cover - a pinned dependency
        return
    except Exception as exc:
        raise LedgerError(f"bad PostgreSQL DSN {redact(dsn)}: {redact(said(exc))}") from None


def check_target(target: str) -> None:
    """Open ``target`` (and make its table), and close it: a bad ``--ledger`` stops the edge's start, said once, before
    its workers start, not once by each and then by their supervisor (a newcomer's walk).  A PostgreSQL database out
    of reach for now (``LedgerUnreachable``) is said as a warning, and the edge starts."""
    try:
        _connect(target, True, CHECK_TIMEOUT).close()
    except LedgerFull:  # an existing ledger a full disk keeps from opening starts the edge (Ledger.start)
        pass
    except LedgerUnreachable as exc:
        log.warning("%s; the edge starts, and keeps usage in memory until the database answers", exc)


def _connect(target: str, create: bool, timeout: int = 10) -> _Backend:
    """``target`` opened (its table made, with ``create``); ``timeout``: seconds a PostgreSQL server has to answer."""
    backend = _connect_postgres(target, timeout) if is_dsn(target) else _connect_sqlite(target, create)
    for attempt in range(2) if create else ():
        try:
            backend.ensure_schema()
            break
        except Exception as exc:
            with contextlib.suppress(Exception):
                backend.conn.rollback()
            if attempt:  # the first failure may be another edge creating the table at the same moment (PostgreSQL)
                backend.close()
                raise LedgerError(f"cannot create the usage table in {redact(target)}: {said(exc)}") from None
    return backend


class _Writer:
    """One daemon thread that runs the ledger's blocking calls in turn, started once (``start``).

    A thread of its own for each write: when memory ran short, one died
    before it ran and ``Thread.start()`` waited for it for good, the edge
    hung with it; a start that failed lost the batch (a review).  Daemon: a
    write stuck on a database that never answers must not keep the process
    from exiting (asyncio's executor threads are joined at exit).  The
    ledger's calls take its connection's lock anyway: one thread loses no
    concurrency.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """The thread, if not running yet; an error (no memory for its stack) is the caller's."""
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="ledger-write", daemon=True)
            thread.start()
            self._thread = thread

    def submit(self, work: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``work(*args)`` in the thread: its result, or its error (or the thread's, if it cannot start), in the future."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        try:
            self.start()
        except Exception as exc:  # RuntimeError: can't start new thread
            done.set_exception(exc)
            return done
        self._jobs.put((loop, done, work, args))
        return done

    def stop(self) -> None:
        """The thread ends once the calls given before are done (a later ``submit`` starts another)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, done, work, args = job
            try:
                result, exc = work(*args), None
            except BaseException as e:  # handed to the awaiting side as is
                result, exc = None, e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the process is stopping)
                loop.call_soon_threadsafe(_settle, done, result, exc)


def _settle(done: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if not done.done():
        done.set_exception(exc) if exc is not None else done.set_result(result)


class Ledger:
    """One edge's usage counts, aggregated in memory and written in the background."""

    def __init__(self, target: str, edge_id: str, period: int = PERIOD, flush_interval: float = 2.0):
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.target = target
        self.edge_id = edge_id
        self.period = int(period)
        self.flush_interval = flush_interval
        # (period start, user, content, region, kind) -> [bytes, path]; path rides along, it is not part of the key
        self._pending: dict[tuple[int, str, str, str, str], list] = {}
        self._backend: _Backend | None = None
        self._lock = asyncio.Lock()  # one flush at a time, so a batch and its retry never overlap
        self._db_lock = threading.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._writing = 0  # rows of the write under way
        self._writer = _Writer()

    async def start(self) -> None:
        """An SQLite ledger: opened and its table made now, so a bad path stops the edge at startup rather than losing
        bills later; one that a full disk keeps from opening (``LedgerFull``) is no bad target: the edge starts, says
        so once as a write that fails, and keeps its rows pending until a write connects (``_write``).

        A PostgreSQL ledger is connected to in the writer's thread, waited for START_WAIT at most, and never stops the
        start: ``check_target`` judged it before the edge's workers started, and a worker that started while the
        database was down or refused (restarted after a crash, say) exited 2, again and again, or waited out the
        connection's timeout before it served (an adversarial session).  A failure is the first write's warning.
        """
        self._writer.start()  # now, while the edge starts: not at a flush, memory short perhaps
        if is_dsn(self.target):
            _dsn_problem(self.target)
            opening = self._writer.submit(self._open)
            opening.add_done_callback(self._opened)
            await asyncio.wait({opening}, timeout=START_WAIT)
        else:
            try:
                self._backend = await asyncio.to_thread(_connect, self.target, True)
            except LedgerFull as exc:
                self._warn(exc)
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="ledger-flush")

    def add(self, user: str, content: str, path: str, region: str | None, kind: str, nbytes: int, when: float | None = None) -> None:
        """Count bytes; no I/O, so it is safe on every response and announce."""
        if kind not in USAGE_COUNTERS:
            raise ValueError(f"unknown usage kind {kind!r}: expected one of {', '.join(USAGE_COUNTERS)}")
        if nbytes <= 0:
            return
        t = time.time() if when is None else when
        key = (int(t // self.period) * self.period, user, content, region or "", kind)
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = [min(int(nbytes), CAP), path]
        else:
            entry[0] = min(entry[0] + int(nbytes), CAP)
            entry[1] = path

    def pending(self) -> int:
        """Rows waiting to be written, those of a write under way too; a number that keeps growing, or stays, means the
        database is unreachable (a write waiting on a lock read 0: a review)."""
        return len(self._pending) + self._writing

    async def flush(self) -> None:
        """Write what is pending; on failure keep it (merged with what arrived meanwhile) and warn."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [
                (period, self.edge_id, user, content, path, region, kind, nbytes)
                for (period, user, content, region, kind), (nbytes, path) in batch.items()
            ]
            self._writing = len(rows)  # pending until its outcome: queued behind a connect that hangs, it read 0 (a review)
            write = self._writer.submit(self._write, rows)
            # The outcome is handled by a callback and the write is shielded: if whoever awaits this flush is
            # cancelled (an edge shutting down), the thread still finishes and a failed batch still goes back.
            write.add_done_callback(functools.partial(self._written, batch))
            with contextlib.suppress(Exception):
                await asyncio.shield(write)

    def _written(self, batch: dict, write: asyncio.Future) -> None:
        self._writing = 0
        exc = write.exception() if not write.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._restore(batch)
            self._warn(exc)
        elif self._failing_since is not None:
            log.info("ledger %s: writing again after %.0f s; nothing lost", redact(self.target), time.monotonic() - self._failing_since)
            self._failing_since = None

    def _write(self, rows: list[tuple]) -> None:
        """In a thread.  After a failure the connection is dropped and rebuilt, which also recreates a missing table."""
        with self._db_lock:  # a connection is not for two threads, and a cancelled flush's thread may still be running
            try:
                if self._backend is None:
                    self._backend = _connect(self.target, True)
                self._backend.upsert(rows)
            except Exception:
                if self._backend is not None:
                    self._backend.close()
                self._backend = None
                raise

    def _opened(self, opening: asyncio.Future) -> None:
        if not opening.cancelled() and (exc := opening.exception()) is not None:
            self._warn(exc)  # as a write that fails: once, and once a minute while it lasts

    def _open(self) -> None:
        """In the writer's thread: connect (and make the table) unless connected."""
        with self._db_lock:
            if self._backend is None:
                self._backend = _connect(self.target, True)

    def _disconnect(self) -> None:
        with self._db_lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def _restore(self, batch: dict) -> None:
        for key, (nbytes, path) in batch.items():
            entry = self._pending.get(key)
            if entry is None:
                self._pending[key] = [nbytes, path]
            else:
                entry[0] = min(entry[0] + nbytes, CAP)  # the newer path (from add) wins

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._last_warning < _WARN_EVERY:
            return  # one line a minute while the database is down, not one per flush
        self._last_warning = now
        log.warning("ledger %s: cannot write usage (%s); %d rows kept pending", redact(self.target), said(exc), len(self._pending))

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._stopping.wait()
            try:
                await self.flush()
            except Exception:  # flush already handles write errors; this keeps the loop alive whatever happens
                log.exception("ledger flush loop")

    async def close(self) -> None:
        """Stop the loop (letting a flush in progress finish), write what is left, disconnect: within CLOSE_WAIT."""
        self._stopping.set()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                if self._task is not None:
                    with contextlib.suppress(Exception):
                        await self._task
                    self._task = None
                await self.flush()
                async with self._lock:
                    await self._writer.submit(self._disconnect)
        except TimeoutError:
            log.warning("ledger %s: the database did not answer within %g s", redact(self.target), CLOSE_WAIT)
        self._writer.stop()
        if self.pending():
            log.warning("ledger %s: closing with %d usage rows unwritten", redact(self.target), self.pending())


@dataclass
class ReportRow:
    """What one user, content or region used over the selected periods, and whether the reports agree."""

    key: str
    edge_sent: int = 0
    edge_sent_to_peers: int = 0  # the part of edge_sent that went to the user's peer daemon: what its reports can confirm
    reported_from_edge: int = 0
    reported_from_peers: int = 0
    reported_uploaded: int = 0
    claim_excess: int = 0  # cut by the edge from the user's claims: more than was possible
    flags: list[str] = field(default_factory=list)

    @property
    def p2p_share(self) -> float | None:
        """Share of the user's bytes that came from peers rather than this provider's edges (None without bytes)."""
        return p2p_share(self.reported_from_peers, self.reported_from_peers + self.edge_sent)


def report(
    target: str, since: float | None = None, by: str = "user", tolerance: float = 0.1, slack: int = 1 << 20, until: float | None = None
) -> list[ReportRow]:
    """Totals per user, content or region since a time, with cross-check flags; rows sorted by key.

    ``since`` selects the periods that start at or after it, ``until`` those that start before it (a month's bill:
    ``--since`` alone took the next month's periods in too, an adversarial session).  by=content keys
    rows by path (the content id is added when several contents share a path,
    e.g. a file that was republished).  A PostgreSQL ledger without a usage
    table yet (no edge has started) is empty, not an error; a missing SQLite
    file is (it is never created here), and so is one without the table (its
    edge creates the table with the file).
    """
    if by not in BY:
        raise ValueError(f"cannot report by {by!r}: expected one of {', '.join(BY)}")
    backend = _connect(target, create=False)
    try:
        first = math.floor(since) if since is not None else ALL_PERIODS[0]
        end = math.ceil(until) if until is not None else ALL_PERIODS[1]  # periods start on whole seconds
        raw = backend.select(first, end) if backend.has_table() else []
    except Exception as exc:
        raise LedgerError(f"cannot read ledger {redact(target)}: {said(exc)}") from None
    finally:
        backend.close()
    return _aggregate(raw, by, tolerance, slack)


def _aggregate(raw: list[tuple], by: str, tolerance: float, slack: int) -> list[ReportRow]:
    paths: dict[str, set[str]] = defaultdict(set)
    for _, _, _, content, path, _, _, _ in raw:
        paths[content].add(path)
    shared: dict[str, int] = defaultdict(int)
    for ps in paths.values():
        for p in ps:
            shared[p] += 1

    def content_key(content: str) -> str:
        path = sorted(paths[content])[-1] if paths[content] else content
        return f"{path} [{content}]" if shared[path] > 1 or len(paths[content]) > 1 else path

    def key_of(user: str, content: str, region: str) -> str:
        return user if by == "user" else content_key(content) if by == "content" else region

    rows: dict[str, ReportRow] = {}
    # per (period, edge, user, content): kind -> bytes, and the report keys that include it
    edge_groups: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    edge_keys: dict[tuple, set[str]] = defaultdict(set)
    # per (period, content): user -> kind -> bytes, and per (period, content, user) the report keys that include it
    p2p_groups: dict[tuple, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    p2p_keys: dict[tuple, set[str]] = defaultdict(set)
    for period, edge, user, content, _path, region, kind, nbytes in raw:
        if kind not in USAGE_COUNTERS:
            continue  # written by a newer edgeswarm; this report does not know what it means
        key = key_of(user, content, region)
        row = rows.setdefault(key, ReportRow(key))
        setattr(row, kind, getattr(row, kind) + int(nbytes))
        g = (period, edge, user, content)
        edge_groups[g][kind] += int(nbytes)
        edge_keys[g].add(key)
        if kind in ("reported_from_peers", "reported_uploaded", "claim_excess"):
            p2p_groups[(period, content)][user][kind] += int(nbytes)
            p2p_keys[(period, content, user)].add(key)

    flags: dict[str, set[str]] = defaultdict(set)
    for g, k in edge_groups.items():
        claimed = k.get("reported_from_edge", 0)
        if claimed and differs(claimed, k.get("edge_sent_to_peers", 0), tolerance, slack):
            for key in edge_keys[g]:
                flags[key].add(EDGE_MISMATCH)
    for g, users in p2p_groups.items():
        cut = {u for u, k in users.items() if k["claim_excess"] > slack}
        claims = {u: (k["reported_uploaded"], k["reported_from_peers"]) for u, k in users.items() if u not in cut}
        for flag, who in ((OVER_BOUND, cut), (P2P_MISMATCH, overclaimers(claims, tolerance, slack))):
            for user in who:
                for key in p2p_keys[(*g, user)]:
                    flags[key].add(flag)
    for key, fs in flags.items():
        rows[key].flags = sorted(fs)
    return [rows[k] for k in sorted(rows)]
