"""What an edge or a peer is told at start: one typed, frozen record per role.

The command line builds these (``edgeswarm edge``, ``edgeswarm peer``), and so
does whatever starts daemons itself: the lab, the benches, ``edgeswarm get``
and tests.  Defaults live here only; the CLI's flags show them.  A field's
command-line flag is its name with dashes (``max_cache``: ``--max-cache``)
unless its metadata names another (``siblings``: ``--sibling``, repeated) or
none (``bind``: derived from ``--listen``), so ``argv()`` turns a record back
into the flags a child process is started with, and ``from_options`` reads one
from parsed flags.  A field whose value is not the flag's text (``cors``, a
``CorsPolicy`` from repeated ``--cors-origin``) names the parsed option it is
read from and how it is written back (``option``, ``read``, ``write``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from edgeswarm.policy.choker import SLOTS
from edgeswarm.policy.claims import DEFAULT_MAX_RATE
from edgeswarm.policy.engine import STARTUP_BYTES
from edgeswarm.policy.tracker import Limits
from edgeswarm.protocol.cors import OFF, PUBLIC, CorsPolicy

_RATE = {"unit": "B/s"}  # bytes per second, written back as a rate the CLI reads
_SIZE = {"unit": "B"}
_NO_FLAG = {"flag": None}  # set by the program, not by a flag of its own


def _cors_flags(policy: CorsPolicy) -> list[str]:
    """The ``--cors-origin`` values that give ``policy`` (nobody: ``none``)."""
    return list(policy.origins) or [OFF]


# ``--cors-origin`` (repeatable) read into one policy; CorsPolicy.from_flags refuses 'none' with origins (ValueError)
_CORS = {"flag": "--cors-origin", "option": "cors_origin", "read": CorsPolicy.from_flags, "write": _cors_flags}


class _Flags:
    """The mapping between a config record and the command line, by field name."""

    def argv(self) -> list[str]:
        """The flags that give this record to a daemon: values left at their defaults are not written."""
        out: list[str] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            if flag is None or value is None or value is False or value == f.default:
                continue
            if "write" in f.metadata:
                out += [item for v in f.metadata["write"](value) for item in (flag, v)]
            elif value is True:
                out.append(flag)
            elif isinstance(value, tuple):
                out += [item for v in value for item in (flag, str(v))]
            else:
                out += [flag, f"{value}{f.metadata.get('unit', '')}"]
        return out

    @classmethod
    def from_options(cls, options: object, **given: Any) -> Self:
        """The record from parsed flags (attributes named as the fields), with ``given`` values set by the program."""
        values = dict(given)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            option = f.metadata.get("option", f.name)
            if f.name not in values and f.metadata.get("flag", True) is not None and hasattr(options, option):
                value = getattr(options, option)
                if "read" in f.metadata:
                    values[f.name] = f.metadata["read"](value)
                else:
                    values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class EdgeConfig(_Flags):
    """An edge cache (``edgeswarm edge``): where it keeps pieces, whom it asks, whom it serves, and its p2p mode."""

    cache: Path
    """Directory of pieces, manifests, the pinned origin key and the swarm key; kept across restarts."""
    parent: str
    """The origin or parent edge that misses are fetched from."""
    siblings: tuple[str, ...] = field(default=(), metadata={"flag": "--sibling"})
    """Edges asked first for pieces they already hold (never made to fetch for us)."""
    max_cache: int | None = field(default=None, metadata=_SIZE)
    """Cache quota in bytes; None: no limit."""
    only_origin: tuple[str, ...] = ()
    """Host names the namespace is served under; empty: any."""
    internal: tuple[str, ...] = ()
    """Networks (CIDR) whose clients may cause fetches of uncached content; empty: everyone."""
    origin_key: Path | None = None
    """The origin's public key to pin; None: learned from the parent on first start."""
    timeout: float = 10.0
    """Seconds before an upstream request is given up (504)."""
    revalidate: float = 1.0
    """Seconds a cached manifest is trusted before it is re-checked with the parent."""
    upload_limit: int | None = field(default=None, metadata=_RATE)
    """Cap on what this edge sends, in bytes/s; None: none."""
    p2p: bool = False
    """Track the peers that fetch from this edge, hand them to each other and super-seed their region."""
    regions: Path | None = None
    """Region map (YAML or JSON: CIDR -> ISP and region); None: one region for all."""
    locality: str = "prefer"
    """``strict``: never hand a peer one of another region; ``prefer``: same region first."""
    announce_interval: float = 300.0
    """Seconds between a peer's announces."""
    max_peer_ids: int = Limits.ids_per_address
    """Live peer ids per address (IPv6: per /64) and per token user."""
    announce_rate: int = int(Limits.announces_per_s)
    """Announces a second per address or token user (the burst is ten times this)."""
    max_peer_records: int | None = None
    """(content, peer) records the tracker keeps, in all; None: ``default_records()``, at most ``Limits.records``."""
    tracker_store: str = "memory"
    """Where the swarms and P2P-share totals live: ``memory`` (this edge only) or ``redis://HOST:PORT/DB`` (shared, kept)."""
    max_peer_rate: int = field(default=DEFAULT_MAX_RATE, metadata=_RATE)
    """The most a peer may claim to move each way, in bytes/s."""
    require_token: bool = False
    """Serve files, manifests, pieces and announces only with a valid token for the path."""
    ledger: str | None = None
    """Usage ledger: an SQLite file or a postgresql:// DSN; None: CACHE/ledger.sqlite."""
    name: str | None = None
    """This edge's name in a shared ledger; None: host name and cache directory."""
    token: str | None = None
    """Access token this edge sends to its parent and siblings."""
    ca: Path | None = None
    """CA (PEM) that HTTPS parents are verified against; None: the system's."""
    cors: CorsPolicy = field(default=PUBLIC, metadata=_CORS)
    """Who may read this edge's answers from a web page on another origin; default: anyone."""
    relay_peers: int = 256
    """p2p mode: peers that cannot accept connections (``peer --unreachable``) this edge relays at once; 0: none."""
    relay_requests: int = 8
    """p2p mode: piece requests in flight through the relay to one relayed peer (its HAVE streams apart)."""
    promote_upload: int | None = field(default=None, metadata=_RATE)
    """p2p mode: promote reachable peers that upload at least this (bytes/s) to relays for their region; None: never."""
    promote_uptime: float = 300.0
    """p2p mode: seconds a peer must have announced here before it may be promoted."""
    register_with: tuple[str, ...] = ()
    """Routers (``edgeswarm router``) this edge registers with once it listens; empty: none."""
    register_region: str | None = None
    """The region this edge serves, as in the routers' region map (needed with ``register_with``)."""
    register_capacity: int | None = field(default=None, metadata=_RATE)
    """What this edge may send, in bytes/s, as the routers compare its egress (needed with ``register_with``)."""
    register_url: str | None = None
    """This edge's URL for clients; None: the address it listens on."""
    register_secret_file: Path | None = None
    """File whose last line is the routers' registration secret; None: no secret."""
    workers: int | None = None
    """Processes serving the edge's port (SO_REUSEPORT), as one edge; None: one per usable core."""


@dataclass(frozen=True, kw_only=True)
class PeerConfig(_Flags):
    """A peer (``edgeswarm peer``, ``edgeswarm get``): its cache, its edges, and what it gives other peers."""

    cache: Path
    """Directory of pieces and the peer id; a restart resumes from it."""
    edges: tuple[str, ...] = field(metadata={"flag": "--edge"})
    """Edges to use; the fastest wins."""
    upload_limit: int | None = field(default=None, metadata=_RATE)
    """Upload cap in bytes/s; None: none."""
    download_limit: int | None = field(default=None, metadata=_RATE)
    """Cap on what this peer fetches from edges and peers, in bytes/s, as a slow access link would; None: none."""
    upload_slots: int = SLOTS
    """Peers served at once."""
    max_cache: int | None = field(default=None, metadata=_SIZE)
    """Cache quota in bytes; None: no limit."""
    origin_key: Path | None = None
    """The origin's public key to pin; None: learned from the edge."""
    read_timeout: float = 30.0
    """Seconds a gateway read waits for a piece before it fails with 504."""
    startup_window: int = field(default=STARTUP_BYTES, metadata=_SIZE)
    """Bytes a player starting behind a neighbour well ahead of it takes from the edge (an HTTP window at the playhead); 0: none."""
    token: str | None = None
    """Access token sent to edges (other peers see swarm tickets, never the token)."""
    ca: Path | None = None
    """CA (PEM) that HTTPS edges are verified against; None: the system's."""
    cors: CorsPolicy = field(default=PUBLIC, metadata=_CORS)
    """Who may read the gateway's answers from another origin (private ones: listed origins only); default: anyone."""
    gateway_hosts: tuple[str, ...] = field(default=(), metadata={"flag": "--gateway-host"})
    """Host names the gateway answers under besides IP addresses and localhost (lower case): a guard against DNS rebinding."""
    router: str | None = None
    """A router (``edgeswarm router``) the edges are learned from, and followed; None: ``edges`` only."""
    seeds: tuple[str, ...] = field(default=(), metadata={"flag": "--seed"})
    """Paths this peer keeps whole and seeded for its region (a managed seeder): fetched at start, never evicted."""
    accept_preheat: int | None = field(default=None, metadata=_SIZE)
    """Bytes of content this peer fetches and seeds when its edges ask (``preheat --peers``); None: it takes no such orders."""
    unreachable: bool = False
    """Other peers cannot connect to this one (NAT, firewall): it uploads through a relay at each of its edges."""
    bind: str | None = field(default=None, metadata=_NO_FLAG)
    """Address outgoing connections leave from (the upload server's host); None: the system's choice."""
    timeout: float = field(default=10.0, metadata=_NO_FLAG)
    """Seconds before a request to an edge or peer is given up."""
