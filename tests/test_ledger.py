"""The usage ledger and `edgeswarm usage report`, against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgserver import free_port, pg_database, pg_dsn  # noqa: F401  (fixtures; also proves a sibling module can import them)

from edgeswarm.measure import usage
from edgeswarm.store.ledger import (
    _SCHEMA,
    ALL_PERIODS,
    EDGE_MISMATCH,
    OVER_BOUND,
    P2P_MISMATCH,
    Ledger,
    LedgerError,
    _connect,
    check_target,
    report,
)

MiB = 1 << 20
T0 = 1_699_999_200  # a period start for 3600-second periods
H = 3600


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def target(request, tmp_path: Path) -> str:
    """A fresh ledger target of each backend: the tests below must hold for both."""
    if request.param == "sqlite":
        return str(tmp_path / "cache" / "usage.db")
    return request.getfixturevalue("pg_database")


def stored(target: str) -> list[tuple]:
    """Every row as written, straight from the table."""
    backend = _connect(target, create=False)
    try:
        return sorted(backend.select(*ALL_PERIODS))
    finally:
        backend.close()


def drop_table(target: str) -> None:
    if target.startswith("postgresql://"):
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("DROP TABLE usage")
    else:
        conn = sqlite3.connect(target)
        conn.execute("DROP TABLE usage")
        conn.commit()
        conn.close()


async def write(target: str, entries: list[tuple], edge: str = "edge-a", period: int = H) -> None:
    """Record (user, content, path, region, kind, nbytes, when) entries through a Ledger and close it."""
    ledger = Ledger(target, edge, period=period, flush_interval=3600)
    await ledger.start()
    for e in entries:
        ledger.add(*e)
    await ledger.close()


def by_key(rows) -> dict:
    return {r.key: r for r in rows}


async def test_accumulates_across_flushes_periods_and_restarts(target: str):
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()
    ledger.add("alice", "c1", "/a.mp4", "east", "edge_sent", 100, when=T0 + 10)
    ledger.add("alice", "c1", "/a.mp4", "east", "edge_sent", 50, when=T0 + 20)
    assert ledger.pending() == 1  # aggregated in memory, not one row per call
    await ledger.flush()
    assert ledger.pending() == 0
    ledger.add("alice", "c1", "/a.mp4", "east", "edge_sent", 25, when=T0 + H - 1)
    ledger.add("alice", "c1", "/a.mp4", "east", "edge_sent", 7, when=T0 + H)
    await ledger.flush()
    await ledger.close()
    await write(target, [("alice", "c1", "/a.mp4", "east", "edge_sent", 1, T0 + 5)])  # a restarted edge keeps adding
    assert stored(target) == [
        (T0, "edge-a", "alice", "c1", "/a.mp4", "east", "edge_sent", 176),
        (T0 + H, "edge-a", "alice", "c1", "/a.mp4", "east", "edge_sent", 7),
    ]


async def test_period_bucketing_and_region_none(target: str):
    await write(
        target,
        [
            ("bob", "c1", "/a", None, "reported_from_peers", 1, T0 + 299),
            ("bob", "c1", "/a", None, "reported_from_peers", 2, T0 + 300),
            ("bob", "c1", "/a", None, "reported_from_peers", 4, T0 + 601.5),
        ],
        period=300,
    )
    assert [(r[0], r[5], r[7]) for r in stored(target)] == [(T0, "", 1), (T0 + 300, "", 2), (T0 + 600, "", 4)]


async def test_edges_keep_their_own_rows(target: str):
    await write(target, [("alice", "c1", "/a", "east", "edge_sent", 10, T0)], edge="edge-a")
    await write(target, [("alice", "c1", "/a", "east", "edge_sent", 20, T0)], edge="edge-b")
    assert [(r[1], r[7]) for r in stored(target)] == [("edge-a", 10), ("edge-b", 20)]
    assert report(target)[0].edge_sent == 30


def test_add_validates_without_io():
    ledger = Ledger("/nonexistent/never-opened.db", "e")  # add does no I/O, so no start is needed
    with pytest.raises(ValueError, match="unknown usage kind"):
        ledger.add("u", "c", "/p", None, "served", 10)
    with pytest.raises(ValueError):
        ledger.add("u", "c", "/p", None, "bogus", 0)  # the kind is checked even for bytes that are ignored
    ledger.add("u", "c", "/p", None, "edge_sent", 0)
    ledger.add("u", "c", "/p", None, "edge_sent", -5)
    assert ledger.pending() == 0


async def test_background_loop_flushes(target: str):
    ledger = Ledger(target, "edge-a", flush_interval=0.05)
    await ledger.start()
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 123)
    for _ in range(500):  # 10 s at most: a loaded machine (another suite beside this one) once took over 2
        await asyncio.sleep(0.02)
        if ledger.pending() == 0:
            break
    assert ledger.pending() == 0
    assert [r[7] for r in stored(target)] == [123]
    await ledger.close()


async def test_since_filter(target: str):
    await write(target, [("alice", "c1", "/a", "east", "edge_sent", n, T0 + i * H) for i, n in enumerate((1, 10, 100))])
    assert report(target)[0].edge_sent == 111
    assert report(target, since=T0 + H)[0].edge_sent == 110
    assert report(target, since=T0 + H + 1)[0].edge_sent == 100  # periods that start at or after since
    assert report(target, since=T0 + 3 * H) == []


async def test_report_by_user_content_region(target: str):
    await write(
        target,
        [
            ("alice", "c1", "/a.mp4", "east", "edge_sent", 100, T0),
            ("alice", "c2", "/b.mp4", "east", "edge_sent", 10, T0),
            ("bob", "c1", "/a.mp4", "west", "edge_sent", 1000, T0),
            ("bob", "c1", "/a.mp4", "west", "reported_from_peers", 3000, T0 + H),
            ("carol", "c1", "/a.mp4", "west", "reported_uploaded", 3000, T0 + H),
        ],
    )
    users = by_key(report(target, by="user"))
    assert sorted(users) == ["alice", "bob", "carol"]
    assert (users["alice"].edge_sent, users["bob"].edge_sent, users["bob"].reported_from_peers) == (110, 1000, 3000)
    assert users["carol"].reported_uploaded == 3000
    assert users["bob"].p2p_share == pytest.approx(0.75)
    contents = by_key(report(target, by="content"))
    assert sorted(contents) == ["/a.mp4", "/b.mp4"]  # keyed by path
    assert (contents["/a.mp4"].edge_sent, contents["/b.mp4"].edge_sent) == (1100, 10)
    regions = by_key(report(target, by="region"))
    assert (regions["east"].edge_sent, regions["west"].edge_sent, regions["west"].reported_uploaded) == (110, 1000, 3000)
    assert all(not r.flags for r in [*users.values(), *contents.values(), *regions.values()])
    with pytest.raises(ValueError, match="cannot report by"):
        report(target, by="edge")


async def test_contents_sharing_a_path_stay_apart(target: str):
    await write(target, [("u", "v1", "/a.mp4", "", "edge_sent", 1, T0), ("u", "v2", "/a.mp4", "", "edge_sent", 2, T0)])
    assert {r.key: r.edge_sent for r in report(target, by="content")} == {"/a.mp4 [v1]": 1, "/a.mp4 [v2]": 2}


async def test_inconsistent_reports_are_flagged(target: str):
    await write(
        target,
        [
            # alice says she got half of what the edge measured sending her
            ("alice", "c1", "/a", "east", "edge_sent", 10 * MiB, T0),
            ("alice", "c1", "/a", "east", "edge_sent_to_peers", 10 * MiB, T0),
            ("alice", "c1", "/a", "east", "reported_from_edge", 5 * MiB, T0),
            # bob claims 50 MiB of uploads in west; the only downloader there confirms 1 MiB
            ("bob", "c2", "/b", "west", "reported_uploaded", 50 * MiB, T0),
            ("carol", "c2", "/b", "west", "reported_from_peers", 1 * MiB, T0),
            ("carol", "c2", "/b", "west", "edge_sent", 20 * MiB, T0),
            ("carol", "c2", "/b", "west", "edge_sent_to_peers", 20 * MiB, T0),
            ("carol", "c2", "/b", "west", "reported_from_edge", 20 * MiB, T0),
            # dave is consistent
            ("dave", "c3", "/c", "east", "edge_sent", 10 * MiB, T0),
            ("dave", "c3", "/c", "east", "edge_sent_to_peers", 10 * MiB, T0),
            ("dave", "c3", "/c", "east", "reported_from_edge", 10 * MiB, T0),
        ],
    )
    users = {r.key: r.flags for r in report(target, by="user")}
    assert users == {"alice": [EDGE_MISMATCH], "bob": [P2P_MISMATCH], "carol": [], "dave": []}  # the claimant, not carol
    assert {r.key: r.flags for r in report(target, by="content")} == {"/a": [EDGE_MISMATCH], "/b": [P2P_MISMATCH], "/c": []}
    assert {r.key: r.flags for r in report(target, by="region")} == {"east": [EDGE_MISMATCH], "west": [P2P_MISMATCH]}
    # a claim with nothing measured behind it is flagged too
    await write(target, [("erin", "c1", "/a", "north", "reported_from_edge", 8 * MiB, T0)])
    assert by_key(report(target))["erin"].flags == [EDGE_MISMATCH]


async def test_a_one_sided_claim_flags_its_author_only(target: str):
    """Issue 9: a liar's claim used to flag every honest trader of the same content and region."""
    await write(
        target,
        [
            ("alice", "c1", "/a", "east", "reported_uploaded", 4 * MiB, T0),
            ("bob", "c1", "/a", "east", "reported_from_peers", 4 * MiB, T0),
            ("mallory", "c1", "/a", "east", "reported_uploaded", 8 * MiB, T0),  # what the edge let through
            ("mallory", "c1", "/a", "east", "reported_from_peers", 8 * MiB, T0),
            ("mallory", "c1", "/a", "east", "claim_excess", 20 << 30, T0),  # and what it cut
            ("trudy", "c1", "/a", "west", "reported_uploaded", 30 * MiB, T0),  # under the bounds, backed by nobody
        ],
    )
    users = {r.key: r.flags for r in report(target)}
    assert users == {"alice": [], "bob": [], "mallory": [OVER_BOUND], "trudy": [P2P_MISMATCH]}
    assert by_key(report(target))["mallory"].claim_excess == 20 << 30


async def test_consistent_reports_within_tolerance_are_not_flagged(target: str):
    await write(
        target,
        [
            ("alice", "c1", "/a", "east", "edge_sent", 100 * MiB, T0),
            ("alice", "c1", "/a", "east", "edge_sent_to_peers", 100 * MiB, T0),
            ("alice", "c1", "/a", "east", "reported_from_edge", 95 * MiB, T0),  # 5 % off: within tolerance
            ("bob", "c1", "/a", "east", "edge_sent", 900 * 1024, T0),
            ("bob", "c1", "/a", "east", "edge_sent_to_peers", 900 * 1024, T0),  # split by a period boundary: within slack
            ("bob", "c1", "/a", "east", "reported_from_edge", 900 * 1024, T0 + H),
            ("bob", "c1", "/a", "east", "reported_uploaded", 100 * MiB, T0),
            ("carol", "c1", "/a", "east", "reported_from_peers", 60 * MiB, T0),
            ("dave", "c1", "/a", "east", "reported_from_peers", 32 * MiB, T0),  # 92 of 100 MiB confirmed
            ("erin", "c2", "/b", "east", "edge_sent", 40 * MiB, T0),  # a plain HTTP client: no claim, no contradiction
            # frank's peer got 10 MiB from the edge and says so; his 30 MiB with curl are billed, not contradicted
            ("frank", "c1", "/a", "east", "edge_sent", 40 * MiB, T0),
            ("frank", "c1", "/a", "east", "edge_sent_to_peers", 10 * MiB, T0),
            ("frank", "c1", "/a", "east", "reported_from_edge", 10 * MiB, T0),
        ],
    )
    rows = report(target)
    assert [(r.key, r.flags) for r in rows] == [("alice", []), ("bob", []), ("carol", []), ("dave", []), ("erin", []), ("frank", [])]
    assert by_key(rows)["frank"].edge_sent == 40 * MiB
    strict = {r.key: r.flags for r in report(target, tolerance=0.01, slack=0)}
    assert strict["alice"] == [EDGE_MISMATCH]
    assert strict["bob"] == [EDGE_MISMATCH, P2P_MISMATCH]
    assert strict["erin"] == []


async def test_a_flush_when_no_thread_can_start_keeps_its_rows_and_hangs_nothing(target: str, monkeypatch, caplog):
    """Under an address-space limit a thread started for each write could not start: the batch was lost (flush had
    taken it), and a thread that died before it ran hung the edge for good in Thread.start() (a review).  The ledger
    writes from one thread started with it."""
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()

    def no_memory(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_memory)
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
    await asyncio.wait_for(ledger.flush(), 10)
    assert ledger.pending() == 0  # written by the ledger's own thread
    unstarted = Ledger(target, "edge-b", flush_interval=3600)
    unstarted.add("bob", "c1", "/a", "east", "edge_sent", 7, when=T0)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        await asyncio.wait_for(unstarted.flush(), 10)
    assert unstarted.pending() == 1 and "can't start new thread" in caplog.text  # kept, and said
    monkeypatch.undo()
    await ledger.close()
    await unstarted.close()
    assert [r[2] for r in stored(target)] == ["alice", "bob"]


async def test_failed_flush_keeps_pending_and_recovers(target: str, caplog):
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
    await ledger.flush()
    drop_table(target)
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 100, when=T0)
    ledger.add("bob", "c1", "/a", "east", "edge_sent", 1, when=T0)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        await ledger.flush()  # must not raise
    assert ledger.pending() == 2
    assert "cannot write usage" in caplog.text and "kept pending" in caplog.text
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 20, when=T0)  # arrived while failing: merged, not lost
    assert ledger.pending() == 2
    await ledger.flush()  # reconnects, recreates the table, writes what was kept
    assert ledger.pending() == 0
    assert [(r[2], r[7]) for r in stored(target)] == [("alice", 120), ("bob", 1)]
    await ledger.close()


async def test_cancelled_flush_loses_nothing(tmp_path: Path, caplog):
    ledger = Ledger(str(tmp_path / "usage.db"), "edge-a", flush_interval=3600)
    await ledger.start()
    real_write = ledger._write

    def slow_failing_write(rows):
        time.sleep(0.2)
        raise OSError("disk gone")

    ledger._write = slow_failing_write
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
    task = asyncio.create_task(ledger.flush())
    await asyncio.sleep(0.05)
    task.cancel()  # the edge shutting down mid-write
    with pytest.raises(asyncio.CancelledError):
        await task
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        await asyncio.sleep(0.4)
    assert ledger.pending() == 1 and "disk gone" in caplog.text
    ledger._write = real_write
    await ledger.close()
    assert [r[7] for r in stored(str(tmp_path / "usage.db"))] == [5]


async def test_close_writes_what_is_left(target: str):
    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()
    ledger.add("alice", "c1", "/a", "east", "edge_sent", 9, when=T0)
    await ledger.close()
    assert [r[7] for r in stored(target)] == [9]


@pytest.mark.integration
async def test_the_ledgers_connection_keeps_what_libpq_reads_from_the_environment(pg_database: str, monkeypatch):  # noqa: F811
    """The write's time limits went as a startup `options` parameter: it replaced PGOPTIONS (a search_path: the ledger
    wrote to another schema) and PgBouncer refused the connection (a review).  They are set in each write instead."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA billing")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=billing")
    await write(pg_database, [("alice", "c1", "/a", "east", "edge_sent", 3, T0)])
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT to_regclass('billing.usage') IS NOT NULL, to_regclass('public.usage') IS NULL").fetchone() == (
            True,
            True,
        )


@pytest.mark.integration
async def test_a_locked_table_holds_no_write_for_long_nor_the_edges_stop(pg_database: str, caplog):  # noqa: F811
    """A table an operator locked (LOCK TABLE, VACUUM FULL) held the write for good: no warning, pending() read 0 with
    three downloads unwritten, and the edge ignored SIGTERM for 60 s (an adversarial session; a partition that drops
    the server's answers did the same, which the connection's keepalives and TCP user timeout now end)."""
    ledger = Ledger(pg_database, "edge-a", flush_interval=3600)
    await ledger.start()
    with psycopg.connect(pg_database) as locker:
        locker.execute("LOCK TABLE usage IN ACCESS EXCLUSIVE MODE")  # held until this connection's transaction ends
        ledger.add("alice", "c1", "/a", "east", "edge_sent", 7, when=T0)
        with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
            flushing = asyncio.create_task(ledger.flush())
            await asyncio.sleep(0.5)
            assert ledger.pending() == 1  # the row in the waiting write is still pending
            await asyncio.wait_for(flushing, 20)  # the lock timeout (10 s) ends it
            assert ledger.pending() == 1 and "cannot write usage" in caplog.text and "lock timeout" in caplog.text
            ledger.add("bob", "c1", "/a", "east", "edge_sent", 1, when=T0)
            started = time.monotonic()
            await ledger.close()  # the stop's last write waits CLOSE_WAIT (5 s), not for the lock
            took = time.monotonic() - started
        locker.rollback()
    assert took < 8, took
    assert "closing with 2 usage rows unwritten" in caplog.text, caplog.text


async def test_sqlite_wal_and_parent_dir(tmp_path: Path):
    path = tmp_path / "deep" / "er" / "usage.db"
    ledger = Ledger(str(path), "edge-a")
    await ledger.start()
    await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_uncreatable_sqlite_path(tmp_path: Path):
    (tmp_path / "afile").write_text("not a directory")
    ledger = Ledger(str(tmp_path / "afile" / "sub" / "usage.db"), "edge-a")
    with pytest.raises(LedgerError, match="cannot open SQLite ledger"):
        await ledger.start()
    (tmp_path / "junk.db").write_bytes(b"x" * 4096)
    with pytest.raises(LedgerError, match=r"junk\.db"):
        await Ledger(str(tmp_path / "junk.db"), "edge-a").start()


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("postgresql://postgres@127.0.0.1:notaport/postgres", "port"),
        ("postgresql://[bad", "IPv6"),
    ],
)
async def test_unusable_postgresql_targets(dsn: str, reason: str):
    dsn = dsn.format(port=free_port())
    with pytest.raises(LedgerError, match=reason) as info:
        check_target(dsn)  # the edge's check before its workers start
    assert "s3cret" not in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(LedgerError, match=reason):
        report(dsn)


@pytest.mark.parametrize("where", ["127.0.0.1:{port}", "nosuch.invalid"])
async def test_a_postgresql_ledger_out_of_reach_at_start_starts_the_edge_with_its_rows_pending(where: str, caplog):
    """An edge (re)started during its database's maintenance exited 2, and a worker restarted then died again and again,
    where a running edge rides the same outage out: a server that takes no connection (refused, or a name that does not
    resolve) is down for now, said at start and kept pending; the operator's report still says it cannot connect."""
    dsn = f"postgres://postgres:s3cret@{where.format(port=free_port())}/postgres"
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        check_target(dsn)  # the edge's check before its workers: a warning, no exit
        ledger = Ledger(dsn, "edge-a", flush_interval=3600)
        await ledger.start()
        ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
        await ledger.flush()
        assert ledger.pending() == 1
        await ledger.close()
    said = [r.getMessage() for r in caplog.records]
    assert "the edge starts, and keeps usage in memory until the database answers" in said[0] and "s3cret" not in said[0]
    assert "cannot write usage" in said[1] and "s3cret" not in said[1]
    with pytest.raises(LedgerError, match="cannot connect"):
        report(dsn)


async def test_a_server_that_refuses_us_stops_the_start_a_worker_starts_all_the_same(pg_dsn: str, caplog):
    """A wrong database or role is the operator's to fix: the edge's check says so before its workers start.  A worker
    that starts anyway (restarted after a crash, the database changed since) never exits over it: it exited 2, again and
    again, while the database was down or refused (an adversarial session); it keeps its rows pending and says why."""
    for wrong in (pg_dsn.rsplit("/", 1)[0] + "/no_such_db", pg_dsn.replace("postgres@", "nobody@", 1)):
        with pytest.raises(LedgerError, match="does not exist"):
            check_target(wrong)
    ledger = Ledger(pg_dsn.rsplit("/", 1)[0] + "/no_such_db", "edge-a", flush_interval=3600)
    with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
        await ledger.start()
        ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
        await ledger.flush()
    assert ledger.pending() == 1 and "does not exist" in caplog.records[0].getMessage()
    await ledger.close()


async def test_rows_queued_behind_a_connect_that_hangs_are_pending_and_said_lost_at_the_stop(caplog):
    """A database that takes the connection and never answers: the worker's first connect holds the writer's thread
    10 s, and a write queued behind it read 0 pending, so a stop lost its rows without the line that counts them (a
    review)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # takes connections, answers nothing
        ledger = Ledger(f"postgresql://edge@127.0.0.1:{silent.getsockname()[1]}/usage?sslmode=disable", "edge-a", flush_interval=3600)
        await ledger.start()  # waits START_WAIT, not the connect's 10 s
        ledger.add("alice", "c1", "/a", "east", "edge_sent", 5, when=T0)
        flushing = asyncio.create_task(ledger.flush())
        await asyncio.sleep(0.2)
        assert ledger.pending() == 1
        with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
            await ledger.close()
        flushing.cancel()
    assert "closing with 1 usage rows unwritten" in caplog.text, caplog.text


def test_a_database_behind_a_proxy_hung_or_stopping_is_an_outage_not_a_bad_target(caplog):
    """A pooler or load balancer in front of a database that is down accepts and closes: taken for a refusal (the
    bare TCP connect worked), the edge's start stopped with exit 2 (an adversarial session)."""
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def accept_and_close() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                conn.close()

        threading.Thread(target=accept_and_close, daemon=True).start()
        dsn = f"postgresql://edge@127.0.0.1:{listener.getsockname()[1]}/usage?sslmode=disable"
        with caplog.at_level(logging.WARNING, logger="edgeswarm.store.ledger"):
            check_target(dsn)
    assert "the edge starts, and keeps usage in memory until the database answers" in caplog.records[0].getMessage()


async def test_postgresql_role_that_cannot_create_tables(pg_database: str):  # noqa: F811
    await write(pg_database, [])  # the operator creates the table once
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edge_writer') THEN CREATE ROLE edge_writer LOGIN; END IF; END $$"
        )
        conn.execute("GRANT SELECT, INSERT, UPDATE ON usage TO edge_writer")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    limited = pg_database.replace("postgres@", "edge_writer@", 1)
    await write(limited, [("alice", "c1", "/a", "east", "edge_sent", 3, T0)])
    assert report(limited)[0].edge_sent == 3


def test_report_never_creates_a_ledger(tmp_path: Path):
    path = tmp_path / "missing.db"
    with pytest.raises(LedgerError, match="no ledger at"):
        report(str(path))
    assert not path.exists()


def test_report_of_a_postgresql_ledger_without_table(pg_database: str):  # noqa: F811
    assert report(pg_database) == []  # no edge has started yet: nothing recorded


def test_report_of_a_file_that_is_not_a_ledger_says_so_and_leaves_it_untouched(tmp_path: Path, capsys):
    """Another application's SQLite database, or an empty file, got 'no usage recorded' and exit 0, and the empty file
    was turned into a SQLite database."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    conn.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (other, empty):
        before = path.read_bytes()
        rc, out, err = cli(["usage", "report", "--ledger", str(path)], capsys)
        assert (rc, out) == (2, "") and err.startswith(f"edgeswarm usage: {path} is not an edgeswarm ledger"), err
        assert err.count("\n") == 1 and path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "other.db"]  # no -wal, no -shm


def test_sibling_module_import_of_the_fixture():
    import pgserver

    assert pgserver.pg_dsn is pg_dsn and callable(pgserver.fresh_database)


# ----- the CLI -----


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    usage.add_parser(parser.add_subparsers(dest="command", required=True))
    rc = usage.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
async def flagged(target: str) -> str:
    await write(
        target,
        [
            ("alice", "c1", "/a.mp4", "east", "edge_sent", 10 * MiB, T0),
            ("alice", "c1", "/a.mp4", "east", "reported_from_edge", 2 * MiB, T0),
            ("bob", "c1", "/a.mp4", "east", "edge_sent", 30 * MiB, T0),
            ("bob", "c1", "/a.mp4", "east", "reported_from_peers", 10 * MiB, T0),
            ("carol", "c1", "/a.mp4", "east", "reported_uploaded", 10 * MiB, T0),
        ],
    )
    return target


async def test_cli_table(flagged: str, capsys):
    rc, out, err = cli(["usage", "report", "--ledger", flagged], capsys)
    assert rc == 0, err
    for text in ("served by edge", "reported from edge", "from peers", "uploaded to peers", "P2P share", "flags"):
        assert text in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│") and len(line.split()) > 1}
    assert "10.0 MiB" in lines["alice"] and "2.0 MiB" in lines["alice"] and EDGE_MISMATCH in lines["alice"]
    assert "25.0 %" in lines["bob"] and not lines["bob"].rstrip(" │").endswith("mismatch")
    assert "total" in lines and "40.0 MiB" in lines["total"] and "1 flagged" in lines["total"]
    rc, out, _ = cli(["usage", "report", "--ledger", flagged, "--by", "region"], capsys)
    assert rc == 0 and "east" in out and "region" in out


async def test_cli_csv(flagged: str, capsys):
    rc, out, _ = cli(["usage", "report", "--ledger", flagged, "--csv"], capsys)
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["user"] for r in rows] == ["alice", "bob", "carol"]
    alice, bob, carol = rows
    assert (int(alice["edge_sent"]), int(alice["reported_from_edge"]), alice["flags"]) == (10 * MiB, 2 * MiB, EDGE_MISMATCH)
    assert (int(bob["reported_from_peers"]), float(bob["p2p_share"]), bob["flags"]) == (10 * MiB, 0.25, "")
    assert (int(carol["reported_uploaded"]), carol["p2p_share"]) == (10 * MiB, "")
    rc, out, _ = cli(["usage", "report", "--ledger", flagged, "--csv", "--by", "content"], capsys)
    assert next(csv.reader(io.StringIO(out)))[0] == "content" and "/a.mp4" in out


async def test_cli_since(tmp_path: Path, capsys):
    now = time.time()
    ledger = str(tmp_path / "usage.db")
    await write(ledger, [("old", "c", "/a", "", "edge_sent", 1, now - 3 * 86400), ("new", "c", "/a", "", "edge_sent", 2, now)])
    for since, users in [("24h", ["new"]), ("90m", ["new"]), ("7d", ["new", "old"]), ("1970-01-02", ["new", "old"])]:
        rc, out, err = cli(["usage", "report", "--ledger", ledger, "--since", since, "--csv"], capsys)
        assert rc == 0, err
        assert [r["user"] for r in csv.DictReader(io.StringIO(out))] == users, since
    rc, out, _ = cli(["usage", "report", "--ledger", ledger, "--since", "2999-01-01T00:00Z"], capsys)
    assert rc == 0 and "no usage recorded" in out


async def test_cli_until_ends_a_billing_period_and_an_empty_date_is_refused(tmp_path: Path, capsys):
    """--since alone took December into November's bill; --since "" (an unset variable) read as every period."""
    ledger = str(tmp_path / "usage.db")
    nov, dec = usage.parse_since("2026-11-30T23:00"), usage.parse_since("2026-12-01T00:00")
    await write(ledger, [("nov", "c", "/a", "", "edge_sent", 1, nov), ("dec", "c", "/a", "", "edge_sent", 2, dec)])
    rc, out, err = cli(["usage", "report", "--ledger", ledger, "--since", "2026-11-01", "--until", "2026-12-01", "--csv"], capsys)
    assert rc == 0 and [r["user"] for r in csv.DictReader(io.StringIO(out))] == ["nov"], err
    rc, out, _ = cli(["usage", "report", "--ledger", ledger, "--since", "2026-11-01", "--until", "2026-12-01"], capsys)
    assert rc == 0 and "periods from 2026-11-01 00:00 UTC before 2026-12-01 00:00 UTC" in out
    for flag in ("--since", "--until"):
        rc, out, err = cli(["usage", "report", "--ledger", ledger, flag, ""], capsys)
        assert rc == 2 and f"cannot read {flag} ''" in err, err
    rc, out, err = cli(["usage", "report", "--ledger", ledger, "--since", "2026-12-01", "--until", "2026-11-01"], capsys)
    assert rc == 2 and "no hourly period starts from --since 2026-12-01 and before --until 2026-11-01" in err and not out, err
    rc, out, err = cli(["usage", "report", "--ledger", ledger, "--since", "2026-11-30T23:01", "--until", "2026-11-30T23:59"], capsys)
    assert rc == 2 and "the ledger keeps whole UTC hours" in err and not out, err  # nov's hour began before: empty, exit 0


async def test_cli_shows_names_as_they_are_and_a_spreadsheet_runs_none(tmp_path: Path, capsys):
    """A user named "[/]" made every table report a traceback, "[bold]alice" showed as alice and a content id starting
    a-f vanished from its label (rich markup); a name starting with = ran as a formula in a spreadsheet (a review)."""
    ledger = str(tmp_path / "usage.db")
    names = ["[/]", "[bold]alice", "=HYPERLINK(1)", "@x", "-y", "bob", "-"]
    await write(ledger, [(n, "c", "/a", "", "edge_sent", 1, T0) for n in names])
    rc, out, err = cli(["usage", "report", "--ledger", ledger], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert "[/]" in out and "[bold]alice" in out
    await write(ledger, [("bob", cid, "/two.mp4", "", "edge_sent", 1, T0) for cid in ("abc", "def")])  # a republished path
    rc, out, _ = cli(["usage", "report", "--ledger", ledger, "--by", "content"], capsys)
    assert rc == 0 and "/two.mp4 [abc]" in out and "/two.mp4 [def]" in out, out
    rc, out, _ = cli(["usage", "report", "--ledger", ledger, "--csv"], capsys)
    users = {r["user"] for r in csv.DictReader(io.StringIO(out))}
    assert users == {"[/]", "[bold]alice", "'=HYPERLINK(1)", "'@x", "'-y", "bob", "-"}, users  # "-": anonymous, as it is


def test_parse_since_reads_ascii_digits_only():
    with pytest.raises(ValueError, match="--since"):
        usage.parse_since("١h", 1e9)  # \\d took it for 1h


def test_parse_since_forms():
    now = 1_000_000.0
    assert usage.parse_since("90m", now) == now - 5400
    assert usage.parse_since("24h", now) == now - 86400
    assert usage.parse_since("7d", now) == now - 7 * 86400
    assert usage.parse_since("2024-05-01") == 1714521600  # naive means UTC
    assert usage.parse_since("2024-05-01T12:00") == 1714521600 + 12 * H
    assert usage.parse_since("2024-05-01 12:00:00Z") == 1714521600 + 12 * H
    assert usage.parse_since("2024-05-01T12:00+02:00") == 1714521600 + 10 * H
    for bad in ("yesterday", "5x", "-3h", "2024-13-01", "99999999d", "9" * 400 + "w"):  # the last two: before year 1
        with pytest.raises(ValueError, match="cannot read --since"):
            usage.parse_since(bad)


def test_cli_errors(tmp_path: Path, capsys):
    missing = tmp_path / "nope.db"
    rc, out, err = cli(["usage", "report", "--ledger", str(missing)], capsys)
    assert (rc, out, err.strip()) == (2, "", f"edgeswarm usage: no ledger at {missing}")
    assert not missing.exists()
    sqlite3.connect(tmp_path / "ok.db").close()
    rc, _, err = cli(["usage", "report", "--ledger", str(tmp_path / "ok.db"), "--since", "last tuesday"], capsys)
    assert rc == 2 and err.startswith("edgeswarm usage: cannot read --since 'last tuesday'") and "Traceback" not in err
    rc, _, err = cli(["usage", "report", "--ledger", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"], capsys)
    assert rc == 2 and err.startswith("edgeswarm usage: cannot connect to PostgreSQL") and err.count("\n") == 1


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["usage", "report", "--help"], capsys)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--ledger" in out and "examples:" in out and "p2p-report-mismatch" in out
    with pytest.raises(SystemExit) as info:
        cli(["usage"], capsys)  # the action is required
    assert info.value.code == 2


async def test_huge_claims_saturate_instead_of_stopping_the_ledger(target: str):
    """One peer's absurd counts (each announce may claim up to 2^53) must not overflow a BIGINT and block every write."""
    from edgeswarm.store.ledger import CAP

    ledger = Ledger(target, "edge-a", flush_interval=3600)
    await ledger.start()
    try:
        for _ in range(3):
            for _ in range(600):
                ledger.add("liar", "c1", "/a", "east", "reported_uploaded", 1 << 53, when=T0)
            ledger.add("alice", "c1", "/a", "east", "edge_sent", 1000, when=T0)
            await ledger.flush()
            assert ledger.pending() == 0  # written, every time: alice's bytes are not held hostage
    finally:
        await ledger.close()
    rows = by_key(report(target))
    assert rows["liar"].reported_uploaded == CAP and rows["alice"].edge_sent == 3000
    assert rows["liar"].flags == [P2P_MISMATCH]


def test_the_table_total_adds_up_each_column(tmp_path: Path, capsys):
    db = tmp_path / "l.sqlite"
    ledger_rows = [("u1", "edge_sent", 1_000_000), ("u1", "reported_from_edge", 1_000_000), ("u1", "reported_from_peers", 3_000_000)]
    ledger_rows += [("u2", "reported_uploaded", 5_000_000)]
    conn = sqlite3.connect(db)
    conn.execute(_SCHEMA)
    conn.executemany("INSERT INTO usage VALUES (?, 'e', ?, 'c', '/a', '', ?, ?)", [(T0, user, kind, n) for user, kind, n in ledger_rows])
    conn.commit()
    conn.close()
    parser = argparse.ArgumentParser()
    usage.add_parser(parser.add_subparsers(dest="command"))
    assert usage.run(parser.parse_args(["usage", "report", "--ledger", str(db)])) == 0
    total = next(line for line in capsys.readouterr().out.splitlines() if "total (2)" in line)
    cells = [c.strip() for c in total.split("│")]
    assert cells[2:6] == ["976.6 KiB", "976.6 KiB", "2.9 MiB", "4.8 MiB"], cells


def test_workers_opening_a_new_ledger_at_once_all_get_it(tmp_path: Path):
    """An edge's workers (``--workers``) open its new SQLite ledger at the same moment.

    Switching a new file to WAL, two connections that both read it first make
    SQLite answer "database is locked" at once, without waiting: the edge
    failed to start in about one start in ten.  Forty rounds of four at once.
    """
    import threading

    failures: list[Exception] = []
    for i in range(40):
        target, ready = str(tmp_path / f"ledger{i}.sqlite"), threading.Barrier(4)

        def open_it(target: str = target, ready: threading.Barrier = ready) -> None:
            ready.wait()
            try:
                _connect(target, create=True).close()
            except LedgerError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


@pytest.mark.integration
async def test_a_killed_edge_has_billed_what_it_sent_until_seconds_before(tmp_path: Path, nodes, origin, published):
    """Bytes were booked when an answer ended: an edge killed 8 s into a rate-limited download had billed nothing of the
    13.5 MB its client got, and a download running past a month's end went all to the next month (an adversarial
    session).  Now they are told as they leave, at least every 4 MiB or 2 s, and written every 2 s."""
    from conftest import make_file

    make_file(published / "big.bin", 12 * MiB)
    ledger = tmp_path / "usage.db"
    edge = nodes.start(
        "edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--ledger", str(ledger), "--upload-limit", "1MB/s"
    )
    out = tmp_path / "big.bin"
    head = ["curl", "-sfI", "--retry", "20", "--retry-all-errors", "--retry-delay", "1", "-o", "/dev/null", edge.url + "/big.bin"]
    assert (await (await asyncio.create_subprocess_exec(*head)).wait()) == 0  # published and hashed
    curl = await asyncio.create_subprocess_exec("curl", "-s", "-o", str(out), edge.url + "/big.bin")
    deadline = time.monotonic() + 30
    while not out.exists() or out.stat().st_size < 6 * MiB:
        assert time.monotonic() < deadline and curl.returncode is None, "the download did not get going"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)  # the last bytes told, and a ledger flush
    edge.kill()
    await curl.wait()
    got = out.stat().st_size
    billed = sum(r.edge_sent for r in report(str(ledger)))
    assert got - 5 * MiB < billed <= got + MiB, (billed, got)  # queued bytes aside, what the client got
