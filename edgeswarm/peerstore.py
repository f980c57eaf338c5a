"""Where a tracker keeps its swarms: in the edge's memory, or in Redis for several edges of one region.

Kraken's split: this module is storage (``PeerStore``, with a memory and a
Redis implementation, one contract: tests/test_peerstore.py runs the same
tests against both); tracker.py is the policy that ranks what it reads
(sans-IO).  What one announce costs is O(what changed): it writes the
asker's record (its bitfield as one value) and reads a bounded random sample
of its swarm, never the whole swarm.  A record silent for ``ttl`` is gone;
the P2P-share totals per region are counters updated by each announce's
delta, so they survive the peers, and with Redis the edges too.

Redis layout (every key under ``edgeswarm:``; docs/operations.md lists them):
per content a sorted set of its peers by last announce (``seen:CID``) and a
hash of their records (``rec:CID``) and of their last stats (``stats:CID``),
all three expiring ``keep`` seconds after the content's last announce;
per region counters of bytes by source kind (``share:REGION``, never
expiring); and for /status, sorted sets of live identities per region and
user, trimmed by ``expire``.  One Lua script per announce does the write,
expires up to 32 silent peers of that swarm, and samples: one round trip.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from edgeswarm.regions import Region
from edgeswarm.tracker import ALPHA, PeerKey, PeerRecord, next_rate

log = logging.getLogger("edgeswarm.peerstore")
UNMAPPED = "unmapped"
NO_USER = "-"
KEEP_TTLS = 2  # a content's keys outlive its last announce by this many ttls (Redis)
EXPIRE_PER_ANNOUNCE = 32  # silent peers an announce removes from its swarm, at most (Redis)


class StoreUnavailable(Exception):
    """The shared store cannot be reached: the edge answers announces 503 and keeps serving files."""


@dataclass
class Placed:
    """What ``put`` read: the swarm's live size (the asker included) and a sample of it (the asker perhaps among them)."""

    size: int
    candidates: list[PeerRecord]


@dataclass
class Counts:
    """Live peers as /status counts them: distinct peers, and (peer, content) memberships, per region; peers per token user."""

    peers: Counter[str] = field(default_factory=Counter)
    memberships: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    identities: int = 0
    reports: int = 0


class PeerStore(Protocol):
    """The swarms of a region.  Every method may raise StoreUnavailable (a shared store that is down)."""

    ttl: float

    def describe(self) -> str:
        """The store as logs and /status name it (never a password)."""
        ...

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int) -> Placed:
        """Store ``rec`` (its ``upload_rate`` set here, from the record it replaces) and read a sample of its swarm."""
        ...

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None: ...

    async def report(self, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool) -> None:
        """A peer's cumulative received bytes by kind: what is new since its last report is added to ``region``'s totals."""
        ...

    async def shares(self) -> dict[str, Counter[str]]: ...

    async def swarm(self, cid: str) -> list[PeerRecord]: ...

    async def contents(self) -> list[str]: ...

    async def counts(self, now: float | None = None) -> Counts:
        """Live by ``now`` (by default the wall clock: a shared store's records carry the edges' wall-clock times)."""
        ...

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]: ...

    async def close(self) -> None: ...


def _region_name(region: Region | None) -> str:
    return region.name if region else UNMAPPED


def added(previous: list[int] | None, stats: list[int]) -> list[int]:
    """What a report adds to its region's totals: the growth since the previous one, or all of it after a restart (a counter went back)."""
    if previous is None or any(s < p for s, p in zip(stats, previous, strict=True)):
        return list(stats)
    return [s - p for s, p in zip(stats, previous, strict=True)]


class _Swarm:
    """One content's records, in order of last announce (expiry pops the front), with an index for O(1) sampling."""

    def __init__(self) -> None:
        self.records: dict[PeerKey, PeerRecord] = {}
        self.keys: list[PeerKey] = []
        self.pos: dict[PeerKey, int] = {}

    def put(self, rec: PeerRecord) -> PeerRecord | None:
        key = rec.key
        previous = self.records.pop(key, None)
        self.records[key] = rec
        if previous is None:
            self.pos[key] = len(self.keys)
            self.keys.append(key)
        return previous

    def remove(self, key: PeerKey) -> PeerRecord | None:
        rec = self.records.pop(key, None)
        if rec is not None:
            i, last = self.pos.pop(key), self.keys.pop()
            if last != key:
                self.keys[i] = last
                self.pos[last] = i
        return rec

    def sample(self, rng: random.Random, n: int) -> list[PeerRecord]:
        """Up to ``n`` distinct records: all of a small swarm, else ``n`` draws with replacement, repeats dropped (rare when n is small)."""
        keys, records = self.keys, self.records
        if len(keys) <= n:
            return list(records.values())
        draw, size = rng.random, len(keys)
        return [records[k] for k in dict.fromkeys([keys[int(draw() * size)] for _ in range(n)])]


class MemoryPeerStore:
    """The default: one edge's swarms in its own memory (lost when it stops; a single edge's peers re-announce)."""

    def __init__(self, ttl: float = 90.0, seed: int = 0):
        self.ttl = ttl
        self._swarms: dict[str, _Swarm] = {}
        self._stats: dict[tuple[str, PeerKey], list[int]] = {}
        self._shares: dict[str, Counter[str]] = {}
        self._rng = random.Random(seed)  # sampling need not be unpredictable, only uncorrelated with ranking

    def describe(self) -> str:
        return "memory"

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int) -> Placed:
        swarm = self._swarms.setdefault(cid, _Swarm())
        previous = swarm.records.get(rec.key)
        rec.upload_rate = next_rate(previous, rec.uploaded, now)
        if previous is not None:
            rec.first_seen = previous.first_seen
        swarm.put(rec)
        cutoff = now - self.ttl  # silent since the last expiry run: not handed out
        picked = swarm.sample(self._rng, sample + 1)
        if next(iter(swarm.records.values())).last_seen < cutoff:  # the oldest record: are any silent at all?
            picked = [c for c in picked if c.last_seen >= cutoff]
        return Placed(len(swarm.records), picked)

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None:
        swarm = self._swarms.get(cid)
        rec = swarm.remove(key) if swarm else None
        if swarm is not None and not swarm.records:
            del self._swarms[cid]
        return rec

    async def report(self, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool) -> None:
        previous = self._stats.get((cid, key))
        if previous is None and stopped:
            return  # a peer the tracker never knew, or forgot: ids are free, so its word adds nothing
        values = list(stats.values())
        totals = self._shares.setdefault(region, Counter())
        for kind, n in zip(stats, added(previous, values), strict=True):
            totals[kind] += n
        if stopped:
            del self._stats[(cid, key)]
        else:
            self._stats[(cid, key)] = values

    async def shares(self) -> dict[str, Counter[str]]:
        return {region: Counter(c) for region, c in self._shares.items()}

    async def swarm(self, cid: str) -> list[PeerRecord]:
        swarm = self._swarms.get(cid)
        return list(swarm.records.values()) if swarm else []

    async def contents(self) -> list[str]:
        return list(self._swarms)

    async def counts(self, now: float | None = None) -> Counts:
        """A full read (status only).  A peer is placed by its most recent announce, should its address have moved regions."""
        latest: dict[PeerKey, PeerRecord] = {}
        out = Counts(reports=len(self._stats))
        for swarm in self._swarms.values():
            for key, rec in swarm.records.items():
                out.memberships[_region_name(rec.region)] += 1
                if key not in latest or rec.last_seen > latest[key].last_seen:
                    latest[key] = rec
        out.peers = Counter(_region_name(r.region) for r in latest.values())
        out.users = Counter(r.user or NO_USER for r in latest.values())
        out.identities = len(latest)
        return out

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """O(what expires): each swarm is in order of last announce, so the scan stops at its first live record."""
        dropped = []
        for cid in list(self._swarms):
            swarm = self._swarms[cid]
            silent = []
            for rec in swarm.records.values():
                if now - rec.last_seen <= self.ttl:
                    break
                silent.append(rec)
            for rec in silent:
                swarm.remove(rec.key)
                self._stats.pop((cid, rec.key), None)
                dropped.append((cid, rec))
            if not swarm.records:
                del self._swarms[cid]
        return dropped

    async def close(self) -> None:
        return None


# -- Redis ---------------------------------------------------------------------------------------
SEP = "\x1f"  # between a record's fields: no peer id (printable), address, URL or region name holds it
KEYSEP = "\x1e"  # between a member's owner and peer id
PAIRSEP = "\x1d"  # between a member and its record, in an announce's sample
ENTRYSEP = "\x1c"  # between the sample's entries
_CONTROL = str.maketrans({c: "?" for c in (SEP, KEYSEP, PAIRSEP, ENTRYSEP)})

# ARGV: prefix cid member uploaded now rest ttl keep sample region user alpha
_PUT = """
local p, cid, member = ARGV[1], ARGV[2], ARGV[3]
local uploaded, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, keep, sample = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local region, user, alpha = ARGV[10], ARGV[11], tonumber(ARGV[12])
local seen, recs, stats = p .. 'seen:' .. cid, p .. 'rec:' .. cid, p .. 'stats:' .. cid
local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. (now - ttl), 'LIMIT', 0, 32)
if #gone > 0 then
  redis.call('ZREM', seen, unpack(gone))
  redis.call('HDEL', recs, unpack(gone))
  redis.call('HDEL', stats, unpack(gone))
end
local prev = redis.call('HGET', recs, member)
local rate = 0
if prev then
  local pu, ps, pr = string.match(prev, '^([^\\31]*)\\31([^\\31]*)\\31([^\\31]*)\\31')
  pu, ps, pr = tonumber(pu), tonumber(ps), tonumber(pr)
  rate = pr
  if uploaded >= pu and now > ps then
    local s = (uploaded - pu) / (now - ps)
    if pr == 0 then rate = s else rate = alpha * s + (1 - alpha) * pr end
  end
end
local rstr = string.format('%.17g', rate)
redis.call('HSET', recs, member, ARGV[4] .. '\\31' .. ARGV[5] .. '\\31' .. rstr .. '\\31' .. ARGV[6])
redis.call('ZADD', seen, now, member)
redis.call('EXPIRE', seen, keep)
redis.call('EXPIRE', recs, keep)
redis.call('ZADD', p .. 'contents', now, cid)
redis.call('ZADD', p .. 'identities', now, member)
redis.call('ZADD', p .. 'peers:' .. region, now, member)
redis.call('ZADD', p .. 'memb:' .. region, now, cid .. '\\30' .. member)
redis.call('SADD', p .. 'regions', region)
redis.call('ZADD', p .. 'users:' .. user, now, member)
redis.call('SADD', p .. 'userset', user)
local n = redis.call('ZCARD', seen)
local picked
if n <= sample then picked = redis.call('ZRANGE', seen, 0, -1) else picked = redis.call('ZRANDMEMBER', seen, sample) end
local blob = {}
if #picked > 0 then
  local got = redis.call('HMGET', recs, unpack(picked))
  for i = 1, #picked do
    if got[i] then blob[#blob + 1] = picked[i] .. '\\29' .. got[i] end
  end
end
return {n, rstr, table.concat(blob, '\\28')}
"""

# ARGV: prefix cid member
_REMOVE = """
local p, cid, member = ARGV[1], ARGV[2], ARGV[3]
local recs = p .. 'rec:' .. cid
local prev = redis.call('HGET', recs, member)
if not prev then return false end
redis.call('HDEL', recs, member)
redis.call('ZREM', p .. 'seen:' .. cid, member)
return prev
"""

# ARGV: prefix cid member region stopped keep n kind1..kindn value1..valuen
_REPORT = """
local p, cid, member, region, stopped, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1', tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local key = p .. 'stats:' .. cid
local prev = redis.call('HGET', key, member)
if (not prev) and stopped then return 0 end
local old, restart = {}, false
if prev then
  local i = 1
  for v in string.gmatch(prev, '[^,]+') do old[i] = tonumber(v); i = i + 1 end
end
for i = 1, n do
  if prev and tonumber(ARGV[7 + n + i]) < (old[i] or 0) then restart = true end
end
for i = 1, n do
  local d = tonumber(ARGV[7 + n + i])
  if prev and not restart then d = d - (old[i] or 0) end
  if d ~= 0 then redis.call('HINCRBY', p .. 'share:' .. region, ARGV[7 + i], d) end
end
redis.call('SADD', p .. 'shareregions', region)
if stopped then
  redis.call('HDEL', key, member)
else
  local vals = {}
  for i = 1, n do vals[i] = ARGV[7 + n + i] end
  redis.call('HSET', key, member, table.concat(vals, ','))
  redis.call('EXPIRE', key, keep)
end
return 1
"""


def check_url(url: str) -> str:
    """A ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://PATH?db=N``) URL, or ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--tracker-store {url!r}: expected memory or redis://HOST:PORT/DB")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"--tracker-store {url!r}: no host (expected redis://HOST:PORT/DB)")
    try:
        parts.port  # noqa: B018 - raises ValueError when the port is not a number
    except ValueError:
        raise ValueError(f"--tracker-store {url!r}: the port is not a number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"--tracker-store {url!r}: the database {db!r} is not a number")
    return url


_new_record = object.__new__


def _member(key: PeerKey) -> str:
    return f"{key[0]}{KEYSEP}{key[1]}"


def _clean(text: str) -> str:
    """A field as stored: the separators cannot occur in it (peer ids are printable; addresses and region names hold none)."""
    return text.translate(_CONTROL)


class RedisPeerStore:
    """The swarms of a region in Redis, shared by its edges: a restarted edge, or another one, sees the same swarms."""

    def __init__(self, url: str, ttl: float = 90.0, prefix: str = "edgeswarm:"):
        import redis.asyncio as aioredis

        self.url = check_url(url)
        self.ttl = ttl
        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0, retry_on_timeout=False
        )
        self._put = self.redis.register_script(_PUT)
        self._remove = self.redis.register_script(_REMOVE)
        self._report = self.redis.register_script(_REPORT)
        self._regions: dict[tuple[str, str], Region] = {}

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()  # never a password in a log

    @property
    def keep(self) -> int:
        return max(1, int(self.ttl * KEEP_TTLS))

    async def _call(self, what, *args, **kwargs):
        import redis.exceptions as rex

        try:
            return await what(*args, **kwargs)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"tracker store {self.describe()} unreachable: {type(exc).__name__}: {exc}") from None

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    def _rest(self, rec: PeerRecord) -> str:
        region = rec.region
        fields = (
            rec.peer_id,
            rec.url,
            rec.address,
            region.name if region else "",
            region.isp if region else "",
            format(rec.mask, "x"),
            str(rec.piece_count),
            str(rec.downloaded),
            rec.user if rec.user is not None else "",
            "1" if rec.user is not None else "",
            rec.group,
        )
        return SEP.join(_clean(f) for f in fields)

    def _decode(self, member: str, raw: str) -> PeerRecord:
        """A stored record; built without the dataclass's __init__ (an announce decodes up to 61: a third of its time otherwise)."""
        up, seen, rate, peer_id, url, address, rname, risp, mask, count, down, user, has_user, group = raw.split(SEP)
        region = None
        if rname:
            region = self._regions.get((rname, risp))
            if region is None:
                region = self._regions[(rname, risp)] = Region(rname, risp)
        rec = _new_record(PeerRecord)
        last = float(seen)
        rec.__dict__.update(
            peer_id=peer_id,
            url=url,
            address=address,
            region=region,
            piece_count=int(count),
            uploaded=int(up),
            downloaded=int(down),
            upload_rate=float(rate),
            last_seen=last,
            user=user if has_user else None,
            first_seen=last,
            owner=member.split(KEYSEP, 1)[0],
            group=group,
            _have=None,
            _mask=int(mask, 16),
        )
        return rec

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int) -> Placed:
        args = [
            self.prefix,
            cid,
            _member(rec.key),
            str(rec.uploaded),
            repr(now),
            self._rest(rec),
            repr(self.ttl),
            str(self.keep),
            str(sample + 1),
            _clean(_region_name(rec.region)),
            _clean(rec.user if rec.user is not None else NO_USER),
            repr(ALPHA),
        ]
        size, rate, blob = await self._call(self._put, keys=[], args=args)  # one string for the sample: parsed here, not per field
        rec.upload_rate = float(rate)
        cutoff = now - self.ttl
        candidates = []
        for entry in blob.split(ENTRYSEP) if blob else ():
            c = self._decode(*entry.split(PAIRSEP, 1))
            if c.last_seen >= cutoff:
                candidates.append(c)
        return Placed(int(size), candidates)

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None:
        raw = await self._call(self._remove, keys=[], args=[self.prefix, cid, _member(key)])
        return self._decode(_member(key), raw) if raw else None

    async def report(self, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool) -> None:
        args = [self.prefix, cid, _member(key), _clean(region), "1" if stopped else "0", str(self.keep), str(len(stats))]
        await self._call(self._report, keys=[], args=[*args, *stats, *(str(v) for v in stats.values())])

    async def shares(self) -> dict[str, Counter[str]]:
        regions = sorted(await self._call(self.redis.smembers, self.prefix + "shareregions"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for region in regions:
                pipe.hgetall(f"{self.prefix}share:{region}")
            rows = await self._call(pipe.execute)
        return {region: Counter({k: int(v) for k, v in row.items()}) for region, row in zip(regions, rows, strict=True)}

    async def swarm(self, cid: str) -> list[PeerRecord]:
        cutoff = repr(time.time() - self.ttl)
        members = await self._call(self.redis.zrangebyscore, f"{self.prefix}seen:{cid}", cutoff, "+inf")
        if not members:
            return []
        raws = await self._call(self.redis.hmget, f"{self.prefix}rec:{cid}", members)
        return [self._decode(m, r) for m, r in zip(members, raws, strict=True) if r is not None]

    async def contents(self) -> list[str]:
        cutoff = repr(time.time() - self.ttl)  # the edges' wall clocks, as in their announces
        return list(await self._call(self.redis.zrangebyscore, self.prefix + "contents", cutoff, "+inf"))

    async def counts(self, now: float | None = None) -> Counts:
        cutoff = repr((time.time() if now is None else now) - self.ttl)
        regions = sorted(await self._call(self.redis.smembers, self.prefix + "regions"))
        users = sorted(await self._call(self.redis.smembers, self.prefix + "userset"))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.prefix + "identities", cutoff, "+inf")
            for region in regions:
                pipe.zcount(f"{self.prefix}peers:{region}", cutoff, "+inf")
                pipe.zcount(f"{self.prefix}memb:{region}", cutoff, "+inf")
            for user in users:
                pipe.zcount(f"{self.prefix}users:{user}", cutoff, "+inf")
            got = await self._call(pipe.execute)
        out = Counts(identities=int(got[0]))
        for i, region in enumerate(regions):
            peers, members = got[1 + 2 * i], got[2 + 2 * i]
            if peers or members:
                out.peers[region], out.memberships[region] = int(peers), int(members)
        for i, user in enumerate(users):
            if got[1 + 2 * len(regions) + i]:
                out.users[user] = int(got[1 + 2 * len(regions) + i])
        out.reports = sum(out.memberships.values())
        return out

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """Trim the status indexes; swarms expire as they are announced to, and with their keys (``keep``).

        Returns nothing: which peers went silent is no one edge's news when
        several share the store (each edge forgets its own announcers itself).
        """
        cutoff = "(" + repr(now - self.ttl)
        regions = await self._call(self.redis.smembers, self.prefix + "regions")
        users = await self._call(self.redis.smembers, self.prefix + "userset")
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in ["identities", "contents", *(f"peers:{r}" for r in regions), *(f"memb:{r}" for r in regions)]:
                pipe.zremrangebyscore(self.prefix + key, "-inf", cutoff)
            for user in users:
                pipe.zremrangebyscore(f"{self.prefix}users:{user}", "-inf", cutoff)
            await self._call(pipe.execute)
        return []

    async def close(self) -> None:
        await self.redis.aclose()


def open_store(spec: str | None, ttl: float) -> MemoryPeerStore | RedisPeerStore:
    """``--tracker-store``: ``memory`` (the default) or a Redis URL; ValueError for anything else."""
    if spec in (None, "", "memory"):
        return MemoryPeerStore(ttl)
    return RedisPeerStore(check_url(spec), ttl)
