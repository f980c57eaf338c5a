"""``edgeswarm get URL``: one whole file through the hybrid swarm, like wget.

The software-update case.  It runs a short-lived peer in-process - with an
upload server, so it gives back while it downloads - fetches every piece from
the edge and from other peers, then writes the output from verified pieces
only.  Either the output is complete and checked, or it exits non-zero with
a sentence saying why; a partial download is kept in the cache to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from edgeswarm.errors import EdgeswarmError, HttpError
from edgeswarm.node.daemon import Servers
from edgeswarm.node.routerclient import PROBE_WAIT, find_edge
from edgeswarm.node.upstream import HEDGE_AFTER, Upstream, UpstreamError, source_address, source_family
from edgeswarm.policy.vocabulary import p2p_share, peer_bytes
from edgeswarm.processes import pid_alive
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.protocol.paths import decoded, path_problem
from edgeswarm.protocol.units import format_bytes, link_local_problem
from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import Peer
from edgeswarm.store import cachelock
from edgeswarm.trust import tls
from edgeswarm.trust.protect import cipher_for

log = logging.getLogger("edgeswarm.roles.get")
SHUTDOWN_S = 2.0  # seconds a finished get lets peers reading from its upload server go on before it exits


class GetError(EdgeswarmError):
    """Why the download failed, in words for the user."""


def split_url(url: str) -> tuple[str, str]:
    """(edge base URL, published path) of a URL such as http://edge:8080/films/a.mp4."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not one (it was said later without the URL)
    except ValueError as exc:  # a bracketed host left open: http://[::1/a.mp4; http://h:99999/a
        raise GetError(f"not an http(s) URL: {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GetError(f"not an http(s) URL: {url!r}")
    if (problem := link_local_problem(parts.hostname or "")) is not None:  # as every URL flag says (a review)
        raise GetError(f"{url!r}: {problem}")
    return f"{parts.scheme}://{parts.netloc}", _named(parts.path, url)


def url_token(url: str, token: str | None) -> tuple[str, str | None]:
    """(the URL without its ``?token=``, the token to use): a URL's token is taken as --token would be.  It was dropped
    with the query: a --require-token edge said "send ... ?token=TOKEN", which the user had, and printed it in the
    clear; an open edge booked the download to no user (an adversarial session)."""
    if "?" not in url:
        return url, token
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    given = [value for name, value in pairs if name == "token" and value]
    if not given:
        return url, token
    if len(set(given)) > 1 or (token is not None and token != given[0]):
        raise GetError("two different tokens: one in the URL's ?token= and another (or --token, --token-file): give one")
    rest = urlencode([(name, value) for name, value in pairs if name != "token"])
    return base + (f"?{rest}" if rest else ""), given[0]


def _named(target: str, url: str) -> str:
    """The published path of a URL's path (percent-encoded; one leading ``/``), as nodes read a request's: GetError
    for one that can name no file, before any request (each cost a round trip, and a NUL or a newline went to the
    terminal raw: an adversarial session)."""
    try:
        path = decoded(target)
    except ValueError as exc:
        raise GetError(f"{url!r} names no file: {exc}") from None
    path = path.removeprefix("/")
    problem = path_problem(path)
    if problem is not None:
        raise GetError(f"{url!r} names no file: {problem}")
    return path


def split_target(url: str, router: str | None) -> tuple[str | None, str]:
    """(edge or None, path): with a router, the URL may be just the path (/films/a.mp4)."""
    if router is not None and not url.startswith(("http://", "https://")):
        return None, _named(url.split("?", 1)[0], url)
    return split_url(url)


async def download(
    url: str,
    output: Path,
    cache: Path,
    listen: tuple[str, int],
    upload_limit: int | None,
    extra_edges: list[str],
    stall_timeout: float,
    token: str | None = None,
    ca: Path | None = None,
    router: str | None = None,
    origin_key: Path | None = None,
) -> dict:
    edge, path = split_target(url, router)
    learned = origin_key is None and not (cache / "origin.pub").exists()  # no key given nor pinned by an earlier run
    answered = True
    if edge is not None and router is None:
        router, edge, answered = await _router_or_edge(edge, path, listen[0], ca, bool(extra_edges), token)
    ordered = (edge, *extra_edges) if answered else (*extra_edges, edge)  # first, each ask of it waited HEDGE_AFTER
    edges = tuple(e for e in ordered if e and (router is None or e.rstrip("/") != router.rstrip("/")))
    config = PeerConfig(
        cache=cache, edges=edges, upload_limit=upload_limit, bind=listen[0], token=token, ca=ca, router=router, origin_key=origin_key
    )
    peer = Peer(config)
    peer.pinned.one_shot = True  # an unreachable edge ends the download at once (it waited 7.5 s for "still learning")
    if peer.router is not None:
        peer.router.path = path  # the router ranks this file's edges (its consistent hash)
        peer.router.patience, peer.router.role = 0.0, "get"  # one ask, as of each edge: a wrong --router ends at once
    # the upload server faces other peers as a daemon's does, with the same limits; once the file is written, a peer
    # still reading from it gets SHUTDOWN_S, not aiohttp's 60 s (CI saw a finished get still running after 60 s)
    servers = Servers("get", shutdown_timeout=SHUTDOWN_S)
    try:
        peer.upload_port = (await servers.start([(peer.upload_app(), *listen, "upload")]))["upload"][1]
        peer.bound.set()
        try:
            signed = await peer.resolve(path)
        except HttpError as exc:
            raise GetError(f"{url}: {exc.message}") from None
        out = OutputFile(output, signed.manifest)
        # a rerun refetches what changed on disk; in the loop, as the store is not thread-safe
        held = peer.pinned.opened.verify_held(signed.content_id)
        cached = sum(signed.manifest.piece_span(i)[1] for i in held)
        problem = space_problem(out.disk_place(), cache, signed.manifest.size, cached)
        if problem is not None:
            raise GetError(f"{path}: {problem}")
        try:  # before the download: a protected file came down whole, 30 MB, and then its key was refused (an adversarial session)
            key = await peer.content_key(signed) if signed.manifest.protection else None
        except HttpError as exc:
            raise GetError(f"{url}: {exc.message}") from None
        swarm = peer.swarm(signed)
        try:
            if not signed.manifest.protection:  # protected pieces are written decrypted, once the download is whole
                swarm.on_stored = out.put
            swarm.want_whole()
            started = time.monotonic()
            await _watch(peer, swarm, stall_timeout, out)
            elapsed = time.monotonic() - started
            await asyncio.to_thread(out.finish, peer, signed.content_id, key)
        finally:
            swarm.on_stored = None
            out.close()
        got = peer.received.get(signed.content_id, Counter())
        from_peers, total = peer_bytes(got), sum(got.values())
        log.info("%s: %d bytes written to %s; closing", path, signed.manifest.size, output)
        done = {"path": path, "size": signed.manifest.size, "seconds": elapsed, "from_peers": from_peers, "received": total}
        return {**done, "key_learned": learned}
    finally:
        await servers.close()


def space_problem(output: Path | int | None, cache: Path, size: int, cached: int) -> str | None:
    """Why the disks cannot take this download, or None.  The piece cache needs what it lacks of the file and the
    output (a path, or standard output's descriptor when it is a file: ``-o - > FILE``) the whole file, both on one
    disk if they share it: a temporary cache in /tmp (a tmpfs in RAM on Debian) holds a copy until the end.  Checked
    before a piece is fetched: a get of a file larger than the free space filled the disk, then failed (an
    adversarial session)."""
    disks: dict[int, tuple[int, str]] = {}  # device: free bytes, where
    needs: dict[int, list[tuple[str, int]]] = {}  # device: (for what, bytes)
    for what, place, need in (("the piece cache", cache, size - cached), ("the output", output, size)):
        disk = _disk(place)
        if disk is not None and need > 0:
            device, free, where = disk
            disks.setdefault(device, (free, where))
            needs.setdefault(device, []).append((what, need))
    for device, wants in needs.items():
        free, where = disks[device]
        need = sum(n for _, n in wants)
        if need > free:
            who = " and ".join(what for what, _ in wants) + (" need" if len(wants) > 1 else " needs")
            return f"{who} {format_bytes(need)} on the disk of {where}, which has {format_bytes(free)} free (--cache DIR and -o FILE choose the disks)"
    return None


def _disk(place: Path | int | None) -> tuple[int, int, str] | None:
    """(device, free bytes, its name) of the disk a path would be written on (its nearest folder that exists: the
    output's folders are made once the first piece comes), or of a descriptor's file; None: not a disk file."""
    if place is None:
        return None
    if isinstance(place, int):
        st = os.fstat(place)
        if not stat.S_ISREG(st.st_mode):
            return None  # a pipe, a terminal, /dev/null
        vfs = os.fstatvfs(place)
        return st.st_dev, vfs.f_bavail * vfs.f_frsize, "standard output"
    folder = next((p for p in (place, *place.parents) if p.exists()), None)
    if folder is None:
        return None
    return folder.stat().st_dev, shutil.disk_usage(folder).free, str(folder)


async def _router_or_edge(
    base: str, path: str, bind: str, ca: Path | None, others: bool, token: str | None = None
) -> tuple[str | None, str | None, bool]:
    """(router, edge, whether ``base`` answered) for ``base``: a router's URL given as the file's (``http://router/path``)
    is used as ``--router``.

    A redirect that is neither (a captive portal, a login page, a broken
    edge) ends ``get``, unless ``others``: further ``--edge``s, which it goes
    on with, as a peer daemon does (it ended at once: an adversarial session).
    With ``others`` a ``base`` that does not answer within HEDGE_AFTER is
    asked after them: a wedged first edge (stopped, taking connections) held
    `get` 5 s here and HEDGE_AFTER again at the key's, the manifest's and the
    first pieces' asks (an adversarial session).
    """
    # the token goes with the probe, to the host the file was asked of: a --require-token edge logged and counted a 401
    # for every download that then went through (an adversarial session)
    credential = {"Authorization": f"Bearer {token}"} if token else None
    upstream = Upstream(10.0, ssl=tls.client_context(ca), bind=source_address(bind, [base]), headers=credential, family=source_family(bind))
    await upstream.start()
    try:
        router, edge, answered = await find_edge(upstream, base, path, HEDGE_AFTER if others else PROBE_WAIT)
    except UpstreamError as exc:
        if not others:
            raise GetError(exc.message) from None
        log.warning("%s: going on with the other --edge", exc.message)
        return None, None, True
    finally:
        await upstream.close()
    if router is not None:
        log.info("%s is a router: the edges come from it", router)
        return router, None, True
    if not answered and others:
        log.info("%s did not answer within %g s: the other --edge first", base, HEDGE_AFTER)
    return None, edge, answered


def _lacking(cache: Path, path: str, missing: int) -> str:
    """What the cache's disk lacks for the rest of ``path``: inodes when none is left (it said "needs 4.8 MiB more" while
    df showed 64 MiB free: an adversarial session), else bytes."""
    with contextlib.suppress(OSError):
        vfs = os.statvfs(cache)
        if vfs.f_files > 0 and vfs.f_favail == 0:
            return f"its disk has no inode left for the pieces of {path} (df -i)"
    return f"{path} needs {format_bytes(missing)} more"


async def _watch(peer: Peer, swarm, stall_timeout: float, out: OutputFile) -> None:
    """Show progress until complete; give up when nothing arrives for ``stall_timeout`` seconds.

    Returns as soon as the last piece is stored (it waits on completion, not
    on the next look at the progress).  The bar is rich's on a terminal, and
    rich loads only then: a line every 2 s otherwise.
    """
    m = swarm.signed.manifest
    interactive = sys.stderr.isatty()
    last_held, last_change, last_line = -1, time.monotonic(), 0.0
    with _bar() if interactive else contextlib.nullcontext() as bar:
        task = bar.add_task(m.path, total=m.size) if bar is not None else None
        while not swarm.completed.is_set():
            if out.error is not None:
                raise GetError(f"cannot write {out.shown}: {out.error.strerror or out.error}")
            failing = peer.pinned.opened.write_error
            if failing is not None:  # else every piece fetched would be thrown away and fetched again, until the stall timeout
                missing = m.size - sum(m.piece_span(i)[1] for i in swarm.picker.have)  # a rerun resumes with what is held
                raise GetError(
                    f"cannot store pieces in the cache {peer.config.cache} ({failing}): {_lacking(peer.config.cache, m.path, missing)}"
                )
            refusal = peer.token_refused()
            if refusal is not None:  # the token: retrying until the stall timeout changes nothing
                raise GetError(refusal)
            if swarm.withdrawn is not None:  # it waited out the stall timeout, and blamed the last 502 it saw
                raise GetError(f"{swarm.withdrawn}: run the get again for what is published now")
            held = len(swarm.picker.have)
            now = time.monotonic()
            if held != last_held:
                last_held, last_change = held, now
            elif now - last_change > stall_timeout:
                log.debug(
                    "stalled: missing %s, in flight %s",
                    swarm.picker.missing(),
                    {i: swarm.picker.in_flight(i) for i in swarm.picker.missing()},
                )
                said = f"no piece of {m.path} arrived for {stall_timeout:g} s from {', '.join(peer.edges)} or any peer"
                raise GetError(f"{said}; the last try: {swarm.last_failure[1]}" if swarm.last_failure else said)
            done = min(m.size, held * m.piece_size)
            share = _peer_share(peer, swarm.cid)
            if bar is not None:
                bar.update(task, completed=done, description=f"{m.path} (peers {share:.0%})")
            elif now - last_line >= 2:
                print(
                    f"{m.path}: {done * 100 // max(m.size, 1)}% {format_bytes(done)} of {format_bytes(m.size)}, peers {share:.0%}",
                    file=sys.stderr,
                )
                last_line = now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await swarm.completed.wait()
        if bar is not None:
            bar.update(task, completed=m.size)


def _bar():
    """rich's progress bar for a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    return Progress(*columns, transient=False)


def _peer_share(peer: Peer, cid: str) -> float:
    got = peer.received.get(cid, Counter())
    return p2p_share(peer_bytes(got), sum(got.values())) or 0.0


class OutputFile:
    """The output, written at each piece's offset as the swarm stores it verified, and renamed into place once whole.

    Assembled after the download instead, the user waited while every piece
    was read back from the cache and hashed again: 0.2-1.0 s for 32 MiB with
    12 `get`s on two cores, as long as the whole start-up.  A piece is
    written from the bytes ``put_piece`` has just checked; what was not
    written so (held from an earlier run, protected content) is read from the
    cache at the end and checked again there.  A regular file appears whole
    or not at all: a temporary file of its own beside it until then (two
    `get`s of one output each write their own), removed on failure; through
    a symbolic link, the file it names is replaced, not the link.  Anything
    else (``-`` for standard output, a pipe, a device such as /dev/null) is
    written in order once the download is complete, never replaced.
    """

    def __init__(self, path: Path, manifest: Manifest):
        self.path, self.manifest = path, manifest
        self.stream = str(path) == "-" or _special(path)
        self.target = path if self.stream else Path(os.path.realpath(path))
        self.part: Path | None = None  # the temporary file, once created
        self.written: set[int] = set()
        self.error: OSError | None = None  # the first write that failed: the download stops with it
        self.fd: int | None = None
        self.done = False

    @property
    def shown(self) -> str:
        """The output as a message names it: ``-`` is standard output ("cannot write -" said nothing)."""
        return "standard output" if str(self.path) == "-" else str(self.path)

    def disk_place(self) -> Path | int | None:
        """Where the output's bytes land on a disk: the target's folder, standard output's descriptor, or a special
        file's path (a device or pipe: no disk, ``_disk``)."""
        if str(self.path) == "-":
            return sys.stdout.fileno()
        return self.path if self.stream else self.target.parent

    def _open(self) -> int:
        if self.fd is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            stem = self.target.name.encode()[:200].decode(errors="ignore")  # leaves room in NAME_MAX (255 bytes)
            self._sweep(f".{stem}.")
            while self.fd is None:
                # hidden: an origin publishing that folder skips it (it published a half-written file, zeros and all, and
                # hashed it again at every scan: an adversarial session), as it skips every hidden name
                part = self.target.with_name(f".{stem}.{os.getpid()}-{secrets.token_hex(4)}.part")
                with contextlib.suppress(FileExistsError):
                    self.fd, self.part = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), part
            with contextlib.suppress(OSError):  # held while it writes: a get in another pid namespace or host sees it (_sweep)
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self.fd

    def _sweep(self, prefix: str) -> None:
        """Remove the partial outputs of this output's earlier `get`s whose process is gone (killed: SIGKILL, the OOM
        killer, a power cut): each left a hidden file as large as what it had fetched, which no rerun reused or
        removed (an adversarial session).  A writer still running keeps its own: its pid runs, or (in another pid
        namespace, or on another host over NFS, where its pid means nothing here) it holds the file's lock."""
        with contextlib.suppress(OSError), os.scandir(self.target.parent) as entries:
            for entry in entries:
                name = entry.name
                if not (name.startswith(prefix) and name.endswith(".part")):
                    continue
                pid, dash, tag = name[len(prefix) : -len(".part")].partition("-")
                if dash and pid.isascii() and pid.isdigit() and len(tag) == 8 and not pid_alive(int(pid)):
                    _remove_unlocked(entry.path)

    def put(self, index: int, data: bytes) -> None:
        """A verified piece: written at its offset (once; a failure is kept in ``error``); a stream's wait for ``finish``."""
        if self.stream or index in self.written or self.error is not None:
            return
        try:
            self._write(index, data)
        except OSError as exc:
            self.error = exc
            return
        self.written.add(index)

    def _write(self, index: int, data: bytes) -> None:
        fd, offset, view = self._open(), self.manifest.piece_span(index)[0], memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            offset, view = offset + n, view[n:]

    def _read(self, peer: Peer, cid: str, index: int) -> bytes:
        data = peer.pinned.opened.read_piece(cid, index)
        if data is None or not self.manifest.check_piece(index, data):
            raise GetError(f"piece {index} vanished or changed in the cache while writing {self.path}")
        return data

    def finish(self, peer: Peer, cid: str, key: bytes | None) -> None:
        """Write what is missing (every piece, if protected: decrypted) and rename the whole file into place; a stream,
        every piece in order."""
        m = self.manifest
        decrypt = cipher_for(key, m.protection) if key is not None and m.protection else None
        try:
            if self.stream:
                self._stream(peer, cid, decrypt)
            else:
                for i in range(m.piece_count):
                    if i not in self.written:
                        data = self._read(peer, cid, i)
                        self._write(i, decrypt(data, m.piece_span(i)[0]) if decrypt else data)
                os.ftruncate(self._open(), m.size)  # an empty file has no piece to create it: it is opened here
                os.close(self._open())
                self.fd = None
                assert self.part is not None
                os.replace(self.part, self.target)
        except OSError as exc:
            raise GetError(f"cannot write {self.shown}: {exc.strerror or exc}") from None
        self.done = True

    def _stream(self, peer: Peer, cid: str, decrypt) -> None:
        """Every piece in order to standard output or the special file (never created, truncated or replaced)."""
        m = self.manifest
        fd = sys.stdout.fileno() if str(self.path) == "-" else os.open(self.path, os.O_WRONLY)
        try:
            for i in range(m.piece_count):
                data = self._read(peer, cid, i)
                view = memoryview(decrypt(data, m.piece_span(i)[0]) if decrypt else data)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            if fd != sys.stdout.fileno():
                os.close(fd)

    def close(self) -> None:
        """Release the file; unless it was renamed into place, remove the partial output."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.done and self.part is not None:
            with contextlib.suppress(OSError):  # its directory is what failed
                self.part.unlink()


def _remove_unlocked(path: str) -> None:
    """Remove the regular file ``path`` unless a process holds a lock on it (a writer still at it); never follows a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # a link, another user's, gone already
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.unlink(path)
    except OSError:  # locked: its writer runs
        pass
    finally:
        os.close(fd)


def _special(path: Path) -> bool:
    """An existing file that is not a regular one nor a directory (a device, a pipe, a socket), through links."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


STOPS = (signal.SIGTERM, signal.SIGHUP)


def _stop_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP end a get as Ctrl-C does, exiting 128 + the signal's number: its upload server closes, and
    its partial output and temporary cache are removed.  Their default action ended the process on the spot and left
    both behind (a soak session: 26 MB a run, under a random name no rerun reuses).  While the download runs, the
    event loop's handler does it (``_stoppable``)."""
    raise SystemExit(128 + signum)


async def _stoppable(download: Awaitable[dict], got: list[int]) -> dict:
    """``download``, cancelled on SIGTERM or SIGHUP, which ``got`` then names, as asyncio.run does on SIGINT: raised in
    whatever frame was running, SystemExit came out of one of the download's tasks, with a traceback ("Task exception
    was never retrieved", CI)."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def stop(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for sig in STOPS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await download
    finally:
        for sig in STOPS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, _stop_on_signal)  # removing restored the default action: the cleanup after is ours too


TEMP_PREFIX = "edgeswarm-get-"  # a `get` without --cache keeps its pieces in $TMPDIR/edgeswarm-get-XXXXXXXX, removed at its end
TEMP_STALE_S = 60.0  # a temporary cache younger than this is left alone: its get may not hold its lock yet


def sweep_temp_caches(root: Path | None = None) -> int:
    """Remove the temporary caches of `get`s that were killed (SIGKILL, the OOM killer): up to a whole copy of a file
    each, left in $TMPDIR for good (an adversarial session).  A running `get` holds its cache's lock (cachelock), so one
    that can be locked is nobody's; returns how many were removed."""
    removed = 0
    for path in (root or Path(tempfile.gettempdir())).glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime >= TEMP_STALE_S and cachelock.abandoned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def output_problem(text: str, name: str) -> str | None:
    """Why ``-o TEXT`` cannot be the output of a file named ``name``, or None.  A trailing slash names a directory, and
    ``-o ''`` no file: ``Path`` made them a file ``newdir`` and ``.`` (an adversarial session); curl and wget refuse
    the first.  A folder on the way that is a file is said as such, not as mkdir's "File exists"."""
    if text == "":
        return f"-o '' is empty: name the file (-o {name})"
    path = Path(text)
    named_folder = text.endswith((os.sep, f"{os.sep}.", f"{os.sep}..")) or text in (".", "..")  # Path drops / and /.
    if named_folder and path.exists() and not path.is_dir():
        return f"-o {text}: {path} is not a directory"
    if named_folder or path.is_dir():  # found at the rename, after the whole download, before
        return f"-o {text} is a directory: name the file (-o {path / name})"
    for folder in path.parents:
        if folder.exists():
            return None if folder.is_dir() else f"-o {text}: {folder} is not a directory"
    return None


def run(
    url: str,
    output: str | None,
    cache: Path | None,
    listen: tuple[str, int],
    upload_limit: int | None,
    edges: list[str],
    stall_timeout: float,
    token: str | None = None,
    ca: Path | None = None,
    router: str | None = None,
    origin_key: Path | None = None,
) -> int:
    try:
        url, token = url_token(url, token)
        _, path = split_target(url, router)
    except GetError as exc:
        print(f"edgeswarm get: {exc}", file=sys.stderr)
        return 2
    name = path.rsplit("/", 1)[-1]
    problem = None if output is None else output_problem(output, name)
    if problem is not None:
        print(f"edgeswarm get: {problem}", file=sys.stderr)
        return 2
    out = Path(name if output is None else output)
    for sig in STOPS:
        signal.signal(sig, _stop_on_signal)
    if cache is None:
        sweep_temp_caches()
    workdir = cache or Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    got: list[int] = []
    try:
        with cachelock.held(workdir, "get"):
            fetching = download(url, out, workdir, listen, upload_limit, edges, stall_timeout, token, ca, router, origin_key)
            result = asyncio.run(_stoppable(fetching, got))
    except asyncio.CancelledError:
        if not got:
            raise
        raise SystemExit(128 + got[0]) from None
    except GetError as exc:
        print(f"edgeswarm get: {exc}", file=sys.stderr)
        return 1
    finally:
        if cache is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(_summary(out, result), file=sys.stderr if str(out) == "-" else sys.stdout)  # the file itself went to stdout
    return 0


def _summary(out: Path, result: dict) -> str:
    """The line a finished `get` prints.  The rate is of what this run fetched: a rerun that found most of the file in
    its cache said "38.1 MiB in 0.0 s (37.3 GiB/s)" (an adversarial session).  It says when the pieces were checked
    against an origin key learned from the edge this run: "every piece verified" alone made a forging edge's bytes look
    checked (an adversarial session)."""
    size, got, seconds = result["size"], result["received"], result["seconds"]
    rate = f"{format_bytes(got / max(seconds, 1e-3))}/s"
    share = f"{p2p_share(result['from_peers'], got) or 0.0:.0%} from peers, "
    if got >= size:
        how = rate
    elif got:
        how = f"{format_bytes(got)} fetched at {rate}, the rest from the cache"
    else:
        how, share = "all from the cache", ""
    # verified against a key the edge itself served, a compromised edge's own pieces pass: the line does not say more
    checked = (
        "every piece verified against the origin key the edge served (--origin-key pins one)"
        if result["key_learned"]
        else "every piece verified"
    )
    return f"{out}: {format_bytes(size)} in {seconds:.1f} s ({how}), {share}{checked}"
