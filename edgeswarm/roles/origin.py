"""The origin: publishes a directory, signs its manifests, serves pieces and files.

p2pd's server mode (``-p DIR``).  It is the root of trust: edges and peers pin
its public key (served at /origin-key) and accept only what it signed.  The
origin itself re-checks every piece it reads against the manifest, so a file
edited behind its back is withdrawn and re-hashed rather than served wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
from pathlib import Path

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import ServerLimits, make_app, serve
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.serving import LOOKAHEAD, send_piece, serve_file
from edgeswarm.policy import scanpace
from edgeswarm.policy.quota import QuotaPolicy
from edgeswarm.policy.ratelimit import TokenBucket
from edgeswarm.policy.recent import Recent
from edgeswarm.protocol.paths import PATH, file_request_path, manifest_request_path
from edgeswarm.protocol.torrent import (
    KEPT,
    Torrent,
    TorrentError,
    build_in_child,
    hand_out,
    sign,
    web_seed,
    why_none,
)
from edgeswarm.protocol.wire import (
    base_url,
    have_response,
    json_response,
    magnet_response,
    manifest_response,
    piece_index,
    status_limit,
    torrent_link,
    torrent_response,
)
from edgeswarm.roles.livewatch import LiveWatcher
from edgeswarm.roles.publish import Publisher
from edgeswarm.store.catalog import Catalog, Entry
from edgeswarm.store.uploads import Staging
from edgeswarm.trust import access
from edgeswarm.trust.protect import cipher_for, crypt
from edgeswarm.trust.signing import load_or_create_private_key, public_pem

log = logging.getLogger("edgeswarm.roles.origin")
UNCAPPED = TokenBucket(None)  # the origin sends pieces to edges as fast as they take them
DEFAULT_QUOTA = 1_000_000_000  # bytes a publishing user may keep published (--user-quota)


def republishing(path: str) -> HttpError:
    """A file that changed on disk, while its new version is hashed: a 503 to try again shortly, never a 404."""
    return HttpError(503, f"{path} changed on disk and is being republished", {"Retry-After": "2"})


class OriginSource:
    """Pieces read from the published file and checked against the manifest before they go out."""

    def __init__(self, origin: Origin, entry: Entry):
        self.origin = origin
        self.entry = entry

    def ahead(self, piece_size: int) -> int:
        return LOOKAHEAD  # read from the published file, held by no quota

    def local(self, index: int) -> None:
        return None  # always read and verify: the file may have changed under us

    def held(self, index: int) -> bool:
        """True: nothing is fetched ahead of the reader (serving._send_span), as the file is at hand.  Pieces read
        ahead would be held in memory, as the origin keeps no copy: 1.5 MB for every client that stopped reading."""
        return True

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        kept = self.entry.data  # a live playlist: the bytes signed, whatever the file holds now
        if kept is not None:
            offset, length = self.entry.signed.manifest.piece_span(index)
            return kept[offset : offset + length]
        data = await asyncio.to_thread(self._read, index)
        if data is None:
            self.origin.withdraw(self.entry)
            path = self.entry.signed.manifest.path
            # deleted (404) or on its way again (503); or published anew meanwhile: ask again
            raise self.origin.unpublished(path) if path not in self.origin.catalog.by_path else republishing(path)
        return data

    def _read(self, index: int) -> bytes | None:
        m = self.entry.signed.manifest
        offset, length = m.piece_span(index)
        try:
            if not self.entry.file.resolve().is_relative_to(self.origin.catalog.root):
                return None
            with open(self.entry.file, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError:
            return None
        if m.protection is not None and self.entry.key is not None:
            data = crypt(self.entry.key, m.protection.nonce, offset, data)  # nodes get ciphertext only
        return data if m.check_piece(index, data) else None


class Origin:
    def __init__(
        self,
        publish: Path,
        state: Path,
        key_file: Path,
        scan_interval: float = 1.0,
        protect: list[str] | None = None,
        web_seeds: list[str] | None = None,
        quota: QuotaPolicy | None = None,
    ):
        new_key = not key_file.exists()
        self.key = load_or_create_private_key(key_file)
        self.catalog = Catalog(publish, state / "catalog.json", self.key, protect, new_key=new_key)
        # users' uploads (PUT, through their edges): staged in the state dir, published under users/<user>/
        self.publisher = Publisher(self.key.public_key(), self.catalog, Staging(state / "uploads"), quota or QuotaPolicy(DEFAULT_QUOTA))
        self.scan_interval = scan_interval
        self.scan_wait = scan_interval  # --scan-interval, or longer for a folder whose walk is costly (scanpace.py)
        self.web_seeds = [s.rstrip("/") for s in web_seeds or []]  # --web-seed: the edges' public base URLs
        self._torrents: Recent[str, Torrent] = Recent(KEPT)  # by content id: made on first request, the latest KEPT kept
        self._making: dict[str, asyncio.Task] = {}
        self._hashing = asyncio.Semaphore(1)  # one child hashes at a time: the disk, not the CPU, is the limit
        self.metrics = Metrics("origin")
        self.metrics.gauge("published_files", "Files published", lambda: len(self.catalog.by_path))
        self.metrics.counter("hashed_bytes", "Bytes hashed since start", lambda: self.catalog.hashed_bytes)
        self.metrics.gauge("scan_interval_seconds", "Seconds between walks of the published folder", lambda: self.scan_wait)
        self._rescan = asyncio.Event()
        self.live = LiveWatcher(self.catalog)  # rewritten playlists and their segments, between scans
        self.metrics.counter("live_playlist_versions", "Playlist versions published by the live watcher", lambda: self.live.published)

    def withdraw(self, entry: Entry) -> None:
        m = entry.signed.manifest
        if self.catalog.by_path.get(m.path) is entry:
            gone = not entry.file.exists()
            if gone:  # deleted: a plain withdrawal, not a version on its way (it was logged as replaced: a review)
                log.info("withdrew %s: deleted on disk", m.path)
            elif entry.unchanged():  # same size, mtime and inode: bytes changed under them
                log.warning("%s no longer matches its manifest: withdrawn until re-hashed", m.path)
            else:
                log.info("%s was replaced on disk: republishing it once hashed", m.path)
            self.catalog.recheck(m.path, pending=not gone)
            self._rescan.set()

    def unpublished(self, rel: str) -> HttpError:
        """Why ``rel`` has no entry: being hashed again after it changed on disk (503, try again), or not published."""
        return republishing(rel) if rel in self.catalog.republishing else HttpError(404, f"{rel} is not published")

    async def scan(self) -> None:
        await self.catalog.scan(functools.partial(log.info, "%s"), self.scan_wait)

    async def _scan_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scan_wait):
                    await self._rescan.wait()
            self._rescan.clear()
            walked = self.catalog.walk_cpu_s
            try:
                await self.scan()
            except Exception:
                log.exception("scan of %s failed", self.catalog.root)
                continue
            # the walk's CPU time, not the scan's wall time: an origin busy serving took its wait for the CPU as the
            # walk's cost, and scanned every 67-78 s instead of 9 (an adversarial session); hashing is not the walk's
            self.scan_wait = scanpace.next_wait(self.scan_interval, self.catalog.walk_cpu_s - walked)

    # -- handlers --------------------------------------------------------------
    def _entry_by_path(self, request: web.Request) -> Entry:
        rel = file_request_path(request.raw_path)
        entry = self.catalog.by_path.get(rel)
        if entry is None:
            raise self.unpublished(rel)
        return entry

    def _entry_by_id(self, cid: str) -> Entry:
        entry = self.catalog.by_id.get(cid) or self.catalog.superseded.get(cid)  # a playlist just rewritten: still served
        if entry is None:
            replaced = [rel for rel, (_, old) in self.catalog.republishing.items() if old == cid]
            if replaced:  # its path's new version is being hashed: an edge asks again for the path, rather than dropping it
                raise self.unpublished(replaced[0])
            raise HttpError(404, f"content {cid[:80]} is not published (it may have changed)")
        return entry

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry_by_path(request)
        m = entry.signed.manifest
        transform = None
        if m.protection is not None and entry.key is not None:  # plaintext, but only for a token that covers it
            access.grant(request, self.key.public_key(), m.path, required=True)
            transform = cipher_for(entry.key, m.protection)
        return await serve_file(request, entry.signed, OriginSource(self, entry), self.metrics, transform=transform)

    async def get_content_key(self, request: web.Request) -> web.Response:
        """A protected file's key, for a token that covers its path (an edge's, or a user's)."""
        entry = self._entry_by_id(request.match_info["cid"])
        if entry.key is None:
            raise HttpError(404, f"{entry.signed.manifest.path} is not protected: it has no key")
        access.grant(request, self.key.public_key(), entry.signed.manifest.path, required=True)
        return access.key_response(entry.signed.content_id, entry.key)

    async def get_manifest(self, request: web.Request) -> web.Response:
        rel = manifest_request_path(request.raw_path)
        entry = self.catalog.by_path.get(rel)
        if entry is None:
            raise self.unpublished(rel)
        return manifest_response(request, entry.signed.etag, entry.raw, torrent_link(entry.signed.manifest))

    # -- BitTorrent ---------------------------------------------------------------
    def _entry_at(self, request: web.Request) -> Entry:
        """The entry a ``/torrent/<path>`` or ``/magnet/<path>`` request names: 404 if none, or if it has no torrent."""
        rel = manifest_request_path(request.raw_path)  # /torrent/<path>, /magnet/<path>: the same shape
        entry = self.catalog.by_path.get(rel)
        if entry is None:
            raise self.unpublished(rel)
        reason = why_none(entry.signed.manifest)
        if reason:
            raise HttpError(404, reason)
        return entry

    async def torrent(self, entry: Entry) -> Torrent:
        """The signed torrent of an entry, made once per content id (concurrent first requests share one hash)."""
        cid = entry.signed.content_id
        done = self._torrents.touch(cid)
        if done is not None:
            return done
        task = self._making.get(cid)
        if task is None:
            task = self._making[cid] = asyncio.create_task(self._make_torrent(entry))
            task.add_done_callback(lambda t: _forget(self._making, cid, t))
        return await asyncio.shield(task)

    async def _make_torrent(self, entry: Entry) -> Torrent:
        cid = entry.signed.content_id
        async with self._hashing:
            try:
                data = await build_in_child(entry.file, entry.signed.manifest)
            except TorrentError as exc:
                raise HttpError(500, str(exc)) from None
        if not entry.unchanged():  # it was hashed as it changed: the next scan republishes it, and the next request makes it anew
            self.withdraw(entry)
            raise republishing(entry.signed.manifest.path)
        torrent = sign(data, cid, self.key)
        for old in [c for c in self._torrents if c not in self.catalog.by_id]:  # withdrawn or replaced versions
            del self._torrents[old]
        self._torrents[cid] = torrent
        return torrent

    def _handed_out(self, request: web.Request, entry: Entry, torrent: Torrent) -> bytes:
        """The torrent with its web seeds: the ``--web-seed`` edges, else this origin itself."""
        path = entry.signed.manifest.path
        return hand_out(torrent, [web_seed(base, path) for base in self.web_seeds or [base_url(request)]])

    async def get_torrent(self, request: web.Request) -> web.Response:
        entry = self._entry_at(request)
        data = self._handed_out(request, entry, await self.torrent(entry))
        return torrent_response(data, entry.signed.manifest)

    async def get_magnet(self, request: web.Request) -> web.Response:
        entry = self._entry_at(request)
        return magnet_response(self._handed_out(request, entry, await self.torrent(entry)))

    async def get_content(self, request: web.Request) -> web.Response:
        entry = self._entry_by_id(request.match_info["cid"])
        return manifest_response(request, entry.signed.etag, entry.raw)

    async def get_piece(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry_by_id(request.match_info["cid"])
        index = piece_index(request, entry.signed.manifest.piece_count)
        data = await OriginSource(self, entry).fetch(index)
        self.metrics.sent["node"] += len(data)
        # written a chunk at a time, as edges send pieces: a whole body handed to aiohttp left a second copy of what the
        # socket had not taken in the transport's buffer (2 x 64 MiB per request for a 100 GiB file: an adversarial session)
        return await send_piece(request, data, UNCAPPED)

    async def get_have(self, request: web.Request) -> web.Response:
        entry = self._entry_by_id(request.match_info["cid"])
        n = entry.signed.manifest.piece_count
        return have_response(entry.signed.content_id, n, range(n))

    async def get_key(self, _: web.Request) -> web.Response:
        return web.Response(body=public_pem(self.key.public_key()), content_type="application/x-pem-file")

    async def get_status(self, request: web.Request) -> web.Response:
        limit = status_limit(request)
        published = self.catalog.by_path
        first = sorted(published) if limit is None else heapq.nsmallest(limit, published)
        return json_response(
            {
                **self.metrics.status(),
                "publish": str(self.catalog.root),
                "file_count": len(published),
                "files": {rel: published[rel].signed.content_id for rel in first},  # the first by path (?contents=N|all)
                "uploads_published": self.publisher.published,
            }
        )

    def app(self) -> web.Application:
        app = make_app(self.metrics)
        r = app.router
        r.add_get("/origin-key", self.get_key)
        r.add_get("/status", self.get_status)
        r.add_get("/manifest/" + PATH, self.get_manifest)
        r.add_get("/content/{cid}", self.get_content)
        r.add_get("/piece/{cid}/{index}", self.get_piece)
        r.add_get("/have/{cid}", self.get_have)
        r.add_get("/key/{cid}", self.get_content_key)
        r.add_get("/torrent/" + PATH, self.get_torrent)
        r.add_get("/magnet/" + PATH, self.get_magnet)
        r.add_get("/" + PATH, self.get_file)  # GET implies HEAD
        r.add_put("/" + PATH, self.publisher.put)

        async def start_scanning(app: web.Application):
            tasks = [asyncio.create_task(self._scan_loop()), asyncio.create_task(self.live.run())]
            tasks.append(asyncio.create_task(self.publisher.sweep_loop()))  # abandoned uploads: on a timer, not per request
            yield
            self.catalog.stopping.set()  # a hash under way gives up: its thread would keep the process alive until its end
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.catalog.fold()  # the state file whole: what an older release, which reads no journal, would start from

        app.cleanup_ctx.append(start_scanning)
        return app


def _forget(tasks: dict, key: str, task: asyncio.Task) -> None:
    """A finished task leaves the table; its exception is marked seen (its waiters may all have gone)."""
    tasks.pop(key, None)
    if not task.cancelled():
        task.exception()


async def run(origin: Origin, listen: tuple[str, int], access_log: bool, ssl_context=None, limits: ServerLimits | None = None) -> None:
    await origin.scan()
    protected = sum(1 for e in origin.catalog.by_path.values() if e.key is not None)
    log.info("publishing %d files (%d protected) from %s", len(origin.catalog.by_path), protected, origin.catalog.root)
    await serve(origin.app(), *listen, "origin", access_log, ssl_context, limits)
