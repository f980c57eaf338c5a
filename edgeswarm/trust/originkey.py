"""Pinning the origin's public key: how edges and peers decide which manifests to trust.

Given with ``--origin-key``, or pinned in ``CACHE/origin.pub`` on a previous
start, or else learned once from an upstream node's ``/origin-key`` and
pinned from then on (trust on first use, as ssh does).  Manifests signed by
any other key are refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeswarm.node.upstream import Hopeless, Unreachable, Upstream, UpstreamError, first_answer
from edgeswarm.trust.signing import KeyFileError, load_public_key, public_pem
from edgeswarm.wholefile import write_whole

log = logging.getLogger("edgeswarm.trust.originkey")


async def pin(
    cache: Path,
    given: Path | None,
    upstream: Upstream,
    sources: list[str],
    failed: Callable[[str, bool | None], None] | None = None,
    one_shot: bool = False,
) -> Ed25519PublicKey:
    """The key to trust; a bad key file raises KeyFileError with its reason.  ``failed``, ``one_shot``: see ``learn``."""
    pinned = cache / "origin.pub"
    if given is not None:
        pem = given.read_bytes()
    elif pinned.exists():
        pem = pinned.read_bytes()
    else:
        pem = await learn(upstream, sources, failed, one_shot)
    key = load_public_key(pem, str(given or pinned))
    if given is not None and pinned.exists() and pinned.read_bytes() != public_pem(key):
        await _confirm(upstream, sources, public_pem(key), given, pinned)
    cache.mkdir(parents=True, exist_ok=True)
    if not pinned.exists() or pinned.read_bytes() != public_pem(key):
        write_whole(pinned, public_pem(key))  # whole or absent: worker processes read it at once
    return key


async def _first_served(
    upstream: Upstream, sources: list[str], failures: list[tuple[str, UpstreamError]] | None = None
) -> tuple[str, bytes] | None:
    """The first source that serves a key, with it (PEM); None if none does now, each one's failure in ``failures``.

    Asked as manifests are (``first_answer``): the next source also when one has not answered within ``HEDGE_AFTER``.
    One after another, a wedged first source (stopped, taking connections) held `get` for its whole timeout and the
    second was never asked before `get`'s wait for the key ended: "origin key unknown" with a healthy edge beside it
    (an adversarial session).
    """

    async def ask(source: str) -> tuple[str, bytes]:
        try:
            return source, await _served(upstream, source)
        except UpstreamError as exc:
            if failures is not None:
                failures.append((source, exc))
            raise

    return await first_answer(sources, ask, [])


async def _confirm(upstream: Upstream, sources: list[str], served: bytes, given: Path, pinned: Path) -> None:
    """A given key replaces the one the cache was pinned to, which drops everything cached under it: only when the first
    source that answers serves the given key (a rotation), or none answers; KeyFileError when it serves another.

    A stale or mistyped ``--origin-key`` emptied a cache while the parent
    served the real key, with no word but a line per content dropped (an
    adversarial session): a 50 GB edge then refills from its parent.
    """
    first = await _first_served(upstream, sources)
    if first is None:
        log.warning(
            "%s replaces the origin key pinned in %s, and no source answered to confirm it: what was cached under the old key is dropped",
            given,
            pinned,
        )
        return
    source, theirs = first
    if theirs != served:
        raise KeyFileError(
            f"{given} is not the origin key {source} serves, and {pinned} pins this cache to another: it would drop "
            f"everything cached. Give the key the origin signs with, or delete {pinned} to start this cache afresh"
        )
    log.warning(
        "%s replaces the origin key pinned in %s (%s serves it): what was cached under the old key is dropped", given, pinned, source
    )


async def check_pinned(upstream: Upstream, sources: list[str], key: Ed25519PublicKey, pinned: Path) -> None:
    """Warn once when the first source that serves a key serves another than the pinned one.

    Each of its manifests is then refused, path by path, and cached files
    are served as they are: an operator who replaced the origin's key on
    purpose is told here how to pin the new one, once, at start.
    """
    first = await _first_served(upstream, sources)
    if first is not None and first[1] != public_pem(key):
        log.warning(
            "%s serves another origin key than the one pinned in %s: its manifests are refused and cached files are served "
            "as they are; if the origin's key was replaced on purpose, stop this node and delete %s (it then pins the "
            "new key and drops what it cached under the old one)",
            first[0],
            pinned,
            pinned,
        )


async def learn(
    upstream: Upstream, sources: list[str], failed: Callable[[str, bool | None], None] | None = None, one_shot: bool = False
) -> bytes:
    """Ask the sources (``_first_served``) until one serves a usable key, backing off up to 10 s between rounds.

    ``failed`` is told why each try failed, so that what waits on the key can say why (an edge that cannot be reached),
    and at the end of each round whether every source failed in a way no retry changes (``Hopeless``: no edgeswarm
    node, one of the other IP family than ``--listen``, a certificate that does not verify): then nothing is worth
    waiting for (a one-shot ``get`` of a web server's URL waited 10 s), though the node goes on trying.  Within a round
    it is told None: what the round will show is not known yet (saying False at each round's first failure made
    requests wait their whole timeout half the time: a review).  ``one_shot`` (`get`): a source that cannot be
    reached counts as hopeless too, as curl ends at a refused connection (`get` waited 7.5 s, then said "still
    learning"), though one that answers (an edge learning the key itself: 503) is waited for; and a failed try is a
    debug line, not a warning that says "retrying": `get` ends with the reason.
    """
    delay = 0.5
    while True:
        failures: list[tuple[str, UpstreamError]] = []  # _served's every failure: a key that does not load is a NotANode
        first = await _first_served(upstream, sources, failures)
        if first is not None:
            log.info("pinned the origin key served by %s", first[0])
            return first[1]
        hopeless = sum(isinstance(exc, Hopeless) or (one_shot and isinstance(exc, Unreachable)) for _, exc in failures)
        for n, (source, exc) in enumerate(failures, 1):
            log.log(logging.DEBUG if one_shot else logging.WARNING, "cannot learn the origin key from %s yet: %s; retrying", source, exc)
            if failed is not None:
                failed(str(exc), hopeless == len(failures) if n == len(failures) else None)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10)


class NotANode(Hopeless):
    """A source whose answer for ``/origin-key`` says it is no edgeswarm node at all: a web server on the wrong port, say."""


async def _served(upstream: Upstream, source: str) -> bytes:
    """The public key ``source`` serves at ``/origin-key``, as PEM; UpstreamError (NotANode) saying why not."""
    reply = await upstream.get(source, "/origin-key")
    if reply.status == 404:  # every edgeswarm node serves it
        raise NotANode(502, f"{source} answered 404 for /origin-key: it is no edgeswarm edge nor origin")
    if reply.status in (301, 302, 303, 307, 308):  # no node redirects it; a router does (peer --edge ROUTER, a mistake
        to = reply.headers.get("Location", "")[:200]  # README names, was "answered 302 ...; retrying" for good), and so
        raise NotANode(  # does a proxy sending http to https (a review)
            502,
            f"{source} answered {reply.status} for /origin-key (to {to}): no edgeswarm node redirects it; a router "
            "goes in --router, and a proxy's redirect means the URL it names",
        )
    if reply.status != 200:
        raise UpstreamError(502, f"{source} answered {reply.status} for /origin-key")
    try:
        return public_pem(load_public_key(reply.body, f"{source}/origin-key"))
    except KeyFileError as exc:  # a page that answers every path (a web application), say
        raise NotANode(502, f"{exc}: it is no edgeswarm edge nor origin") from None
