"""A real, throwaway PostgreSQL server for tests, and the ``pg_dsn`` / ``pg_database`` fixtures.

Mocks would not catch what matters here (ON CONFLICT semantics, placeholders,
transactions left open, connection errors), so tests run against the
PostgreSQL binaries the Debian package installs.  PostgreSQL refuses to run as
root, and tests do, so the server runs as the ``postgres`` system user
(through setpriv, which execs, so the pid we hold is the postmaster itself and
killing it cannot orphan a server).  It listens on a free loopback port, keeps
its socket and data in a temporary directory, skips fsync, and is gone at the
end of the session whatever happens.

Use from any test module (tests/ is on sys.path in pytest's default prepend
import mode, because tests/ has a conftest.py and no __init__.py)::

    from pgserver import pg_database, pg_dsn  # noqa: F401  (fixtures)

Several modules importing the fixture share one server: it is started by the
first user and stopped when the last session-scoped user is torn down.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

START_TIMEOUT = 30.0


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with both initdb and postgres (Debian puts neither on PATH)."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if (p / "initdb").is_file() and (p / "postgres").is_file():
            with contextlib.suppress(ValueError):
                found.append((float(p.parent.name), p))
    return max(found)[1] if found else None


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    """The command prefix that drops root to the postgres user (nothing when not root: run as ourselves)."""
    if user is None:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
    return ["runuser", "-u", user.pw_name, "--"]


def _why_unavailable() -> str | None:
    if find_bindir() is None:
        return "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (install the postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres system user to run the server as"
        if not (shutil.which("setpriv") or shutil.which("runuser")):
            return "running as root and neither setpriv nor runuser is available to drop to the postgres user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def _wait_ready(dsn: str, proc: subprocess.Popen, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{_tail(log)}")
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT:.0f} s:\n{_tail(log)}") from None
            time.sleep(0.05)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-3000:]
    return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGQUIT is PostgreSQL's immediate shutdown: nothing to keep, so do not wait for clients to leave."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, yield its DSN (superuser postgres, database postgres), stop it and delete its files.

    Calls pytest.skip when PostgreSQL cannot be run here at all; a server that
    is installed but fails to start is an error, with its log.
    """
    reason = _why_unavailable()
    if reason:
        pytest.skip(reason)
    bindir = find_bindir()
    assert bindir is not None
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    prefix = _as_user(user)
    tmp = Path(tempfile.mkdtemp(prefix="edgeswarm-pg-"))
    proc: subprocess.Popen | None = None
    try:
        if user is not None:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        data, log = tmp / "data", tmp / "postgres.log"
        env = {**os.environ, "LC_ALL": "C", "HOME": str(tmp)}
        init = subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
        for attempt in range(3):  # the port was free a moment ago; another process may take it first
            port = free_port()
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        str(bindir / "postgres"),
                        "-D",
                        str(data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-k",
                        str(tmp),
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ],
                    cwd=tmp,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, which then stops the server itself
                )
            try:
                _wait_ready(dsn, proc, log)
                break
            except RuntimeError:
                _stop(proc)
                if attempt == 2 or "could not bind" not in _tail(log):
                    raise
        yield dsn
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


_shared: dict = {"stack": None, "dsn": None, "users": 0, "skip": None}


@contextlib.contextmanager
def shared_server() -> Iterator[str]:
    """One server however many modules import pg_dsn (each import is its own session-scoped fixture to pytest)."""
    if _shared["skip"]:
        pytest.skip(_shared["skip"])
    if _shared["stack"] is None:
        stack = contextlib.ExitStack()
        try:
            _shared["dsn"] = stack.enter_context(postgres_server())
        except pytest.skip.Exception as exc:
            _shared["skip"] = str(exc)
            raise
        _shared["stack"] = stack
    _shared["users"] += 1
    try:
        yield _shared["dsn"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            stack, _shared["stack"], _shared["dsn"] = _shared["stack"], None, None
            stack.close()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL server (superuser, database postgres); skips when PostgreSQL is not installed."""
    with shared_server() as dsn:
        yield dsn


def fresh_database(dsn: str) -> str:
    """A new empty database on the server; tests then cannot see each other's tables."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


def drop_database(dsn: str, db_dsn: str) -> None:
    import psycopg

    name = db_dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_database(pg_dsn: str) -> Iterator[str]:
    """DSN of an empty database of its own for one test, dropped afterwards."""
    db = fresh_database(pg_dsn)
    yield db
    drop_database(pg_dsn, db)
