"""Users publish through their edge: the origin's ``PUT /<path>`` and the edge's forward of it.

The upload protocol is protocol/upload.py's (docs/protocol.md#publishing).
The edge checks the user's token early (no bytes cross the network for a
token that cannot publish) and streams the body to its parent with the
user's own token; the origin checks that token again, against its own key, so
an edge can neither publish on its own nor widen a user's rights
(docs/security.md#publishing).  The origin appends to a part file in its
state directory (store/uploads.py), checks length, SHA-256 and quota, and
only then signs a manifest and renames the file into place
(Catalog.publish_staged): from then on it is served and swarmed like any
other file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeswarm.errors import HttpError
from edgeswarm.node.upstream import MAX_ANSWER, Upstream, UpstreamError, client_error_text, node_url, read_bounded
from edgeswarm.policy.quota import QuotaPolicy
from edgeswarm.policy.recent import Recent
from edgeswarm.protocol import upload
from edgeswarm.protocol.paths import file_request_path, publish_problem
from edgeswarm.protocol.wire import json_response
from edgeswarm.store.catalog import PARTIAL, Catalog
from edgeswarm.store.uploads import Staging, Upload
from edgeswarm.trust import access, tokens

log = logging.getLogger("edgeswarm.roles.publish")
CHUNK = 1 << 16
FLUSH = 1 << 20  # bytes gathered before a write (in a thread): fewer hops off the event loop
FINISH_WAIT = 600.0  # seconds an answer may take after the last byte: the origin hashes the whole file twice (~1 GB/s)
RECENT = 1024  # finished uploads remembered, so a client that missed its 201 gets it again instead of sending it anew
MAX_UNFINISHED = 16  # unfinished uploads a user may have at once: each is two files and a quota reservation until swept
SWEEP_INTERVAL = 60.0  # seconds between sweeps of abandoned uploads (a sweep lists the whole staging directory)
FORWARDED = ("Authorization", "Content-Range", "Content-Length", upload.LENGTH_HEADER, upload.SHA256_HEADER)
FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk, or the origin's user's disk quota: 507, not a client's error (409)
STAGING, PUBLISHED = "staging area for uploads in progress", "published directory"  # which is full, in a 507
ANSWERED = ("Content-Type", "Location", "WWW-Authenticate", "Retry-After", upload.OFFSET_HEADER)


def upload_path(request: web.Request) -> str:
    """The path a ``PUT`` names: 400 for one that can never be published (hidden, partial, too deep, too long), 404 for an
    endpoint's.

    Checked from the request line alone, at the edge and again at the origin,
    so such a path is refused before a byte of its body is read.
    """
    rel = file_request_path(request.raw_path)
    hidden = next((s for s in rel.split("/") if s.startswith(".")), None)
    if hidden is not None:
        raise HttpError(400, f"invalid path: {hidden!r} starts with '.', and hidden names are never published")
    if rel.endswith(PARTIAL):
        raise HttpError(400, f"invalid path: a name ending in {PARTIAL!r} is a file still being written, never published")
    problem = publish_problem(rel)
    if problem is not None:
        raise HttpError(400, f"invalid path: {problem}; nothing was read")
    return rel


class Publisher:
    """The origin's side: receive, verify, and publish uploads under their users' prefixes."""

    def __init__(
        self, public_key: Ed25519PublicKey, catalog: Catalog, staging: Staging, quota: QuotaPolicy, max_unfinished: int = MAX_UNFINISHED
    ):
        self.public_key = public_key
        self.catalog = catalog
        self.staging = staging
        self.quota = quota
        self.max_unfinished = max_unfinished
        self._busy: set[tuple[str, str]] = set()  # (user, path) being received: one request at a time each
        self._checking: dict[tuple[str, str], tuple[int, str]] = {}  # (user, path) -> (length, SHA-256) being finished
        self._admitting = asyncio.Lock()
        self._usage: dict[str, dict[str, int]] = {}  # user -> published files' sizes, for the catalogue generation below
        self._usage_of = -1
        self._finished: Recent[tuple[str, str], tuple[int, str, str, dict]] = Recent(RECENT)  # -> (length, sha, cid, 201 doc)
        self.published = 0  # uploads completed since start (/status)

    def _published_by(self, user: str) -> Mapping[str, int]:
        """The user's published files and their sizes: what counts against the quota.

        Read off the whole catalogue once per user and change of it, not per request (a catalogue of 100 000 files
        cost every upload request a pass over all of them).
        """
        if self._usage_of != self.catalog.generation:
            self._usage.clear()
            self._usage_of = self.catalog.generation
        got = self._usage.get(user)
        if got is None:
            prefix = tokens.publish_prefix(user)
            got = self._usage[user] = {p: e.signed.manifest.size for p, e in self.catalog.by_path.items() if p.startswith(prefix)}
        return got

    async def put(self, request: web.Request) -> web.Response:
        """``PUT /<path>``: a whole file, a chunk of one, or a status query (docs/protocol.md#publishing)."""
        rel = upload_path(request)
        grant = access.publish_grant(request, self.public_key, rel, placed=False)
        declared = upload.declared(request.headers, request.query)
        if self.quota.limit(grant.user) <= 0:
            raise HttpError(403, f"this origin accepts no uploads from user {grant.user} (its --user-quota is 0)")
        key = (grant.user, rel)
        if declared.query:  # answered even while a request appends: the offset so far
            return await self._query(grant.user, rel, declared)
        if key in self._busy:
            raise HttpError(409, f"an upload of /{rel} is already in progress: wait for it, then ask for the offset", {"Retry-After": "2"})
        self._busy.add(key)  # before any await: two requests at once both got in, their bodies in one part (a review)
        try:
            try:
                await asyncio.to_thread(self.catalog.check_placeable, rel)
            except OSError as exc:  # before a byte of the body: no retry of it changes that
                raise HttpError(409, f"cannot publish /{rel}: {exc.strerror or exc}; nothing was kept") from None
            return await self._put(request, grant.user, rel, declared)
        finally:
            self._busy.discard(key)

    async def sweep_loop(self, interval: float = SWEEP_INTERVAL) -> None:
        """Sweep abandoned uploads now and every ``interval`` seconds: on a timer, as a sweep reads the whole directory."""
        while True:
            try:
                await asyncio.to_thread(self.staging.sweep)
            except Exception:
                log.exception("sweep of %s failed", self.staging.dir)
            await asyncio.sleep(interval)

    def _check_room(self, user: str, rel: str, pending: dict[str, int]) -> None:
        """429 if ``rel`` would be one unfinished upload more than the user may have (resuming or replacing one is fine)."""
        if rel in pending or len(pending) < self.max_unfinished:
            return
        hours = self.staging.ttl / 3600
        raise HttpError(
            429,
            f"user {user} has {len(pending)} unfinished uploads, the most this origin keeps at once: finish one first "
            f"(ask its offset with Content-Range: bytes */LENGTH, then send the rest, or run edgeswarm publish again), "
            f"or wait - an unfinished upload untouched for {hours:g} h expires",
        )

    async def _put(self, request: web.Request, user: str, rel: str, declared: upload.Declared) -> web.Response:
        async with self._admitting:  # check and reserve as one step: two uploads at once cannot both take the last room
            pending = self.staging.pending(user)  # from memory: its cost does not grow with other users' uploads
            self._check_room(user, rel, pending)
            self.quota.check(user, self._published_by(user), pending, rel, declared.length)
            async with self._storing(rel, STAGING, self.staging.dir):
                staged = await asyncio.to_thread(self.staging.open, user, rel, declared.length, declared.sha256, declared.whole)
        offset = staged.offset()
        if declared.start is not None and declared.start != offset:
            raise HttpError(
                409, f"this chunk starts at byte {declared.start}, but the origin holds {offset}: resume there", _offset(offset)
            )
        offset += await self._receive(request, staged, offset, declared)
        if offset < declared.length:
            if declared.whole:  # the body was all the client meant to send, and it is short
                await asyncio.to_thread(self.staging.discard, staged)
                raise HttpError(400, f"upload truncated: {offset} of the {declared.length} bytes declared arrived; nothing was kept")
            return _incomplete(offset, declared.length)
        return await self._finish(user, rel, staged)

    @contextlib.asynccontextmanager
    async def _storing(self, rel: str, what: str, where: Path, staged: Upload | None = None) -> AsyncIterator[None]:
        """Writes into the staging area or the published directory: a full disk is a 507 that says which is full,
        one warning (not an error's traceback), and the upload dropped (``staged``): its part held the full disk for
        24 h, and nothing of it could be finished anyway.  Other errors pass as they are."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            if staged is not None:
                await asyncio.to_thread(self.staging.discard, staged)
            log.warning("refused an upload of %.200s: %s (%s) is full: %s", rel, where, what, exc.strerror)
            raise HttpError(
                upload.FULL_STATUS,
                f"cannot store /{rel[:200]}: the origin's {what} is full ({exc.strerror}); nothing was kept, try again later",
            ) from None

    async def _query(self, user: str, rel: str, declared: upload.Declared) -> web.Response:
        """A status query: the bytes held of this very file (0 if another was declared), after the quota check it will meet.

        A part already whole (the origin stopped before finishing it) is finished now: 201; unless a request is
        appending to it or finishing it (busy, looked at after the await: two queries at once both finished it, and
        the second's 409 "No such file" ended its publish, the file published).
        """
        self.quota.check(user, self._published_by(user), self.staging.pending(user), rel, declared.length)
        if self._checking.get((user, rel)) == (declared.length, declared.sha256):  # whole, being checked: ask again
            return _incomplete(declared.length, declared.length)  # (its part may be in place already: offset 0 said "resend")
        held = await asyncio.to_thread(self.staging.find, user, rel)
        if held is None or (held.length, held.sha256) != (declared.length, declared.sha256):
            done = self._finished.get((user, rel))
            entry = self.catalog.by_path.get(rel)
            if done and done[:2] == (declared.length, declared.sha256) and entry and entry.signed.content_id == done[2]:
                return _created(done[3])  # published already: the client missed the answer (a timeout, a dropped edge)
            return _incomplete(0, declared.length)
        offset = held.offset()
        if offset < held.length or (user, rel) in self._busy:
            return _incomplete(offset, declared.length)
        self._busy.add((user, rel))
        try:
            return await self._finish(user, rel, held)
        finally:
            self._busy.discard((user, rel))

    async def _receive(self, request: web.Request, staged: Upload, offset: int, declared: upload.Declared) -> int:
        """Append the body at ``offset``; the bytes taken.  More than declared: 400 and the upload is dropped.

        A client that goes away mid-body keeps what arrived (it can resume):
        the error then goes to the daemon as a hang-up.
        """
        room = declared.end - declared.start + 1 if declared.start is not None and declared.end is not None else declared.length
        async with self._storing(staged.path, STAGING, self.staging.dir, staged):
            return await self._append(request, staged, offset, room)

    async def _append(self, request: web.Request, staged: Upload, offset: int, room: int) -> int:
        """``_receive``'s writing: at most ``room`` bytes of the body, appended at ``offset``; the bytes taken."""
        f: BinaryIO = await asyncio.to_thread(open, staged.part, "r+b")
        got = 0
        buffer = bytearray()
        try:
            await asyncio.to_thread(_seek_truncate, f, offset)
            try:
                async for chunk in request.content.iter_chunked(CHUNK):
                    got += len(chunk)
                    if got > room:
                        raise HttpError(400, f"the body holds more than the {room} bytes declared; nothing was kept")
                    buffer += chunk
                    if len(buffer) >= FLUSH:
                        await asyncio.to_thread(f.write, bytes(buffer))
                        buffer.clear()
            except HttpError:
                buffer.clear()
                await asyncio.to_thread(f.close)
                await asyncio.to_thread(self.staging.discard, staged)
                raise
            finally:
                if buffer:
                    await asyncio.to_thread(f.write, bytes(buffer))
        finally:
            await asyncio.to_thread(f.close)
        return got

    async def _finish(self, user: str, rel: str, staged: Upload) -> web.Response:
        """Every byte is here: check the hash, sign, move into place; or drop it all with a 400/409."""
        self._checking[(user, rel)] = (staged.length, staged.sha256)
        try:
            return await self._check_and_place(user, rel, staged)
        finally:
            del self._checking[(user, rel)]

    async def _check_and_place(self, user: str, rel: str, staged: Upload) -> web.Response:
        digest = await asyncio.to_thread(self.staging.sha256, staged)
        if digest != staged.sha256:
            await asyncio.to_thread(self.staging.discard, staged)
            raise HttpError(
                400, f"SHA-256 mismatch: declared {staged.sha256}, the {staged.length} bytes received hash to {digest}; nothing was kept"
            )
        try:  # placed and applied as one catalogue change: no scan sees the file between the two
            async with self._storing(rel, PUBLISHED, self.catalog.root, staged):
                changes, lines = await self.catalog.change(lambda _: {rel: self.catalog.publish_staged(rel, staged.part)})
        except OSError as exc:
            await asyncio.to_thread(self.staging.discard, staged)
            raise HttpError(409, f"cannot publish /{rel}: {exc.strerror or exc}; nothing was kept") from None
        except (RecursionError, ValueError) as exc:  # a path upload_path should have refused: one line, not a traceback
            await asyncio.to_thread(self.staging.discard, staged)
            log.warning("cannot publish %.200s: %s: %.200s", rel, exc.__class__.__name__, exc)
            raise HttpError(400, f"cannot publish /{rel[:200]}: {exc.__class__.__name__}; nothing was kept") from None
        await asyncio.to_thread(self.staging.discard, staged)
        for line in lines:
            log.info("%s (uploaded by %s)", line, user)
        entry = changes[rel]
        assert entry is not None
        self.published += 1
        signed = entry.signed
        doc = {"path": "/" + rel, "size": signed.manifest.size, "sha256": staged.sha256, "content_id": signed.content_id}
        self._finished[(user, rel)] = (staged.length, staged.sha256, signed.content_id, doc)
        return _created(doc)


def _created(doc: dict) -> web.Response:
    """201: the upload is published; ``doc`` says where and as what."""
    resp = json_response(doc)
    resp.set_status(201)
    resp.headers["Location"] = doc["path"]
    return resp


def _seek_truncate(f: BinaryIO, offset: int) -> None:
    f.seek(offset)
    f.truncate()


def _offset(offset: int) -> dict[str, str]:
    return {upload.OFFSET_HEADER: str(offset)}


def _incomplete(offset: int, length: int) -> web.Response:
    """202: the upload is not whole yet; the client sends from ``offset`` on."""
    resp = json_response({"offset": offset, "length": length})
    resp.set_status(202)
    resp.headers.update(_offset(offset))
    return resp


# ----- the edge: check, then forward -------------------------------------------------------------------------------------


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def forward(upstream: Upstream, parent: str, request: web.Request, timeout: float) -> web.Response:
    """Stream an upload to ``parent`` with the user's own headers (token included) and relay its answer.

    ``timeout`` bounds connecting, not the whole transfer: a large upload
    takes as long as it takes, and the answer may come FINISH_WAIT seconds
    after the last byte (the origin hashes it first).
    """
    assert upstream.session is not None
    headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
    headers["X-Forwarded-For"] = request.remote or ""
    path = request.raw_path
    has_body = request.can_read_body
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=max(timeout, FINISH_WAIT))
    try:
        async with upstream.session.put(
            node_url(parent, path), data=_body(request) if has_body else None, headers=headers, timeout=client_timeout
        ) as reply:
            body = await read_bounded(reply, MAX_ANSWER, parent, path)
            answered = {h: reply.headers[h] for h in ANSWERED if h in reply.headers}
            return web.Response(status=reply.status, body=body, headers=answered)
    except UpstreamError:
        raise
    except TimeoutError:
        raise HttpError(504, f"parent {parent} did not take the upload within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the uploader went away") from None  # the daemon logs a hang-up
        raise HttpError(502, f"parent {parent} failed on the upload: {client_error_text(exc, parent)}") from None
