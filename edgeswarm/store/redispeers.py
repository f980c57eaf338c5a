"""The Redis peer store: one tracker state for several edges of a region (``--tracker-store redis://…``).

The store contract is edgeswarm.policy.peerstore's ``PeerStore``; tests/test_peerstore.py
runs the same tests against this store and the memory one.

Redis layout (every key under ``edgeswarm:``; docs/operations.md lists them):
per content a sorted set of its peers by last announce (``seen:CID``) and a
hash of their records (``rec:CID``), both expiring ``keep`` seconds after the
content's last announce, and of their last stats (``stats:CID``, each kept
``base_keep`` after its report, by ``bases:CID``); per region counters of
bytes by source kind (``share:REGION``, never expiring); and for /status,
sorted sets of live identities per region and user, and of live token users,
trimmed by ``expire``, and per identity its contents (``of:MEMBER``), so that
a ``stopped`` takes it out of them at once.  One Lua script per announce does the write,
expires up to 32 silent peers of that swarm, and samples; script calls
made at the same time go to Redis as one script run (store/redisbatch.py).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections import Counter

from edgeswarm.policy.peerstore import (
    NO_USER,
    UNMAPPED,
    Counts,
    MemoryPeerStore,
    Placed,
    StoreUnavailable,
    base_keep,
    region_name,
)
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import ALPHA, PeerKey, PeerRecord
from edgeswarm.store.redisbatch import ScriptBatcher

log = logging.getLogger("edgeswarm.store.redispeers")
KEEP_TTLS = 2  # a content's keys outlive its last announce by this many ttls
SWARMS_READ = 10_000  # memberships per region /status reads to list its swarms; beyond, the list is partial
CLOCK_SAID = 10.0  # seconds this edge's clock may run ahead of Redis's before it says so (its reads see the others' peers as silent)
DECODED_KEPT = 200_000  # decoded records an edge keeps to reuse while their stored text is unchanged (a few hundred bytes each)

SEP = "\x1f"  # between a record's fields: no peer id (printable), address, URL or region name holds it
KEYSEP = "\x1e"  # between a member's owner and peer id
PAIRSEP = "\x1d"  # between a member and its record, in an announce's sample
ENTRYSEP = "\x1c"  # between the sample's entries
_ALPHA = repr(ALPHA)
_CONTROL = str.maketrans({c: "?" for c in (SEP, KEYSEP, PAIRSEP, ENTRYSEP)})

# A stored record's region and user as the status indexes name them (region_name, NO_USER): its 7th, 12th and 13th fields.
_FIELD, _NEXT = "([^\\31]*)", "\\31[^\\31]*"
_PLACEMENT = f"""
local function placement(raw)
  local r, u, has = string.match(raw, '^[^\\31]*{_NEXT * 5}\\31{_FIELD}{_NEXT * 4}\\31{_FIELD}\\31{_FIELD}')
  return r ~= '' and r or '{UNMAPPED}', has == '1' and u or '{NO_USER}'
end
"""

# ARGV: prefix cid member uploaded now rest ttl keep sample region user alpha draws
# Silent peers are removed by the earlier of the edge's clock and Redis's (TIME): an edge whose clock ran 120 s ahead
# removed the other edges' peers as silent at its first announce, without a word (an adversarial session).  The record
# is stamped by the earlier too: an edge whose clock ran an hour ahead stamped its peers an hour into the future, and
# every edge counted and handed them out for the hour after they died (an adversarial session).
_PUT = (
    _PLACEMENT
    + """
local p, cid, member = ARGV[1], ARGV[2], ARGV[3]
local uploaded, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, keep, sample = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local region, user, alpha, draws = ARGV[10], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
-- of:MEMBER: the contents the peer is in, by last announce, and (score 0, below any announce) '\\31' .. the region
-- it is counted in
local seen, recs, of = p .. 'seen:' .. cid, p .. 'rec:' .. cid, p .. 'of:' .. member
-- at most 32 silent peers of the swarm removed an announce
local clock = redis.call('TIME')
local stamp = clock[1] .. '.' .. string.format('%06d', tonumber(clock[2]))
if tonumber(stamp) < now then now = tonumber(stamp) else stamp = ARGV[5] end
local silent = '(' .. (now - ttl)
local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', silent, 'LIMIT', 0, 32)
if #gone > 0 then
  redis.call('ZREM', seen, unpack(gone))
  redis.call('HDEL', recs, unpack(gone))
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
-- a token's user's peer that moved regions is counted where it announced last (the memory store's _joined), and its
-- record here in its new region only (its owner is the user: the user does not change)
local placed = redis.call('ZRANGEBYSCORE', of, 0, 0, 'LIMIT', 0, 1)[1]
if placed and placed ~= '\\31' .. region then
  redis.call('ZREM', p .. 'peers:' .. string.sub(placed, 2), member)
  redis.call('ZREM', of, placed)
end
if prev then
  local r = placement(prev)
  if r ~= region then redis.call('ZREM', p .. 'memb:' .. r, cid .. '\\30' .. member) end
end
redis.call('ZREMRANGEBYSCORE', of, '(0', silent)
local rstr = string.format('%.17g', rate)
redis.call('HSET', recs, member, ARGV[4] .. '\\31' .. stamp .. '\\31' .. rstr .. '\\31' .. ARGV[6])
redis.call('ZADD', seen, now, member)
redis.call('ZADD', of, now, cid, 0, '\\31' .. region)
for _, k in ipairs({seen, recs, of}) do redis.call('EXPIRE', k, keep) end
redis.call('ZADD', p .. 'contents', now, cid)
redis.call('ZADD', p .. 'identities', now, member)
redis.call('ZADD', p .. 'peers:' .. region, now, member)
redis.call('ZADD', p .. 'memb:' .. region, now, cid .. '\\30' .. member)
redis.call('SADD', p .. 'regions', region)
redis.call('ZADD', p .. 'users:' .. user, now, member)
redis.call('EXPIRE', p .. 'users:' .. user, keep)
redis.call('ZADD', p .. 'userseen', now, user)
local n = redis.call('ZCARD', seen)
local picked
if n <= sample then picked = redis.call('ZRANGE', seen, 0, -1) else picked = redis.call('ZRANDMEMBER', seen, draws) end
local blob = {}
if #picked > 0 then
  local got = redis.call('HMGET', recs, unpack(picked))
  for i = 1, #picked do
    if got[i] then blob[#blob + 1] = picked[i] .. '\\29' .. got[i] end
  end
end
return {n, rstr, table.concat(blob, '\\28'), stamp}
"""
)

# ARGV: prefix cid member
# The peer leaves the status indexes as it leaves the memory store's tallies (its _left): its membership at once; and
# when this record placed it (its newest), it stays where it is counted by its newest other record's time, or goes
# (none left).  A stopped peer stayed counted in /status for a ttl: a region's dashboard showed its peak audience
# a ttl after a live event ended (an adversarial session).
_REMOVE = (
    _PLACEMENT
    + """
local p, cid, member = ARGV[1], ARGV[2], ARGV[3]
local seen, recs, of = p .. 'seen:' .. cid, p .. 'rec:' .. cid, p .. 'of:' .. member
local prev = redis.call('HGET', recs, member)
if not prev then return false end
redis.call('HDEL', recs, member)
redis.call('ZREM', seen, member)
if redis.call('ZCARD', seen) == 0 then redis.call('ZREM', p .. 'contents', cid) end
local region, user = placement(prev)
redis.call('ZREM', p .. 'memb:' .. region, cid .. '\\30' .. member)
local was = redis.call('ZSCORE', of, cid)
if not was then return prev end  -- silent (trimmed), or put by an edge of an older version: left to expiry
redis.call('ZREM', of, cid)
local newest = redis.call('ZREVRANGEBYSCORE', of, '+inf', '(0', 'WITHSCORES', 'LIMIT', 0, 1)[2]
if newest and tonumber(newest) >= tonumber(was) then return prev end  -- a newer record places the peer
local placed = redis.call('ZRANGEBYSCORE', of, 0, 0, 'LIMIT', 0, 1)[1]
local keys = {'identities', 'peers:' .. (placed and string.sub(placed, 2) or region), 'users:' .. user}
for _, k in ipairs(keys) do
  if newest then redis.call('ZADD', p .. k, 'XX', newest, member) else redis.call('ZREM', p .. k, member) end
end
if not newest then redis.call('DEL', of) end
return prev
"""
)

# ARGV: prefix cid member region stopped keep now n kind1..kindn value1..valuen floor1..floorn (keep: seconds a silent
# peer's base is kept; floor: the announce's stats_base, 0 without one: peerstore.added)
# A base's time is its writer's (now + keep), so an edge with a shorter ttl than the others drops none of theirs early.
_REPORT = """
local p, cid, member, region, stopped = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local keep, now, n = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local key, bases = p .. 'stats:' .. cid, p .. 'bases:' .. cid
-- at most 32 bases past their time removed a report, by the earlier of the edge's clock and Redis's (as _PUT)
local clock = redis.call('TIME')
local stale = redis.call('ZRANGEBYSCORE', bases, '-inf', '(' .. math.min(now, clock[1] + clock[2] / 1000000), 'LIMIT', 0, 32)
if #stale > 0 then
  redis.call('ZREM', bases, unpack(stale))
  redis.call('HDEL', key, unpack(stale))
end
local prev = redis.call('HGET', key, member)
if (not prev) and stopped then return 0 end
local old, restart = {}, false
if prev then
  local i = 1
  for v in string.gmatch(prev, '[^,]+') do old[i] = tonumber(v); i = i + 1 end
end
for i = 1, n do
  if prev and tonumber(ARGV[8 + n + i]) < (old[i] or 0) then restart = true end
end
for i = 1, n do
  local v = tonumber(ARGV[8 + n + i])
  local floor = math.min(tonumber(ARGV[8 + 2 * n + i]), v)
  local d = v - floor
  if prev and not restart then d = v - math.max(old[i] or 0, floor) end
  if d ~= 0 then redis.call('HINCRBY', p .. 'share:' .. region, ARGV[8 + i], d) end
end
redis.call('SADD', p .. 'shareregions', region)
if stopped then
  redis.call('HDEL', key, member)
  redis.call('ZREM', bases, member)
else
  local vals = {}
  for i = 1, n do vals[i] = ARGV[8 + n + i] end
  redis.call('HSET', key, member, table.concat(vals, ','))
  redis.call('ZADD', bases, now + keep, member)
  for _, k in ipairs({key, bases}) do
    if redis.call('TTL', k) < keep then redis.call('EXPIRE', k, keep) end
  end
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
        parts.port  # noqa: B018 - raises ValueError when the port is not a number, or out of range
    except ValueError:
        raise ValueError(f"--tracker-store {url!r}: the port is not a number from 0 to 65535") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"--tracker-store {url!r}: the database {db!r} is not a number")
    from redis.asyncio.connection import parse_url

    try:
        parse_url(url)  # the query's options (?db=, ?socket_timeout=): the client's own checks, before the edge starts
    except ValueError as exc:
        raise ValueError(f"--tracker-store {url!r}: {exc}") from None
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
        from redis.maint_notifications import MaintNotificationsConfig

        self.url = check_url(url)
        self.ttl = ttl
        self.prefix = prefix
        # without the maintenance notifications (Redis Enterprise's, "auto" by default), the pool checks that a connection
        # it hands out was not closed by Redis meanwhile (its idle ``timeout``): it handed them out stale, and the read
        # for /status, the expiry or a script's load failed, an outage logged each quiet interval (a review)
        self.redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry_on_timeout=False,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._batch = ScriptBatcher(self.redis, self._unavailable)
        self._regions: dict[tuple[str, str], Region] = {}
        self._lifetimes_of, self._lifetimes_text = -1.0, ("", "")
        self._ahead = 0.0  # seconds this edge's clock runs ahead of Redis's (its TIME): reads judge silence by the earlier
        self._behind = False  # this edge's clock was found behind Redis's by more than CLOCK_SAID (said once while so)
        self._texts: dict[str, str] = {}  # member -> its stored text, as last decoded or written here
        self._decoded: dict[str, PeerRecord] = {}  # member -> the record that text decodes to

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()  # never a password in a log

    def at(self, now: float) -> float:
        """The wall clock, whatever the tracker's: the edges sharing this store compare each other's times."""
        return time.time()

    def behind(self) -> float:
        """Redis's clock behind this edge's, which _PUT stamps by then: an edge an hour ahead pruned every record, its
        askers' own too, from its tracker's pool by its own clock, and handed out no peer at all (a review)."""
        return self._ahead

    @property
    def keep(self) -> int:
        return max(1, int(self.ttl * KEEP_TTLS))

    def _lifetimes(self) -> tuple[str, str]:
        """The ttl and ``keep`` as an announce's script gets them: written again only when the ttl changed (the tracker sets it)."""
        if self._lifetimes_of != self.ttl:
            self._lifetimes_of, self._lifetimes_text = self.ttl, (repr(self.ttl), str(self.keep))
        return self._lifetimes_text

    async def _call(self, what, *args, **kwargs):
        import redis.exceptions as rex

        try:
            return await what(*args, **kwargs)
        # unreachable; or a full or read-only Redis (a failover's replica), or a database it lacks (ResponseError)
        except (rex.ConnectionError, rex.TimeoutError, OSError, rex.ResponseError) as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """Unreachable, or answering that it cannot serve (full, read-only, loading): announces are answered 503 either way."""
        import redis.exceptions as rex

        said = str(exc)[:200]
        if isinstance(exc, rex.AuthenticationError):  # a ConnectionError to redis-py: it is there, and says no
            how, said = "refuses", f"{said} (check the password in --tracker-store)"
        elif isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
            how = "unreachable"
            if not said.strip():  # redis-py's timeouts say nothing
                said = f"no answer within {self.redis.connection_pool.connection_kwargs.get('socket_timeout')} s"
        else:
            how = "refuses"
            if "compiling script" in said:  # the shebang of the batch's script (redisbatch.py): a Redis before 7.0
                said = f"{said} (edgeswarm needs Redis 7.0 or later)"
        return StoreUnavailable(f"tracker store {self.describe()} {how}: {type(exc).__name__}: {said}", how, type(exc).__name__)

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    async def evicts(self) -> str | None:
        """The Redis's eviction policy when it may evict keys (a memory limit and a policy other than noeviction), else None.

        Evicted, a swarm's keys lose its peers until they announce again,
        and its report bases (``stats:``, which expire: what volatile-lru,
        managed Redis's usual default, takes first) make those peers'
        next reports count whole: totals 2.1 to 2.3 times the bytes reported
        (an adversarial session).  Full with noeviction, Redis refuses writes:
        announces get 503 and nothing is counted twice.
        """
        memory = await self._call(self.redis.info, "memory")
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        return policy if int(memory.get("maxmemory", 0) or 0) > 0 and policy != "noeviction" else None

    async def too_old(self) -> str | None:
        """The server's version when it is older than 7.0, which refuses the announce scripts (their shebang: redisbatch.py)."""
        server = await self._call(self.redis.info, "server")
        version = str(server.get("redis_version", ""))
        try:
            major = int(version.split(".", 1)[0])
        except ValueError:
            return None  # a server that says no version (a proxy): its announces tell
        return version if major < 7 else None

    def _rest(self, rec: PeerRecord) -> tuple[str, bool]:
        """The record's stored fields after its counters, and whether they are its own (False: a separator was replaced, see _clean)."""
        region, user = rec.region, rec.user
        fields = (
            rec.peer_id,
            rec.url,
            rec.address,
            region.name if region else "",
            region.isp if region else "",
            format(rec.mask, "x"),
            str(rec.piece_count),
            str(rec.downloaded),
            user if user is not None else "",
            "1" if user is not None else "",
            rec.group,
        )
        if "".join(fields).isprintable():  # the separators are control characters: none in any field, nothing to clean
            return SEP.join(fields), True
        return SEP.join(_clean(f) for f in fields), False

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

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int, draws: int | None = None) -> Placed:
        member, uploaded, seen = _member(rec.key), str(rec.uploaded), repr(now)
        rest, exact = self._rest(rec)
        args = [
            self.prefix,
            cid,
            member,
            uploaded,
            seen,
            rest,
            *self._lifetimes(),
            str(sample + 1),
            _clean(region_name(rec.region)),
            _clean(rec.user if rec.user is not None else NO_USER),
            _ALPHA,
            str(draws or sample + 1),
        ]
        size, rate, blob, stamp = await self._batch.call(_PUT, args)  # one string for the sample: parsed here, not per field
        stamped = float(stamp)  # the record's time: ours, or Redis's when ours runs ahead (_PUT)
        self._saw_clock(now, stamped)
        rec.upload_rate, rec.last_seen, seen = float(rate), stamped, stamp
        if exact:  # what the script stored is this record, field for field: a draw of it reuses it (decoding it would make its twin)
            self._keep_decoded(member, f"{uploaded}{SEP}{seen}{SEP}{rate}{SEP}{rest}", rec)
        cutoff = now - self._ahead - self.ttl  # by Redis's clock when ours runs ahead, as _PUT's removals
        candidates = []
        for entry in blob.split(ENTRYSEP) if blob else ():
            c = self._cached(*entry.split(PAIRSEP, 1))
            if c.last_seen >= cutoff:
                candidates.append(c)
        return Placed(int(size), candidates)

    def _saw_clock(self, now: float, redis_now: float) -> None:
        """Redis's clock against ours: reads judge silence by the earlier of the two, as _PUT removes, or an edge whose
        clock ran 120 s ahead handed out and counted only its own peers (an adversarial session).  Said once while so."""
        ahead = max(0.0, now - redis_now)
        if ahead > CLOCK_SAID and self._ahead <= CLOCK_SAID:
            log.warning(
                "this edge's clock runs %.0f s ahead of tracker store %s's: peers' silence is judged by Redis's clock; "
                "keep the edges' clocks in step (NTP)",
                ahead,
                self.describe(),
            )
        self._ahead = ahead

    def _saw_behind(self, now: float, redis_now: float) -> None:
        """Said once while so: this edge's clock behind Redis's.  Its records are stamped by its clock, so the other
        edges take its live peers for silent that much sooner and remove them; nothing said it (a review)."""
        behind = redis_now - now > CLOCK_SAID
        if behind and not self._behind:
            log.warning(
                "this edge's clock runs %.0f s behind tracker store %s's: the other edges sharing it take this edge's "
                "peers for silent that much sooner; keep the edges' clocks in step (NTP)",
                redis_now - now,
                self.describe(),
            )
        self._behind = behind

    def _cached(self, member: str, raw: str) -> PeerRecord:
        """The record stored as ``raw``: decoded once while that text stays the same (a record changes only when its peer announces).

        A reused record keeps what ranking and answers cache on it (its rank
        key, its wire bitfield): most of a sample was already drawn by an
        earlier announce.  Candidates are never changed by the tracker, so
        sharing them between answers is safe (the memory store hands out the
        records it keeps, the askers' own, the same way).
        """
        if self._texts.get(member) == raw:
            return self._decoded[member]
        rec = self._decode(member, raw)
        self._keep_decoded(member, raw, rec)
        return rec

    def _keep_decoded(self, member: str, raw: str, rec: PeerRecord) -> None:
        """Remember ``rec`` as what ``raw`` decodes to; past ``DECODED_KEPT`` members the cache starts afresh.

        Two dicts, not one of (text, record) pairs: a dict of strings is no
        work for the cyclic garbage collector, and a pair holding a record
        would be one more object per peer for it to walk.
        """
        texts = self._texts
        if len(texts) >= DECODED_KEPT and member not in texts:
            texts.clear()
            self._decoded.clear()
        texts[member] = raw
        self._decoded[member] = rec

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None:
        raw = await self._batch.call(_REMOVE, [self.prefix, cid, _member(key)])
        return self._decode(_member(key), raw) if raw else None

    async def report(
        self, now: float, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool, base: dict[str, int] | None = None
    ) -> None:
        args = [
            self.prefix,
            cid,
            _member(key),
            _clean(region),
            "1" if stopped else "0",
            str(int(base_keep(self.ttl))),
            repr(now),
            str(len(stats)),
            *stats,
            *map(str, stats.values()),
            *(str((base or {}).get(kind, 0)) for kind in stats),
        ]
        await self._batch.call(_REPORT, args)

    async def shares(self) -> dict[str, Counter[str]]:
        regions = sorted(await self._call(self.redis.smembers, self.prefix + "shareregions"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for region in regions:
                pipe.hgetall(f"{self.prefix}share:{region}")
            rows = await self._call(pipe.execute)
        return {region: Counter({k: int(v) for k, v in row.items()}) for region, row in zip(regions, rows, strict=True)}

    async def swarm(self, cid: str) -> list[PeerRecord]:
        cutoff = repr(time.time() - self._ahead - self.ttl)
        members = await self._call(self.redis.zrangebyscore, f"{self.prefix}seen:{cid}", cutoff, "+inf")
        if not members:
            return []
        raws = await self._call(self.redis.hmget, f"{self.prefix}rec:{cid}", members)
        return [self._decode(m, r) for m, r in zip(members, raws, strict=True) if r is not None]

    async def contents(self) -> list[str]:
        cutoff = repr(time.time() - self._ahead - self.ttl)  # the edges' wall clocks, as in their announces
        return list(await self._call(self.redis.zrangebyscore, self.prefix + "contents", cutoff, "+inf"))

    async def counts(self, now: float | None = None) -> Counts:
        cutoff = repr((time.time() if now is None else now) - self._ahead - self.ttl)
        regions = sorted(await self._call(self.redis.smembers, self.prefix + "regions"))
        users = sorted(await self._call(self.redis.zrangebyscore, self.prefix + "userseen", cutoff, "+inf"))  # live ones
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.prefix + "identities", cutoff, "+inf")
            for region in regions:
                pipe.zcount(f"{self.prefix}peers:{region}", cutoff, "+inf")
                pipe.zcount(f"{self.prefix}memb:{region}", cutoff, "+inf")
            for region in regions:  # the dashboard's swarms: a bounded read of each region's memberships
                pipe.zrangebyscore(f"{self.prefix}memb:{region}", cutoff, "+inf", start=0, num=SWARMS_READ)
            for user in users:
                pipe.zcount(f"{self.prefix}users:{user}", cutoff, "+inf")
            got = await self._call(pipe.execute)
        out = Counts(identities=int(got[0]))
        for i, region in enumerate(regions):
            peers, members = got[1 + 2 * i], got[2 + 2 * i]
            if peers or members:
                out.peers[region], out.memberships[region] = int(peers), int(members)
        for i, region in enumerate(regions):
            members = got[1 + 2 * len(regions) + i]
            if members:
                out.swarms[region] = Counter(m.split(KEYSEP, 1)[0] for m in members)
        for i, user in enumerate(users):
            if got[1 + 3 * len(regions) + i]:
                out.users[user] = int(got[1 + 3 * len(regions) + i])
        out.reports = sum(out.memberships.values())
        return out

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """Trim the status indexes; swarms expire as they are announced to, and with their keys (``keep``).

        Returns nothing: which peers went silent is no one edge's news when
        several share the store (each edge forgets its own announcers itself).
        By the earlier of ``now`` and Redis's clock, as _PUT: an edge ahead
        of the others trims nothing they still count.
        """
        seconds, micros = await self._call(self.redis.time)
        self._saw_clock(now, seconds + micros / 1_000_000)
        self._saw_behind(now, seconds + micros / 1_000_000)
        cutoff = "(" + repr(now - self._ahead - self.ttl)
        regions = await self._call(self.redis.smembers, self.prefix + "regions")
        users = await self._call(self.redis.zrangebyscore, self.prefix + "userseen", cutoff, "+inf")  # the silent ones' keys expire
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in ["identities", "contents", "userseen", *(f"peers:{r}" for r in regions), *(f"memb:{r}" for r in regions)]:
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
