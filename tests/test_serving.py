"""edgeswarm.node.serving: a piece's descriptor is not trusted across an await (the store may close it meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import os
import socket
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from conftest import serve_app
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.serving import BOOK_BYTES, LOOKAHEAD, LOOKAHEAD_BYTES, file_headers, serve_file
from edgeswarm.protocol.manifest import MIN_PIECE, Manifest, SignedManifest
from edgeswarm.store import piecestore
from edgeswarm.store.piecestore import PieceNotStored, PieceStore

KEY = Ed25519PrivateKey.generate()


class ClosingSource:
    """Pieces as files, one descriptor each kept open, as the piece store keeps them.

    ``reuse()`` does what the store and the kernel do when another request
    needs room: the cached descriptors are forgotten and their numbers now
    point at other files (here, of zeros).
    """

    def ahead(self, piece_size: int) -> int:
        return LOOKAHEAD

    def __init__(self, root: Path, data: bytes):
        self.paths = []
        for i in range(0, len(data), MIN_PIECE):
            path = root / f"{i // MIN_PIECE}.piece"
            path.write_bytes(data[i : i + MIN_PIECE])
            self.paths.append(path)
        self.zeros = root / "zeros"
        self.zeros.write_bytes(bytes(MIN_PIECE))
        self.fds: dict[int, int] = {}
        self.asked: list[int] = []

    def local(self, index: int) -> int | None:
        self.asked.append(index)
        if index not in self.fds:
            self.fds[index] = os.open(self.paths[index], os.O_RDONLY)
        return self.fds[index]

    def held(self, index: int) -> bool:
        return True

    async def fetch(self, index: int) -> bytes:
        return self.paths[index].read_bytes()

    def reuse(self) -> None:
        other = os.open(self.zeros, os.O_RDONLY)
        for fd in self.fds.values():
            os.dup2(other, fd)  # the same number, another file
        os.close(other)
        self.forgotten = list(self.fds.values())
        self.fds.clear()

    def close(self) -> None:
        for fd in [*self.fds.values(), *getattr(self, "forgotten", [])]:
            os.close(fd)


async def held_by_never_reading(handler, clients: int, fetched: Callable[[], bool]) -> int:
    """Bytes of Python memory held while ``clients`` connections ask ``handler`` for /big.bin and read nothing, measured
    once ``fetched()`` says the pieces they wait on are in (or 5 s passed), and a moment more."""
    import tracemalloc

    app = make_app(Metrics("edge"))
    app.router.add_get("/big.bin", handler)
    socks: list[socket.socket] = []
    tracemalloc.start()
    try:
        async with serve_app(app) as port:
            before = tracemalloc.get_traced_memory()[0]
            socks += never_reading(port, clients)
            deadline = asyncio.get_running_loop().time() + 5
            while not fetched() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            held = tracemalloc.get_traced_memory()[0] - before
            for s in socks:  # before the server stops: it waits for its handlers
                s.close()
            return held
    finally:
        tracemalloc.stop()
        for s in socks:
            s.close()


def never_reading(port: int, clients: int) -> list[socket.socket]:
    """``clients`` connections that ask for /big.bin and never read (a small receive buffer: the node is held soon)."""
    socks = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    return socks


async def test_a_descriptor_closed_while_the_head_goes_out_is_asked_for_again(tmp_path: Path):
    data = os.urandom(2 * MIN_PIECE + 1000)
    pieces = tuple(hashlib.sha256(data[i : i + MIN_PIECE]).hexdigest() for i in range(0, len(data), MIN_PIECE))
    signed = SignedManifest.sign(Manifest("a.bin", len(data), "application/octet-stream", MIN_PIECE, pieces, 1_700_000_000), KEY)
    source = ClosingSource(tmp_path, data)

    async def reuse_on_prepare(_: web.Request, __: web.StreamResponse) -> None:
        source.reuse()  # between the first piece's lookup and its bytes: the head is being written

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, signed, source, Metrics("edge"))

    app = make_app(Metrics("edge"))
    app.on_response_prepare.append(reuse_on_prepare)
    app.router.add_get("/f", handler)
    try:
        async with serve_app(app) as port, aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/f") as resp:
                assert resp.status == 200 and await resp.read() == data  # not the zeros now behind the old number
            async with http.get(f"http://127.0.0.1:{port}/f", headers={"Range": "bytes=10-20,300000-300010"}) as resp:
                body = await resp.read()  # two parts: each part's head is an await before its first piece
                assert resp.status == 206 and data[10:21] in body and data[300000:300011] in body and bytes(11) not in body
    finally:
        source.close()


class FillingSource:
    """An edge's pieces as it fills them: nothing held until fetched, then kept on disk (``local``) as the store keeps them."""

    def ahead(self, piece_size: int) -> int:
        return LOOKAHEAD

    def __init__(self, root: Path, piece: int, count: int):
        self.root, self.piece, self.count = root, piece, count
        self.fds: dict[int, int] = {}
        self.fetched: list[int] = []

    def local(self, index: int) -> int | None:
        return self.fds.get(index)

    def held(self, index: int) -> bool:
        return index in self.fds

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        self.fetched.append(index)
        data = bytes([index]) * self.piece
        path = self.root / f"{index}.piece"
        path.write_bytes(data)
        self.fds[index] = os.open(path, os.O_RDONLY)
        return data

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


async def test_a_client_that_stops_reading_holds_about_one_piece_not_the_pieces_fetched_ahead(tmp_path: Path):
    """Each connection that asked for a cold file and read nothing held its piece and the 4 fetched ahead (a tester's
    60 sockets: 56 MB -> 832 MB of RSS for 75 s); pieces fetched ahead are on disk, and are read from there in turn."""

    piece, count, clients = 1 << 20, 12, 6
    signed = SignedManifest.sign(
        Manifest("big.bin", piece * count, "application/octet-stream", piece, tuple("0" * 64 for _ in range(count)), 1_700_000_000), KEY
    )
    sources = [FillingSource(tmp_path / str(n), piece, count) for n in range(clients)]
    for n in range(clients):
        (tmp_path / str(n)).mkdir()
    served = iter(sources)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, signed, next(served), Metrics("edge"))

    try:
        held = await held_by_never_reading(handler, clients, lambda: all(len(s.fetched) >= 5 for s in sources))
    finally:
        for src in sources:
            src.close()
    assert all(len(s.fetched) >= 5 for s in sources)  # each fetched its piece and the 4 ahead, as before
    assert held < clients * 2.5 * piece, f"{held / clients / piece:.1f} pieces a connection"


class FullDiskEdge:
    """Just what an EdgeSource asks of its edge, over a real piece store whose disk is full: ``fill`` serves what it
    could not store from memory, as Edge.fill does."""

    def __init__(self, store: PieceStore, data: bytes, piece: int):
        self.pinned, self.metrics = SimpleNamespace(opened=store), Metrics("edge")
        self.data, self.piece = data, piece
        self.fetched: list[int] = []

    async def fill(self, cid: str, index: int) -> bytes:
        self.fetched.append(index)
        data = self.data[index * self.piece : (index + 1) * self.piece]
        with contextlib.suppress(PieceNotStored):
            self.pinned.opened.put_piece(cid, index, data)
        return data


def no_space(path: str, mode: str):
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_an_edge_whose_disk_is_full_fetches_nothing_ahead_of_a_reader_that_stops_reading(tmp_path: Path, monkeypatch):
    """A full cache disk: every slow reader held its piece and the 4 fetched ahead in memory, none of which could be
    stored, until it read them (12 MiB a connection, 973 MiB of RSS for 80 readers: an adversarial session).  While
    writes fail an edge fetches only the piece it sends, as a peer's swarm does; so does a peer's gateway (the twin)."""

    from edgeswarm.roles.edge import EdgeSource
    from edgeswarm.roles.peer import SwarmSource

    piece, count, clients = 1 << 20, 12, 6
    data = os.urandom(piece * count)
    hashes = tuple(hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece))
    signed = SignedManifest.sign(Manifest("big.bin", len(data), "application/octet-stream", piece, hashes, 1_700_000_000), KEY)
    store = PieceStore(tmp_path / "cache", KEY.public_key())
    store.put_manifest(signed, signed.to_json())
    monkeypatch.setattr(piecestore, "open", no_space, raising=False)
    edge = FullDiskEdge(store, data, piece)
    await edge.fill(signed.content_id, count - 1)  # the disk filled before these readers came
    peer = SimpleNamespace(pinned=edge.pinned)
    assert store.write_error and SwarmSource(peer, SimpleNamespace(engine=SimpleNamespace(window=16))).ahead(MIN_PIECE) == 0  # type: ignore[arg-type]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, signed, EdgeSource(edge, signed.content_id, True), Metrics("edge"))  # type: ignore[arg-type]

    try:
        held = await held_by_never_reading(handler, clients, lambda: edge.fetched.count(0) >= clients)
    finally:
        store.close()
    assert edge.fetched.count(0) == clients
    assert held < clients * 2.5 * piece, f"{held / clients / piece:.1f} pieces a connection"


def test_last_modified_is_never_after_now():
    """A playlist rewritten more than once a second is dated ahead of the clock; RFC 9110 forbids a Last-Modified after
    the answer's Date (an adversarial session saw one 110 s ahead): such a file has none (serving.file_date), one
    dated now has its own."""
    ahead = Manifest("live/live.m3u8", 10, "application/vnd.apple.mpegurl", MIN_PIECE, ("0" * 64,), int(time.time()) + 100)
    assert "Last-Modified" not in file_headers(SignedManifest.sign(ahead, KEY))
    now = dataclasses.replace(ahead, modified=int(time.time()))
    assert parsedate_to_datetime(file_headers(SignedManifest.sign(now, KEY))["Last-Modified"]).timestamp() == now.modified


async def test_a_reader_of_large_pieces_has_one_fetched_ahead_not_four(tmp_path: Path):
    """Each piece is filled whole in memory: eight slow readers of a 100 GiB file (64 MiB pieces) took an edge to 2 GB and
    its origin to 5 GB, each connection filling its piece and the 4 after it (an adversarial session).  Read-ahead
    stops at LOOKAHEAD_BYTES, one piece at least."""
    piece, count = LOOKAHEAD_BYTES, 6
    signed = SignedManifest.sign(
        Manifest("big.bin", piece * count, "application/octet-stream", piece, tuple("0" * 64 for _ in range(count)), 1_700_000_000), KEY
    )
    source = FillingSource(tmp_path, piece, count)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, signed, source, Metrics("edge"))

    app = make_app(Metrics("edge"))
    app.router.add_get("/big.bin", handler)
    try:
        async with serve_app(app) as port, aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/big.bin") as resp:
            await resp.content.readexactly(1)  # and reads no more for now
            await asyncio.sleep(0.5)
            assert source.fetched == [0, 1]
    finally:
        source.close()


async def test_a_large_pieces_bytes_are_booked_as_they_leave_not_whole(tmp_path: Path):
    """Bytes were counted a whole piece at a time: at 100 GiB (64 MiB pieces) the ledger and the router's egress heard of
    a download in steps of a piece, and a reader leaving mid-piece was billed none of it (a review).  Now in parts
    of BOOK_BYTES at most, read from a descriptor asked for again after each await."""
    piece, count = LOOKAHEAD_BYTES, 2  # 16 MiB pieces: a file over 32 GiB
    signed = SignedManifest.sign(
        Manifest("big.bin", piece * count, "application/octet-stream", piece, tuple("0" * 64 for _ in range(count)), 1_700_000_000), KEY
    )
    source = FillingSource(tmp_path, piece, count)
    told: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, signed, source, Metrics("edge"), on_sent=told.append)

    app = make_app(Metrics("edge"))
    app.router.add_get("/big.bin", handler)
    try:
        async with serve_app(app) as port, aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/big.bin") as resp:
            body = await resp.read()
        assert body == bytes([0]) * piece + bytes([1]) * piece
        assert sum(told) == piece * count and max(told) <= BOOK_BYTES, told
    finally:
        source.close()
