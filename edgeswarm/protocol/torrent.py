"""BitTorrent clients in an edgeswarm deployment: a torrent and a magnet link for every published file.

Each published (unprotected, non-empty) file gets a hybrid v1+v2 torrent
(BEP 52) made by libtorrent's ``create_torrent``: one file, named as the
file, with edgeswarm's own piece size, so that a BitTorrent piece is exactly
one edgeswarm piece and a web seed's range request for it is one piece at the
edge (one cache fill, never two).  Its web seeds (BEP 19 ``url-list``) are
the edges: each node that hands out the torrent puts itself first (as the
client reached it) and keeps the origin's ``--web-seed`` list after it.

Trust: the origin signs the torrent's two info hashes together with the
content id, under a top-level key ``edgeswarm`` that BitTorrent clients
ignore (it lies outside ``info``, so it changes no info hash).  An edge
accepts a torrent from its parent only if that signature checks against the
pinned origin key and the content id is the one of the manifest it serves,
so a lying parent can neither swap the hashes nor point clients at other
bytes.

Hashing holds the GIL in libtorrent's Python binding, so the origin runs it
in a child process (``python -m edgeswarm.protocol.torrent DIR NAME SIZE PIECE DATE``)
once per content id and keeps the result.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeswarm.errors import EdgeswarmError
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.trust.signing import verify

if TYPE_CHECKING:  # libtorrent loads where a torrent is built or read: `edgeswarm get` and the peers never do
    import libtorrent as lt

TORRENT_TYPE = "application/x-bittorrent"
SIGNED_KEY = b"edgeswarm"  # top-level, outside info: clients ignore it and no info hash changes
CREATOR = "edgeswarm"
KEPT = 1024  # torrents a node keeps in memory, most recently asked first (~110 KB each at most: 2048 x (20 + 32) bytes of hashes)


class TorrentError(EdgeswarmError, ValueError):
    """A torrent that cannot be made, or one that is not the origin's for this content."""


@dataclass(frozen=True)
class Torrent:
    """A signed torrent as the origin made it (no ``url-list``): each node adds its web seeds when it hands it out."""

    data: bytes  # bencoded, with the origin's signature
    v1: bytes  # SHA-1 info hash (20 bytes)
    v2: bytes  # SHA-256 info hash (32 bytes)
    aria2_136: bytes  # the hash aria2 1.36 computes instead of v1 (see aria2_136_hash)

    @property
    def announce_hashes(self) -> tuple[bytes, ...]:
        """What clients announce a hybrid torrent under: the v1 hash, the v2 hash cut to 20 bytes (BEP 52), and aria2 1.36's."""
        return self.v1, self.v2[:20], self.aria2_136


def announce_index(kept: Iterable[tuple[str, Torrent]]) -> dict[bytes, str]:
    """The hashes clients announce the ``kept`` (content id, torrent) under, each to its content (the last kept).

    Two contents of the same bytes and name (in two folders) share their
    hashes: when one is forgotten, the other's must stay (they were dropped
    with it, and its clients were told "unknown torrent").
    """
    return {h: cid for cid, torrent in kept for h in torrent.announce_hashes}


def torrent_name(manifest: Manifest) -> str:
    """The torrent's file name: the published file's own name (a single-file torrent has no folders)."""
    return manifest.path.rsplit("/", 1)[-1]


def why_none(manifest: Manifest) -> str | None:
    """Why a published file has no torrent, or None when it has one."""
    if manifest.protection is not None:
        return f"{manifest.path} is protected: it is served in plaintext only to token holders, so it has no torrent"
    if manifest.size == 0:
        return f"{manifest.path} is empty: a torrent cannot describe an empty file"
    return None


def build(directory: Path, name: str, size: int, piece_size: int, created: int) -> bytes:
    """A hybrid v1+v2 torrent of ``directory/name`` (blocking; holds the GIL for the whole hash: run it in a child)."""
    import libtorrent as lt

    ct = lt.create_torrent([lt.create_file_entry(name, size)], piece_size)  # flags 0: hybrid v1+v2
    ct.set_creator(CREATOR)
    ct.set_creation_date(created)  # the file's, not now: the same file gives the same torrent bytes
    lt.set_piece_hashes(ct, str(directory))
    return lt.bencode(ct.generate())


async def build_in_child(file: Path, manifest: Manifest) -> bytes:
    """``build`` in a child process, so the origin's event loop keeps serving while a large file is hashed."""
    args = [str(file.parent), file.name, str(manifest.size), str(manifest.piece_size), str(manifest.modified)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeswarm.protocol.torrent", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise TorrentError(f"cannot make a torrent of {manifest.path}: {err.decode(errors='replace').strip()[-300:]}")
    return out


def _without_empty_keys(node: object) -> object:
    if isinstance(node, dict):
        return {k: _without_empty_keys(v) for k, v in node.items() if k != b""}
    if isinstance(node, list):
        return [_without_empty_keys(v) for v in node]
    return node


def aria2_136_hash(data: bytes) -> bytes:
    """The info hash aria2 up to 1.36 (Debian 12's) announces a hybrid torrent under.

    It re-encodes ``info`` without the entries whose key is empty, which is
    where v2's ``file tree`` keeps each file (aria2 issue 1903, fixed in
    1.37).  Such clients download from web seeds all the same; knowing their
    hash lets the tracker put them in a swarm of their own instead of
    refusing them (they can trade only among themselves).
    """
    return hashlib.sha1(encode(cast(dict[bytes, Any], _without_empty_keys(decode(data)[b"info"])))).digest()


def decode(data: bytes) -> dict[bytes, Any]:
    """A bencoded dictionary, by libtorrent (whose stubs type any bencoded value as one union); TorrentError if it is none."""
    import libtorrent as lt

    doc = lt.bdecode(data)
    if not isinstance(doc, dict):
        raise TorrentError("not a bencoded dictionary")
    return cast(dict[bytes, Any], doc)


def encode(doc: dict[bytes, Any]) -> bytes:
    """A dictionary bencoded by libtorrent."""
    import libtorrent as lt

    return lt.bencode(cast(Any, doc))


def _statement(cid: str, v1: bytes, v2: bytes) -> bytes:
    """What the origin signs: this content id is this pair of info hashes."""
    return b"edgeswarm torrent\n" + cid.encode() + b"\n" + v1 + v2


def _hashes(data: bytes) -> tuple[bytes, bytes, lt.torrent_info]:
    import libtorrent as lt

    try:
        info = lt.torrent_info(data)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TorrentError(f"not a torrent ({exc})") from None
    hashes = info.info_hashes()
    if not (hashes.has_v1() and hashes.has_v2()):
        raise TorrentError("not a hybrid v1+v2 torrent")
    return hashes.v1.to_bytes(), hashes.v2.to_bytes(), info


def sign(data: bytes, cid: str, key: Ed25519PrivateKey) -> Torrent:
    """The origin's torrent for content ``cid``, with its signature of (cid, info hashes)."""
    v1, v2, _ = _hashes(data)
    doc = decode(data)
    doc[SIGNED_KEY] = {b"content": cid.encode(), b"signature": key.sign(_statement(cid, v1, v2))}
    return Torrent(encode(doc), v1, v2, aria2_136_hash(data))


def check(data: bytes, manifest: Manifest, cid: str, key: Ed25519PublicKey) -> Torrent:
    """A torrent from a parent, if the origin signed it for ``cid`` and it describes the manifest's file; else TorrentError."""
    v1, v2, info = _hashes(data)
    doc = decode(data)
    signed = doc.get(SIGNED_KEY)
    if not isinstance(signed, dict) or signed.get(b"content") != cid.encode() or not isinstance(signed.get(b"signature"), bytes):
        raise TorrentError(f"the torrent is not signed for content {cid[:12]}")
    if not verify(key, signed[b"signature"], _statement(cid, v1, v2)):
        raise TorrentError("the torrent's signature does not check against the pinned origin key")
    if (info.total_size(), info.piece_length(), info.num_files()) != (manifest.size, manifest.piece_size, 1):
        raise TorrentError(f"the torrent does not describe {manifest.path} as its manifest does")
    doc.pop(b"url-list", None)
    doc.pop(b"announce", None)
    return Torrent(encode(doc), v1, v2, aria2_136_hash(data))


def web_seed(base: str, path: str) -> str:
    """The URL a web seed serves ``path`` at: a single-file torrent's ``url-list`` entry names the file itself."""
    return base.rstrip("/") + "/" + quote(path, safe="/")


def hand_out(torrent: Torrent, seeds: list[str], announce: str | None = None) -> bytes:
    """The torrent as a client gets it: these web seeds (in order, once each) and this tracker, if any."""
    doc = decode(torrent.data)
    unique = list(dict.fromkeys(seeds))
    if unique:
        doc[b"url-list"] = [s.encode() for s in unique]
    if announce:
        doc[b"announce"] = announce.encode()
    return encode(doc)


def seeds_of(data: bytes) -> list[str]:
    """The web seeds a handed-out torrent lists."""
    seeds = decode(data).get(b"url-list", [])
    if isinstance(seeds, bytes):
        seeds = [seeds]
    return [s.decode(errors="replace") for s in seeds if isinstance(s, bytes)]


def magnet(data: bytes) -> str:
    """The magnet link of a handed-out torrent (both info hashes, name, web seeds, tracker), as libtorrent writes it."""
    import libtorrent as lt

    return lt.make_magnet_uri(lt.torrent_info(data))


def main(argv: list[str]) -> int:
    """Child-process entry: the bencoded torrent on stdout."""
    directory, name, size, piece_size, created = argv
    sys.stdout.buffer.write(build(Path(directory), name, int(size), int(piece_size), int(created)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
