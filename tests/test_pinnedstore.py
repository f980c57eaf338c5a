"""edgeswarm.node.pinnedstore: an edge's or a peer's store opens once the origin key is pinned."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import web
from conftest import DoubleServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_lying_upstream import FakeParent

from edgeswarm.errors import HttpError
from edgeswarm.node.pinnedstore import PinnedStore
from edgeswarm.node.upstream import Upstream
from edgeswarm.trust.signing import KeyFileError, public_pem


async def test_requests_before_the_key_is_known_wait_then_get_a_503(tmp_path):
    pinned = PinnedStore(tmp_path, None, None, "still learning the origin key")
    assert not pinned.key_known() and pinned.store is None
    with pytest.raises(HttpError) as err:
        await pinned.wait(0.05)
    assert (err.value.status, err.value.message, err.value.headers) == (503, "still learning the origin key", {"Retry-After": "2"})


async def test_a_given_key_opens_the_store_and_is_pinned_for_the_next_start(tmp_path):
    given = tmp_path / "origin.pem"
    given.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    cache = tmp_path / "cache"
    pinned = PinnedStore(cache, given, None, "-")
    assert pinned.key_known()
    waiter = asyncio.create_task(pinned.wait(5.0))  # a request that arrived first
    store = await pinned.open(Upstream(1.0), [])  # no source is asked: the key is given
    assert await waiter is store
    store.close()
    assert (cache / "origin.pub").read_bytes() == given.read_bytes()
    assert PinnedStore(cache, None, None, "-").key_known()


async def test_a_bad_key_file_is_an_error_not_a_store(tmp_path):
    given = tmp_path / "origin.pem"
    given.write_bytes(b"not a key")
    pinned = PinnedStore(tmp_path / "cache", given, None, "-")
    with pytest.raises(KeyFileError):
        await pinned.open(Upstream(1.0), [])
    assert pinned.store is None


async def test_a_store_failing_to_open_in_the_background_says_why_and_opens_once_the_disk_lets_it(tmp_path, caplog):
    """The key learnt, the disk refuses (here: a directory where the pinned key's temporary file goes): the 503 says so,
    one log line says so, and the store opens on a later try once the disk takes the key."""
    async with FakeParent(tmp_path) as parent:
        cache = tmp_path / "cache"
        pinned = PinnedStore(cache, None, None, "still learning the origin key")
        in_the_way = cache / f"origin.pub.{os.getpid()}.tmp"
        in_the_way.mkdir(parents=True)
        upstream = Upstream(5.0)
        await upstream.start()
        opener = await pinned.start(upstream, [parent.url])
        try:
            assert opener is not None
            with pytest.raises(HttpError) as err:
                await pinned.wait(1.5)
            assert err.value.status == 503 and err.value.message.startswith(f"cannot open the piece store in {cache}: Is a directory")
            in_the_way.rmdir()
            (await pinned.wait(10.0)).close()
            assert pinned.problem is None
            assert [r.message for r in caplog.records if "cannot open the piece store" in r.message] == [
                f"cannot open the piece store in {cache}: Is a directory; retrying"
            ]
        finally:
            opener.cancel()
            await upstream.close()


async def test_a_key_that_cannot_be_learnt_is_a_503_saying_why(tmp_path):
    """`edgeswarm get` of an edge that is down said only 'still learning the origin key from its edges'."""
    upstream = Upstream(1.0)
    await upstream.start()
    pinned = PinnedStore(tmp_path / "cache", None, None, "still learning the origin key")
    opener = await pinned.start(upstream, ["http://127.0.0.1:9"])  # the discard port: nothing listens
    try:
        with pytest.raises(HttpError) as err:
            await pinned.wait(0.5)
        assert err.value.status == 503
        assert err.value.message.startswith("still learning the origin key (http://127.0.0.1:9 is unreachable: "), err.value.message
    finally:
        assert opener is not None
        opener.cancel()
        await upstream.close()


async def test_a_one_shot_download_ends_at_the_first_round_that_cannot_learn_the_key(tmp_path):
    """`edgeswarm get` of an edge that is down waited 7.5 s, logging "retrying" five times, then said "peer is still
    learning the origin key from its edges (... Connect call failed ...)": it ends at once, saying why, as curl does."""
    upstream = Upstream(1.0)
    await upstream.start()
    pinned = PinnedStore(tmp_path / "cache", None, None, "still learning the origin key")
    pinned.one_shot = True
    opener = await pinned.start(upstream, ["http://127.0.0.1:9"])
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(HttpError) as err:
            await pinned.wait(5.0)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert err.value.message == "http://127.0.0.1:9 is unreachable: Connection refused", err.value.message
    finally:
        assert opener is not None
        opener.cancel()
        await upstream.close()


class _Learning(DoubleServer):
    """An edge that answers 503 for its first ``busy`` asks of /origin-key (learning the key itself), then serves it."""

    def __init__(self, busy: int):
        self.busy, self.pem = busy, public_pem(Ed25519PrivateKey.generate().public_key())

    async def handle(self, request: web.Request) -> web.Response:
        if self.busy > 0:
            self.busy -= 1
            return web.Response(status=503, text="edge is still learning the origin key\n", headers={"Retry-After": "1"})
        return web.Response(body=self.pem, content_type="application/x-pem-file")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/origin-key", self.handle)


async def test_a_one_shot_download_waits_for_an_edge_that_answers_it_is_learning_the_key(tmp_path):
    """Ending at the first round was right for an edge that cannot be reached, not for one that answers 503 while it
    learns the key itself: a script starting origin, edge and `get` together failed (a review)."""
    upstream = Upstream(1.0)
    await upstream.start()
    pinned = PinnedStore(tmp_path / "cache", None, None, "still learning the origin key")
    pinned.one_shot = True
    async with _Learning(busy=2) as edge:
        opener = await pinned.start(upstream, [edge.url])
        try:
            store = await pinned.wait(5.0)
            assert public_pem(store.public_key) == edge.pem
        finally:
            assert opener is not None
            await opener
            await upstream.close()


class _NoNode(DoubleServer):
    """A web server where an edge should be: 404 for everything."""

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


async def test_waits_end_at_once_while_every_source_is_no_node_whenever_they_come(tmp_path):
    """Each retry round said 'not hopeless' at its first failure: with two sources, a request in the middle of a round
    waited its whole timeout for the answer the others got at once (a review)."""
    upstream = Upstream(1.0)
    await upstream.start()
    async with _NoNode() as a, _NoNode() as b:
        pinned = PinnedStore(tmp_path / "cache", None, None, "still learning the origin key")
        opener = await pinned.start(upstream, [a.url, b.url])
        try:
            for _ in range(40):  # spread over several rounds (0.5 s, 1 s, 2 s apart)
                async with asyncio.timeout(5):  # a wait of its whole 30 s fails here
                    with pytest.raises(HttpError) as err:
                        await pinned.wait(30)
                assert "it is no edgeswarm edge nor origin" in err.value.message
                await asyncio.sleep(0.1)
        finally:
            assert opener is not None
            opener.cancel()
            await upstream.close()
