"""ConnectionPolicy: which connections a node closes (header and idle timeouts, the cap)."""

import asyncio
import inspect
import os
import socket

import pytest
from aiohttp.web_protocol import RequestHandler
from conftest import exhaust, spare_descriptors

from edgeswarm.node.connlimit import BODY_STEP, ConnectionPolicy, file_budget
from edgeswarm.node.daemon import Servers, accept_one_pass
from edgeswarm.store.piecestore import OPEN_FILES


def policy(cap: int = 10) -> ConnectionPolicy[str]:
    return ConnectionPolicy(cap, header_timeout=20.0, idle_timeout=75.0)


def test_a_new_connection_must_send_its_head_within_the_header_timeout():
    p = policy()
    p.opened("slow", 0.0)
    p.opened("quick", 1.0)
    p.started("quick", 1.0)
    assert p.expired(19.9) == ([], [], [])
    assert p.expired(20.0) == (["slow"], [], [])
    assert len(p) == 1  # "quick" is busy: never expired


def test_trickled_bytes_do_not_restart_the_header_clock():
    p = policy()
    p.opened("loris", 0.0)
    for t in range(1, 20):
        p.data("loris", float(t))
    assert p.expired(20.0) == (["loris"], [], [])


def test_an_idle_connection_closes_after_the_idle_timeout_and_a_new_request_starts_the_header_clock():
    p = policy()
    p.opened("a", 0.0)
    p.started("a", 0.0)
    p.finished("a", 5.0)
    assert p.expired(79.9) == ([], [], [])
    p.data("a", 79.9)  # the next request begins: now it has the header timeout, not the idle one
    assert p.expired(99.8) == ([], [], [])
    assert p.expired(99.9) == (["a"], [], [])


def test_a_request_body_must_arrive_within_the_header_timeout_of_its_head():
    p = policy()
    p.opened("slow body", 0.0)
    p.started("slow body", 1.0, body_pending=True)
    p.opened("quick body", 2.0)
    p.started("quick body", 2.0, body_pending=True)
    p.body_done("quick body")
    assert p.expired(20.9) == ([], [], [])
    assert p.expired(21.0) == (["slow body"], [], [])
    assert p.expired(1000.0) == ([], [], [])  # the other is busy with a complete body
    assert len(p) == 1


def test_a_body_that_keeps_coming_goes_on_and_one_that_trickles_is_cut():
    """A whole body within the header timeout cut every 8 MiB chunk of `publish` below 0.5 Mbit/s (an adversarial
    session): each BODY_STEP bytes restart the body's clock, and a trickle of less never does."""
    p = policy()
    p.opened("upload", 0.0)
    p.started("upload", 0.0, body_pending=True)
    p.opened("trickle", 0.0)
    p.started("trickle", 0.0, body_pending=True)
    for second in range(1, 200):  # 200 KB/s for 200 s, and one byte a second
        p.data("upload", float(second), 200_000)
        p.data("trickle", float(second), 1)
        late, _, _ = p.expired(float(second) + 0.5)
        assert late == ([] if second < 20 else ["trickle"] if second == 20 else []), (second, late)
    p.data("upload", 200.0, BODY_STEP - 1)  # less than a step since its last one (at 199 s): the clock goes on
    assert p.expired(218.9) == ([], [], []) and p.expired(219.0) == (["upload"], [], [])


def test_a_connection_with_a_body_arriving_is_not_closed_to_make_room():
    p = policy(cap=1)
    p.opened("upload", 0.0)
    p.started("upload", 0.0, body_pending=True)
    assert p.opened("new", 1.0) == ["new"]


def test_a_client_that_stops_reading_its_response_is_closed_after_the_idle_timeout():
    p = policy()
    p.opened("stuck", 0.0)
    p.started("stuck", 0.0)
    p.opened("slow", 0.0)
    p.started("slow", 0.0)
    p.stalled("stuck", 10.0)
    p.stalled("slow", 10.0)
    p.stalled("slow", 50.0)  # still paused: the clock does not restart
    p.flowing("slow")  # it read something
    assert p.expired(84.9) == ([], [], [])
    assert p.expired(85.0) == ([], [], ["stuck"])
    assert len(p) == 2  # counted until the close is seen
    p.closed("stuck")
    assert len(p) == 1


def test_busy_connections_are_never_expired():
    p = policy()
    p.opened("download", 0.0)
    p.started("download", 0.0)
    assert p.expired(10_000.0) == ([], [], [])
    p.finished("download", 10_000.0)
    assert p.expired(10_075.0) == ([], ["download"], [])


def test_at_the_cap_the_longest_waiting_connection_makes_room():
    p = policy(cap=3)
    p.opened("busy", 0.0)
    p.started("busy", 0.0)
    p.opened("idle", 1.0)
    p.started("idle", 1.0)
    p.finished("idle", 2.0)
    p.opened("head", 3.0)
    assert p.opened("new", 4.0) == ["idle"]  # idle since 2.0: waiting longest
    assert p.opened("newer", 5.0) == ["head"]
    assert len(p) == 3


def test_at_the_cap_with_every_other_connection_busy_the_newcomer_is_refused():
    p = policy(cap=2)
    for conn in ("a", "b"):
        p.opened(conn, 0.0)
        p.started(conn, 0.0)
    assert p.opened("c", 1.0) == ["c"]
    assert len(p) == 2


def test_outside_connections_leave_the_reserve_free_and_the_reserved_site_may_use_the_whole_cap():
    """A peer keeps part of its cap for its gateway: other peers' HAVE streams (busy for good) took all of it once."""
    p = policy(cap=4)
    assert p.reserve(1) == 1
    for conn in ("s1", "s2", "s3"):  # three streams: busy
        assert p.opened(conn, 0.0, outside=True) == []
        p.started(conn, 0.0)
    assert p.opened("s4", 1.0, outside=True) == ["s4"]  # a fourth outside one is refused, though the cap has room
    assert p.opened("player", 2.0) == []  # the reserved site's client gets the room
    p.finished("s1", 3.0)  # an outside connection waiting: the one an outside newcomer replaces
    assert p.opened("s5", 4.0, outside=True) == ["s1"]
    p.started("s5", 4.0)
    p.finished("player", 5.0)
    assert p.opened("player2", 6.0) == ["player"]  # at the whole cap, the longest waiting of any site makes room
    assert len(p) == 4


def test_closed_forgets_and_is_idempotent():
    p = policy(cap=1)
    p.opened("a", 0.0)
    p.closed("a")
    p.closed("a")
    assert len(p) == 0
    assert p.opened("b", 1.0) == []


def test_shedding_takes_the_longest_waiting_and_leaves_busy_ones():
    p = policy()
    p.opened("busy", 0.0)
    p.started("busy", 0.0)
    for t, conn in enumerate(("w1", "w2", "w3"), start=1):
        p.opened(conn, float(t))
    assert p.oldest_waiting(2) == ["w1", "w2"]
    assert p.oldest_waiting(5) == ["w3"]
    assert p.waiting == 0 and len(p) == 1


def test_the_cap_is_at_least_one():
    with pytest.raises(ValueError):
        ConnectionPolicy(0, 1.0, 1.0)


@pytest.mark.parametrize("limit", [16, 32, 64, 100, 128, 256, 1000, 1024, 4096, 65536, 1 << 20])
def test_the_default_shares_of_the_open_file_limit_fit_under_it(limit):
    """Each connection may hold a second descriptor (an upstream fetch, a piece being written): both fit, with the piece files."""
    b = file_budget(limit)
    assert b.reserve + b.piece_files + 2 * b.connections <= limit and b.fits
    assert 4 <= b.piece_files <= OPEN_FILES and b.connections >= 4


def test_the_shares_under_common_limits():
    assert (file_budget(64).piece_files, file_budget(64).connections) == (12, 18)  # prlimit --nofile=64
    assert (file_budget(1024).piece_files, file_budget(1024).connections) == (224, 336)  # the usual soft limit
    assert (file_budget(65536).piece_files, file_budget(65536).connections) == (OPEN_FILES, 16384)  # systemd LimitNOFILE=65536


def test_a_cap_given_by_the_operator_is_kept_and_said_not_to_fit_when_it_does_not():
    assert file_budget(256, 1000).connections == 1000 and not file_budget(256, 1000).fits
    assert file_budget(1024, 500).fits


def test_the_aiohttp_hooks_the_daemons_rely_on_are_there():
    """daemon._Handler wraps aiohttp's private per-request step; an aiohttp upgrade that moves it must fail here."""
    assert list(inspect.signature(RequestHandler._handle_request).parameters) == ["self", "request", "start_time", "request_handler"]
    assert list(inspect.signature(RequestHandler.handle_error).parameters) == ["self", "request", "status", "exc", "message"]


def test_an_accept_pass_out_of_descriptors_stops_at_the_first_failure_and_retries_once():
    """Python 3.11 tried the rest of its backlog, each failure scheduling a retry of its own: a spin under a low limit."""
    loop = asyncio.new_event_loop()
    failures: list[dict] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    accept_one_pass(loop)
    accept_one_pass(loop)  # idempotent
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]  # waiting in the backlog
    try:
        with spare_descriptors(0):
            held = exhaust()
            try:
                loop._accept_connection(lambda: None, listener, None, None, 128)  # type: ignore[attr-defined]
            finally:
                for fd in held:
                    os.close(fd)
        assert len(failures) == 1 and "out of system resource" in failures[0]["message"]
        assert len(loop._scheduled) == 1  # type: ignore[attr-defined]  # one retry, a second later
        listener.close()
        loop._scheduled[0]._run()  # type: ignore[attr-defined]  # the retry of a server closed meanwhile: nothing, no traceback
        assert len(failures) == 1
    finally:
        for c in clients:
            c.close()
        listener.close()
        loop.close()


async def test_a_served_tls_connection_counts_from_its_handshake_and_reads_into_a_small_buffer(tmp_path):
    """asyncio counts a TLS connection (connection_made) once its handshake is done, and gives each 256 KiB to read
    into: 1 200 silent sockets escaped an HTTPS node's cap, and 2 000 idle clients took an edge to 615 MB (an
    adversarial session).  The hooks are asyncio's private ones: an upgrade that moves them must fail here."""
    import ssl

    from aiohttp import web
    from test_tls import CA

    params = inspect.signature(asyncio.selector_events.BaseSelectorEventLoop._make_ssl_transport).parameters
    assert list(params)[:5] == ["self", "rawsock", "protocol", "sslcontext", "waiter"] and "server_side" in params
    cert, key = CA(tmp_path / "pki", "ca").issue("node")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    servers = Servers("test", ssl_context=context)
    bound = await servers.start([(web.Application(), "127.0.0.1", 0, "")])
    policy = servers._runners[0]._conns.policy
    try:
        _, silent = await asyncio.open_connection(*bound[""])  # sends no ClientHello
        for _ in range(200):
            if len(policy):
                break
            await asyncio.sleep(0.01)
        assert len(policy._head) == 1  # counted, and waiting for its head, as its handshake begins
        _, second = await asyncio.open_connection(*bound[""])
        for _ in range(200):
            if len(policy) == 2:
                break
            await asyncio.sleep(0.01)
        buffers = {id(h.handshaking._ssl_protocol._ssl_buffer) for h in policy._head}
        assert len(buffers) == 1, "each connection read into a buffer of its own"
        second.close()
        silent.close()
        for _ in range(200):
            if not len(policy):
                break
            await asyncio.sleep(0.01)
        assert len(policy) == 0, "a failed handshake is no connection any more"
    finally:
        await servers.close()


def test_a_connection_opened_again_goes_to_the_back_of_the_queue():
    """A TLS connection is opened at its handshake's start and again at its end: it kept its place, and those
    behind it were closed up to a handshake late (a review)."""
    policy: ConnectionPolicy[str] = ConnectionPolicy(cap=10, header_timeout=20, idle_timeout=75)
    policy.opened("tls", 0.0)
    policy.opened("plain", 1.0)
    policy.opened("tls", 2.0)  # its handshake done
    assert policy.oldest_waiting(1) == ["plain"]
