"""The fuzzing harness: a deployment of real daemons, a raw HTTP client, and the figures per surface.

tests/test_fuzz.py drives it with hypothesis: a short, fixed budget in CI and
``./dev fuzz`` for the long run.  Every request is written byte by byte on a
socket of its own (``Connection: close``), so no client library tidies up
what the fuzzer means to send.  What counts as a failure:

- **5xx**: any answer 500-599 (bad input deserves a 4xx with a reason);
- **tracebacks**: log records that carry a traceback, in the daemons' logs;
- **crashes**: a daemon that exited (it is restarted on the same ports);
- **hangs**: an exchange not over within ``HANG_S`` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ports import free_port

import edgeswarm
from edgeswarm.measure.process import NodeProcess, ProcessGroup
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_or_create_private_key, load_private_key

HANG_S = 10.0  # an exchange longer than this is a hang
PATIENCE_S = 0.3  # silence after which a raw input is taken as all the client sends
MAX_ANSWER = 4 << 20  # bytes of an answer kept; the rest is not read
SAMPLES = 5  # offending inputs kept per surface, to show in a failure
PIECE = 256 * 1024
FILES = {  # published path -> size; films/* is protected
    "a.bin": 3 * PIECE + 12345,
    "films/secret.bin": PIECE + 999,
    "announce-only-7c1e.bin": 2 * PIECE + 1,  # no real peer ever joins its swarm: fuzzed announces go here
}
FUZZ_PEER = "fuzzer"  # the peer id our swarm tickets name
CLOSED_PORT = 9  # "discard": what valid fuzzed announces name as their upload port, so no daemon is sent anywhere real
_STATUS = re.compile(rb"(?:^|\n)HTTP/1\.[01] ([0-9]{3})")
_RECORD = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ (\S+): ", re.MULTILINE)
_OURS = (str(Path(edgeswarm.__file__).parent) + os.sep).encode()  # a frame in our source, not in aiohttp's


@dataclass
class Answer:
    statuses: list[int]  # every status line seen (pipelined requests get several)
    body: bytes
    hung: bool = False
    refused: bool = False  # nobody listening: the daemon is down

    @property
    def status(self) -> int | None:
        return self.statuses[0] if self.statuses else None


def exchange(port: int, data: bytes, patience: float | None = None, timeout: float = HANG_S) -> Answer:
    """Send ``data`` to 127.0.0.1:port and read until the server closes, or ``timeout`` (a hang).

    With ``patience``, our side is shut after that many seconds of silence,
    so a server still waiting for the rest of a malformed request (or for the
    next one on a kept-alive connection) sees the end.  Not sooner: on a
    client's end of input aiohttp closes at once, and an answer not yet
    written is lost.  Requests that say ``Connection: close`` need none.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it answered and closed before reading it all
                s.sendall(data)
            while sum(map(len, chunks)) < MAX_ANSWER:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                s.settimeout(min(left, patience) if patience is not None else left)
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                except TimeoutError:
                    if patience is None or time.monotonic() >= deadline:
                        raise
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_WR)
                    patience = None  # from now on the server must close by the deadline
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
    except ConnectionRefusedError:
        return Answer([], b"", refused=True)
    except TimeoutError:
        raw = b"".join(chunks)
        return Answer(_statuses(raw), raw, hung=True)
    raw = b"".join(chunks)
    return Answer(_statuses(raw), raw)


def _statuses(raw: bytes) -> list[int]:
    return [int(m.group(1)) for m in _STATUS.finditer(raw)]


def http_request(method: str, target: str | bytes, headers: list[tuple[str, str]] = (), body: bytes | None = None) -> bytes:
    """An HTTP/1.1 request as bytes; header values go out as UTF-8, as a hostile client may send them."""
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in headers]
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


@dataclass
class Tally:
    """One surface's figures."""

    surface: str
    inputs: int = 0
    five_xx: int = 0
    tracebacks: int = 0
    parser_tracebacks: int = 0  # of those, aiohttp's (see LogWatch; issue 9's defect 10, not ours to fix here)
    crashes: int = 0
    hangs: int = 0
    unexplained: int = 0  # 4xx answers with an empty body: a refusal must say why
    statuses: Counter[int] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, target: str, data: bytes, problem: str) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(f"{problem} from {target}: {data[:600]!r}")

    @property
    def own_tracebacks(self) -> int:
        return self.tracebacks - self.parser_tracebacks


class LogWatch:
    """The log records a daemon wrote since the last look, for counting the tracebacks among them.

    A record carries a traceback if it has ``Traceback (most recent call
    last)``.  It is aiohttp's if aiohttp's server logged it (a request it
    cannot parse, a client that hung up: issue 9's defect 10) or if no frame
    is in edgeswarm's source (a connection task that died inside aiohttp);
    anything else is ours.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def tracebacks(self, final: bool = False) -> list[tuple[bool, str]]:
        """(ours, last line) of each new record with a traceback; the last record waits for more unless ``final``."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        heads = list(_RECORD.finditer(data))
        cut = len(data) if final or not heads else heads[-1].start()
        found = []
        for head, end in zip(heads, [*(h.start() for h in heads[1:]), cut], strict=False):  # no heads: nothing
            record = data[head.start() : end]
            if head.start() < cut and b"Traceback (most recent call last)" in record:
                last = record.rstrip().rsplit(b"\n", 1)[-1].decode(errors="replace")
                found.append((_OURS in record and not head.group(1).startswith(b"aiohttp"), last))
        self.offset += cut
        return found


def table(tallies: list[Tally]) -> str:
    """The figures as a Markdown table, as docs/security.md shows them."""
    rows = ["| surface | inputs | 5xx | tracebacks (aiohttp's) | crashes | hangs | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for t in tallies:
        rows.append(
            f"| {t.surface} | {t.inputs} | {t.five_xx} | {t.tracebacks} ({t.parser_tracebacks}) | {t.crashes} | {t.hangs} | {t.seconds:.0f} |"
        )
    total = Tally("total")
    for t in tallies:
        for name in ("inputs", "five_xx", "tracebacks", "parser_tracebacks", "crashes", "hangs", "seconds"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
    if len(tallies) > 1:
        rows.append(
            f"| **total** | {total.inputs} | {total.five_xx} | {total.tracebacks} ({total.parser_tracebacks}) | {total.crashes} | {total.hangs} | {total.seconds:.0f} |"
        )
    return "\n".join(rows)


def jws(claims: object, key: Ed25519PrivateKey) -> str:
    """A compact EdDSA JWS of any JSON, NaN included: PyJWT will not sign claims it would refuse, an attacker will."""
    header = json.dumps({"alg": tokens.ALGORITHM, "typ": "JWT"}).encode()
    signing_input = b64url(header) + "." + b64url(json.dumps(claims).encode())
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


@dataclass
class Server:
    """One listening socket of a daemon, and what a well-behaved client sends it to get past access checks."""

    name: str
    node: NodeProcess
    port: int
    token: str | None = None  # Authorization: Bearer for a --require-token edge
    tickets: dict[str, str] = field(default_factory=dict)  # content id -> swarm ticket, for a managed peer's upload server

    def credentials(self, cid: str | None = None) -> list[tuple[str, str]]:
        if self.token:
            return [("Authorization", f"Bearer {self.token}")]
        if self.tickets:
            ticket = self.tickets.get(cid or "", next(iter(self.tickets.values())))
            return [("Authorization", f"Bearer {ticket}"), ("X-Edgeswarm-Peer", FUZZ_PEER)]
        return []


class Deployment:
    """An origin, an open and a --require-token edge (both --p2p), and a peer behind each; started once.

    Listening ports are chosen up front, so a daemon that crashes is
    restarted where the others expect it.
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.group = ProcessGroup(workdir / "logs")
        self.servers: dict[str, Server] = {}
        self.cids: dict[str, str] = {}  # path -> content id
        self.pieces: dict[str, int] = {}  # content id -> piece count
        self.etag = ""
        self.origin_key: Ed25519PrivateKey | None = None
        self.swarm_key: Ed25519PrivateKey | None = None
        self.alice = ""
        self.logs: list[LogWatch] = []

    # -- setting up ------------------------------------------------------------------------------------------------
    def start(self) -> Deployment:
        pub = self.workdir / "pub"
        for rel, size in FILES.items():
            (pub / rel).parent.mkdir(parents=True, exist_ok=True)
            (pub / rel).write_bytes(os.urandom(size))
        ports = {name: free_port() for name in ("origin", "edge", "locked", "upload", "gateway", "locked-upload", "locked-gateway")}
        origin = self._node("origin", ports["origin"], "--publish", str(pub), "--scan-interval", "5", "--protect", "films/*")
        self.origin_key = load_private_key(pub / ".edgeswarm" / "origin.key")
        self.alice = tokens.issue(self.origin_key, "alice", "/", 7 * 86400)
        node_token = tokens.issue(self.origin_key, "node-locked", "/", 7 * 86400)
        p2p = ("--p2p", "--announce-interval", "5")
        edge = self._node("edge", ports["edge"], "--cache", str(self.workdir / "edge"), "--parent", origin.url, *p2p)
        locked = self._node(
            "locked",
            ports["locked"],
            "--cache",
            str(self.workdir / "locked"),
            "--parent",
            origin.url,
            *p2p,
            "--require-token",
            "--token",
            node_token,
        )
        peer = self._node(
            "peer", ports["upload"], "--cache", str(self.workdir / "peer"), "--edge", edge.url, "--gateway", f"127.0.0.1:{ports['gateway']}"
        )
        locked_peer = self._node(
            "locked-peer",
            ports["locked-upload"],
            *("--cache", str(self.workdir / "locked-peer"), "--edge", locked.url, "--token", self.alice),
            *("--gateway", f"127.0.0.1:{ports['locked-gateway']}"),
        )
        self.swarm_key = load_or_create_private_key(self.workdir / "locked" / "swarm.key")
        for rel in FILES:
            doc = json.loads(_get(f"{origin.url}/manifest/{rel}"))
            self.cids[rel] = doc["id"]
            self.pieces[doc["id"]] = len(doc["manifest"]["pieces"])
            _get(f"{edge.url}/manifest/{rel}")
            _get(f"{locked.url}/manifest/{rel}", {"Authorization": f"Bearer {self.alice}"})  # known there: announces for it count
        self.etag = '"' + self.cids["a.bin"] + '"'
        tickets = {cid: self.ticket(cid) for cid in self.cids.values()}
        for name, node, token, held in (
            ("origin", origin, None, {}),
            ("edge", edge, None, {}),
            ("locked", locked, self.alice, {}),
            ("upload", peer, None, {}),
            ("gateway", peer, None, {}),
            ("locked-upload", locked_peer, None, tickets),
            ("locked-gateway", locked_peer, None, {}),
        ):
            self.servers[name] = Server(name, node, ports[name], token, held)
        for gateway in ("gateway", "locked-gateway"):  # the peers hold what they serve, so /piece reaches its parser
            for rel in ("a.bin", "films/secret.bin"):
                _get(f"http://127.0.0.1:{ports[gateway]}/{rel}", data=b"")
        self._wait_complete()
        return self

    def _node(self, name: str, port: int, *args: str) -> NodeProcess:
        role = name.split("-")[-1] if name != "locked" else "edge"
        return self.group.start(role, "--listen", f"127.0.0.1:{port}", *args, name=name)

    def _wait_complete(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for gateway in ("gateway", "locked-gateway"):
            url = f"http://127.0.0.1:{self.servers[gateway].port}/status"
            while True:
                swarms = json.loads(_get(url))["swarms"]
                if len(swarms) == 2 and all(s["complete"] for s in swarms):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{gateway} did not fetch its files: {swarms}")
                time.sleep(0.2)

    def ticket(self, cid: str) -> str:
        """A valid swarm ticket of the locked edge, for the fuzzer's peer id."""
        now = time.time()
        return self.signed_ticket(
            {"iss": tokens.ISSUER, "sub": "alice", "iat": now, "exp": now + 7 * 86400, "use": "ticket", "peer": FUZZ_PEER, "cid": cid}
        )

    def signed_ticket(self, claims: dict[str, object]) -> str:
        """A swarm ticket signed with the locked edge's real key, whatever its claims say."""
        return jws(claims, self.swarm_key)

    def access_token(self, claims: dict[str, object]) -> str:
        """An access token signed with the origin's real key, whatever its claims say."""
        return jws(claims, self.origin_key)

    def stop(self) -> None:
        self.group.stop()

    # -- during the run --------------------------------------------------------------------------------------------
    def send(self, tally: Tally, server: str, data: bytes, patience: float | None = None) -> Answer:
        """One input: sent, judged and counted in ``tally`` (``patience``: see ``exchange``)."""
        target = self.servers[server]
        answer = exchange(target.port, data, patience)
        tally.inputs += 1
        tally.statuses.update(answer.statuses)
        if answer.hung:
            tally.hangs += 1
            tally.note(server, data, f"no end within {HANG_S:.0f} s")
        fives = [s for s in answer.statuses if s >= 500]
        if fives:
            tally.five_xx += 1
            said = answer.body.split(b"\r\n\r\n", 1)[-1][:120]
            tally.note(server, data, f"{fives[0]} ({said!r})")
        refused = patience is None and 400 <= (answer.status or 0) < 500 and not data.startswith(b"HEAD ")  # HEAD: never a body
        if refused and not answer.body.partition(b"\r\n\r\n")[2].strip():
            tally.unexplained += 1
            tally.note(server, data, f"{answer.status} without a reason")
        self.count_tracebacks(tally, server, data)
        for node in {s.node for s in self.servers.values()}:
            if not node.running:
                tally.crashes += 1
                tally.note(server, data, f"{node.log_path.stem} exited with {node.proc.returncode}")
                node.start()
        return answer

    def watch_logs(self) -> None:
        """From now on, count only what the daemons log from here."""
        self.logs = [LogWatch(node.log_path) for node in self.group.nodes]

    def count_tracebacks(self, tally: Tally, server: str = "", data: bytes = b"", final: bool = False) -> None:
        """Tracebacks logged since the last look, charged to the input just sent (the last at the end of a surface)."""
        for watch in self.logs:
            for ours, last in watch.tracebacks(final):
                tally.tracebacks += 1
                tally.parser_tracebacks += not ours
                if ours:
                    tally.note(server, data, f"traceback in {watch.path.stem}'s log ({last[:160]})")
