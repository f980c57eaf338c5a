"""Getting manifests from upstream nodes: one copy of the fetch, the checks and revalidation for every node.

Edges ask their parent, peer gateways and ``edgeswarm get`` ask their edges;
all of them go through ``ManifestFetcher``.  A manifest from upstream is used
only if it is signed by the pinned origin key, names the path (or has the id)
that was asked for, and is not older than the version this node already
holds or has accepted for that path (``ManifestOrder``).  Anything else is a
bad source: the next one is tried, and with none left the cached manifest is
served (logged once) or, with none cached, the request fails with the reasons.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.node.collapse import Collapser
from edgeswarm.node.daemon import answer_started
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.upstream import (
    MAX_MANIFEST,
    Busy,
    OutOfDescriptorsHere,
    Upstream,
    UpstreamError,
    busy,
    first_answer,
    passed_on,
    said_in,
)
from edgeswarm.policy import live
from edgeswarm.policy.recent import Recent
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.protocol.manifest import ManifestError, SignedManifest
from edgeswarm.protocol.paths import manifest_url
from edgeswarm.store.piecestore import PieceStore

log = logging.getLogger("edgeswarm.node.manifestfetch")
UNKNOWN_FOR = 30.0  # seconds a content id a source answered 404 for is not asked again (by_id); below peer.REFUSED_QUIET
UNKNOWN_KEPT = 4096  # such 404s remembered at most, the oldest forgotten first
PATHS_KEPT = 100_000  # paths whose newest version and last check are remembered: live streams name new ones for ever


class OlderVersion(UpstreamError):
    """A source's manifest is an older version than this node holds of that path: refused, but that path's matter only
    (a version the origin republished without its history), so the source is not set aside for every other path: with
    one parent, all of an edge's cached files stopped being revalidated for up to a minute."""


class ManifestOrder:
    """Manifests of one path only move forward: a newer version needs a larger ``modified``.

    The origin gives every new version of a path a ``modified`` greater than
    the last one's (catalog.py), so two different versions never tie.  A node
    remembers the newest version it accepted for each path, beyond what its
    store holds (a withdrawn path is forgotten by the store, not here), and
    refuses a different manifest whose ``modified`` is not larger: a parent
    cannot roll a file back to an older signed version.
    """

    def __init__(self) -> None:
        self._newest: Recent[str, tuple[int, str]] = Recent(PATHS_KEPT)  # path -> (modified, content id) of the newest accepted

    def problem(self, signed: SignedManifest, held: SignedManifest | None) -> str | None:
        """Why ``signed`` may not replace what is known of its path, or None if it may."""
        m = signed.manifest
        known = [v for v in (self._newest.get(m.path), held and (held.manifest.modified, held.content_id)) if v]
        if not known:
            return None
        modified, cid = max(known)
        if signed.content_id == cid or m.modified > modified:
            return None
        if m.modified == modified:  # another version dated the same (an origin that lost its state re-signed it)
            return f"it is another version of {m.path!r} dated the same as the version held (modified {modified})"
        return f"it is an older version of {m.path!r} (modified {m.modified}, not after {modified} of the version held)"

    def accept(self, signed: SignedManifest) -> None:
        m = signed.manifest
        mark = (m.modified, signed.content_id)
        self._newest[m.path] = max(mark, self._newest.get(m.path, mark))


STALE_WAIT = 1.0  # seconds a read waits for a revalidation before it is served the cached manifest (the ask goes on)


class ManifestFetcher:
    """Fetches, checks and revalidates the manifests of one node.

    ``role`` names the sources in messages ("parent", "edge").  With
    ``user_credential`` the headers carry a user's token (a peer's, its
    user's), so a source's 401/403 is that user's to fix: a 403 saying so,
    with no ``WWW-Authenticate``, as no credential the requester sends would
    change it (a player that sent one got the same 401 again: an adversarial
    session); otherwise it is the node's own credential that was refused,
    which is the source's problem (502).
    """

    def __init__(
        self,
        upstream: Upstream,
        metrics: Metrics,
        ranking: SourceRanking,
        revalidate: float,
        role: str,
        user_credential: bool = False,
        on_failure: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ):
        self.upstream, self.metrics, self.ranking = upstream, metrics, ranking  # the node's: a failing source ranks lower
        self.timeout = timeout  # a source's answer, at most (None: the upstream's); a peer gives its edge's 504 time to come
        self.revalidate_after = revalidate
        self.role = role
        self.user_credential = user_credential
        self.on_failure = on_failure  # a peer checks that edge's tracker soon: it may have restarted
        self.order = ManifestOrder()
        self._checked: Recent[str, float] = Recent(PATHS_KEPT)  # path -> when a source last confirmed its manifest
        self._stale_warned: set[str] = set()
        self._withdrawn: Recent[str, str] = Recent(PATHS_KEPT)  # path -> the content id a source no longer publishes (withdraw)
        self._unknown: Recent[tuple[str, str], float] = Recent(UNKNOWN_KEPT)  # (source, id) -> when it answered 404
        self._asking: Collapser[tuple[SignedManifest, str | None]] = Collapser()  # revalidations under way, by path and headers

    def fresh(self, path: str) -> bool:
        """Confirmed by a source less than ``revalidate`` seconds ago (a live playlist: less, policy/live.py): no need to ask again."""
        return time.monotonic() - self._checked.get(path, -1e9) < live.revalidate_after(path, self.revalidate_after)

    def expire(self, path: str) -> None:
        """Ask a source again on the next request for ``path``: it was just republished (an upload through this node)."""
        self._checked.pop(path, None)

    def withdraw(self, path: str, cid: str) -> HttpError:
        """A source answered 404 for a piece or the key of ``cid``: it publishes no more that version of ``path``.  Its
        next read asks again, and if no source gives the current manifest, a version held in part is not served stale:
        each read of it went out 200 and was cut at the same byte, until the node was given the origin's new key.
        Returns the 404 its reader gets."""
        self.expire(path)
        self._withdrawn[path] = cid
        return HttpError(404, f"content {cid[:12]} ({path}) is no longer published")

    async def serving(
        self,
        request: web.Request,
        signed: SignedManifest,
        serve: Callable[[SignedManifest], Awaitable[web.StreamResponse]],
        current: Callable[[], Awaitable[SignedManifest]],
    ) -> web.StreamResponse:
        """``serve(signed)``; or, when a source said meanwhile that it no longer publishes that version (a piece's or a
        key's 404: ``withdraw``) and nothing went out yet, ``serve`` of the ``current`` one.  A 404 for a file that is
        there was final to a player (an adversarial session: a file replaced by a rename at the origin).  Edges and
        peers' gateways alike."""
        try:
            return await serve(signed)
        except HttpError as exc:
            if exc.status != 404 or answer_started(request) or self._withdrawn.get(signed.manifest.path) != signed.content_id:
                raise
        return await serve(await current())

    async def revalidate(self, store: PieceStore, path: str, sources: list[str], headers: dict[str, str] | None = None) -> SignedManifest:
        """The current manifest of ``path`` from the first source that gives a good one; else the cached one, else HttpError.

        Reads of a path that come while it is being asked wait for that ask
        (collapsed).  With a cached manifest (not a live playlist, whose
        staleness is a stall, nor a version withdrawn), a read waits at most until ``STALE_WAIT`` after
        the ask began: a hung edge's 10 s timeout was every read's (a peer
        holding the whole file served each seek 10 s late).  The ask goes on
        meanwhile and what it learns is kept (stale-while-revalidate, RFC
        5861).  Sources set aside after failing (``ranking``: a back-off that
        doubles) are not asked until their time aside is over.
        """
        headers = headers or {}
        cached = store.manifest_for_path(path)
        asking = self._asking.join((path, frozenset(headers.items())), lambda: self._revalidate(store, path, sources, headers, cached))
        # a version a source withdrew is worth no early answer: served stale, its next piece was a 404 "no longer
        # published" for a file the origin served, whenever the source took over STALE_WAIT (an adversarial session)
        withdrawn = cached is not None and self._withdrawn.get(path) == cached.content_id
        if cached is None or live.is_playlist(path) or withdrawn:
            return self._confirmed(path, *await asking.future)
        try:
            done, _ = await asyncio.wait({asking.future}, timeout=max(0.0, asking.began + STALE_WAIT - time.monotonic()))
        finally:
            if not asking.future.done():
                asking.future.cancel()  # this read's wait only (timed out, or its client left): the ask goes on
        if done:
            return self._confirmed(path, *asking.future.result())
        return self._stale(cached, path, f"no answer within {STALE_WAIT:g} s (still asking)")

    def _confirmed(self, path: str, signed: SignedManifest, stale: str | None) -> SignedManifest:
        """What a revalidation gave: a source's manifest, or the cached one and why no source gave one (served stale)."""
        return signed if stale is None else self._stale(signed, path, stale)

    async def _revalidate(
        self, store: PieceStore, path: str, sources: list[str], headers: dict[str, str], cached: SignedManifest | None
    ) -> tuple[SignedManifest, str | None]:
        """(a source's manifest, None), or (``cached``, why no source gave one); HttpError with nothing cached.  The
        sources are asked in turn, the next also when one has not answered within ``HEDGE_AFTER`` (``first_answer``);
        a 404, a token refused, is the answer, as from the only source."""
        problems: list[UpstreamError] = []
        withdrawn = cached is not None and self._withdrawn.get(path) == cached.content_id
        if cached is not None and not live.is_playlist(path) and not withdrawn:  # a withdrawn one is worth nothing: ask
            now = time.monotonic()
            sources = [s for s in sources if self.ranking.available(s, now)]
            if not sources:
                problems.append(UpstreamError(502, f"every {self.role} is set aside after failing"))
        # a wedged first source (it takes connections and never answers) held a new file's first read for its whole
        # timeout, 12 s, where a second edge answered at once (an adversarial session): the next is asked meanwhile
        signed = await first_answer(
            sources, lambda source: self._ask_source(store, source, path, cached, headers), problems, self.ranking, self.role
        )
        if signed is not None:
            self._checked[path] = time.monotonic()
            self._stale_warned.discard(path)
            self._withdrawn.pop(path, None)
            return signed, None
        status, after = passed_on(problems)
        reasons = "; ".join(p.message for p in problems) or f"no {self.role} to ask"
        if cached is None:
            raise HttpError(status, f"no {self.role} could give the manifest of {path}: {reasons}", after)
        if withdrawn and len(store.held(cached.content_id)) < cached.manifest.piece_count:
            raise HttpError(
                status,
                f"the version of {path} held here is no longer published, in part only, and no {self.role} gave the current one: {reasons}",
                after,
            )
        return cached, reasons

    async def _ask_source(
        self, store: PieceStore, source: str, path: str, cached: SignedManifest | None, headers: dict[str, str]
    ) -> SignedManifest:
        """``_ask``, and a source that failed set aside (``ranking``) and told of (``on_failure``)."""
        began = time.monotonic()
        try:
            return await self._ask(store, source, path, cached, headers)
        except UpstreamError as exc:
            if not isinstance(exc, (OutOfDescriptorsHere, OlderVersion, Busy)):  # not a failing source: it is not set aside
                self.ranking.failure(source, time.monotonic(), began)
                if self.on_failure is not None:
                    self.on_failure(source)
            raise

    def _stale(self, cached: SignedManifest, path: str, reasons: str) -> SignedManifest:
        """The cached manifest, served without revalidation: logged once until a source confirms one again, counted always."""
        if path not in self._stale_warned:
            log.warning("serving cached %s without revalidation: %s", path, reasons)
            self._stale_warned.add(path)
        self.metrics.events[("stale_manifest", "")] += 1
        return cached

    async def _ask(
        self, store: PieceStore, source: str, path: str, cached: SignedManifest | None, headers: dict[str, str]
    ) -> SignedManifest:
        """One source's manifest of ``path``: checked and stored; HttpError to pass on as it is, UpstreamError to try another."""
        who = f"{self.role} {source}"
        conditional = {"If-None-Match": cached.etag} if cached else {}
        reply = await self.upstream.get(source, manifest_url(path), {**headers, **conditional}, self.timeout, limit=MAX_MANIFEST)
        if reply.status == 304 and cached is not None:
            return cached
        if reply.status == 404:
            store.forget_path(path)
            raise HttpError(404, f"no such file: {path} is not published")
        if reply.status in (401, 403) and self.user_credential:  # the user's token is missing, expired or too narrow
            why = said_in(reply.body)
            raise HttpError(403, f"{source} refused /{path}: {why}")
        if reply.status != 200:
            why = f"{who} answered {reply.status} for {path}: {said_in(reply.body)}"
            raise busy(reply.status, reply.headers, why) or UpstreamError(502, why)
        try:
            signed = SignedManifest.parse(reply.body, store.public_key)
            if signed.manifest.path != path:
                raise ManifestError(f"it is the manifest of {signed.manifest.path!r}, not of {path!r}")
        except ManifestError as exc:
            raise self._bad(source, f"{who} sent a bad manifest for {path}: {exc}") from None
        problem = self.order.problem(signed, store.manifest_for_path(path))
        if problem:
            raise self._bad(source, f"{who} sent a bad manifest for {path}: {problem}", OlderVersion)
        self._keep(store, signed, reply.body)
        return signed

    async def by_id(self, store: PieceStore, source: str, cid: str, headers: dict[str, str] | None = None) -> SignedManifest:
        """The manifest with content id ``cid`` from ``source`` (``/content/<id>``), checked and stored; else HttpError.

        A 404 is remembered ``UNKNOWN_FOR``: a version withdrawn while peers
        still held it was asked of the origin at each of their announces (a
        refusal, so announced again as new: 268 origin requests in 26 minutes
        for one file, an adversarial soak), as nginx caches a 404 a while.
        """
        who = f"{self.role} {source}"
        when = self._unknown.get((source, cid))
        if when is not None and time.monotonic() - when < UNKNOWN_FOR:
            raise HttpError(404, f"{who} answered 404 for content {cid[:80]}")
        try:
            reply = await self.upstream.get(source, f"/content/{quote(cid, safe='')}", headers, self.timeout, limit=MAX_MANIFEST)
        except UpstreamError as exc:
            raise HttpError(exc.status, exc.message) from None
        if reply.status != 200:
            why = f"{who} answered {reply.status} for content {cid[:80]}"
            if reply.status == 404:  # a few thousand kept, the oldest dropped: made-up ids grew it by 0.55 kB each (a review)
                self._unknown[source, cid] = time.monotonic()
            raise busy(reply.status, reply.headers, why) or HttpError(404 if reply.status == 404 else 502, why)
        try:
            signed = SignedManifest.parse(reply.body, store.public_key)
        except ManifestError as exc:
            raise self._bad(source, f"{who} sent a bad manifest: {exc}", HttpError) from None
        if signed.content_id != cid:
            raise self._bad(source, f"{who} sent the manifest of another content", HttpError)
        self._keep(store, signed, reply.body)
        return signed

    def _bad(self, source: str, why: str, kind: type[HttpError] = UpstreamError) -> HttpError:
        """A refused manifest from ``source``, counted as its ``bad_manifest`` event: the error to raise."""
        self.metrics.events[("bad_manifest", source)] += 1
        return kind(502, why)

    def _keep(self, store: PieceStore, signed: SignedManifest, raw: bytes) -> None:
        store.put_manifest(signed, raw)
        self.order.accept(signed)
