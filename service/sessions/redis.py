"""Sessions in Redis, shared by every replica: the `Store` contract of `service.sessions.store`, with the
semantics of `MemoryStore`.

Keys (every key of one session shares the hash tag `{<id>}`, so they live in one Cluster slot):

- `<prefix>{<id>}`: a hash of the definitions (`losses`, JSON), `ttl_s`, `ttl_ms`, `nlosses`, and the totals:
  `<i>:s`, `<i>:w`, `<i>:n` for loss i, `<i>:<label>:s` ... for its group `<label>`.
- `<prefix>{<id>}:batches`: a hash of the applied batch ids (id -> digest).
- `<prefix>{<id>}:groups`: the set of every group label the session holds (for the group limit).
- `<prefix>sessions`: the index of live sessions, a sorted set scored by expiry (Redis time, ms), so the
  session limit holds over every replica.

Creating and applying are each one Lua script, so each is atomic: a script checks everything before it
writes anything. Sums and weights are float64 added in Lua (doubles, as Python adds them) and stored as
`%.17g`, which reads back bit-for-bit; increments travel as `repr(float)`. Counts use HINCRBY (int64).
The scripts also touch the index, which lies in another slot: they need a single Redis (or one shard), not
a Cluster spanning several.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from service.errors import Conflict, StoreUnavailable, TooManySessions
from service.sessions.state import LossTotals, Merged, Record, SessionLimits, Totals, labels
from service.sessions.store import count_full, missing, new_id

CONNECT_TIMEOUT_S = 1.0
OPERATION_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0
HEALTH_CHECK_INTERVAL_S = 10
DEFINITIONS_CACHED = 1024

_ID = re.compile(r"[0-9a-f]{32}")
"""What `new_id` makes; any other id names no session (and never reaches a key name)."""

# Shared by both scripts. `now_ms` is Redis' clock, the one key expiry follows. `write_totals` adds (or, at
# create, sets) the totals given as (field, sum, weight, count) from ARGV[first] on; numbers are formatted
# explicitly: Lua's own number-to-string conversion keeps 14 digits only.
_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(value)
  if not value then return 0 end
  return tonumber(value)
end

local function fmt(value)
  return string.format('%.17g', value)
end

local function add_in_chunks(command, key, first, last, step)
  -- unpack has a stack limit: a long list goes in chunks
  local i = first
  while i <= last do
    local j = math.min(i + 1999, last)
    redis.call(command, key, unpack(ARGV, i, j))
    i = j + 1
  end
end

local function refresh(main, batches, groups, index, id, ttl_ms)
  redis.call('PEXPIRE', main, ttl_ms)
  redis.call('PEXPIRE', batches, ttl_ms)
  redis.call('PEXPIRE', groups, ttl_ms)
  redis.call('ZADD', index, string.format('%.0f', now_ms() + tonumber(ttl_ms)), id)
end
"""

# KEYS: main, batches, groups, index. ARGV: id, batch id, digest, max batches, max groups, number of losses,
# the distinct labels (space-separated), then (field, sum, weight, count) per total, space-separated: two
# strings rather than one argument each, which redis-py would pack one by one. Answers {outcome, detail}.
_APPLY = (
    _LUA_COMMON
    + """
local function words(text)
  local out = {}
  for word in string.gmatch(text, '%S+') do out[#out + 1] = word end
  return out
end

local main, batches, groups, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta = redis.call('HMGET', main, 'ttl_ms', 'nlosses')
if not meta[1] then return {'missing', ''} end
local seen = redis.call('HGET', batches, ARGV[2])
if seen then
  if seen == ARGV[3] then return {'duplicate', ''} end
  return {'conflict', ''}
end
if meta[2] ~= ARGV[6] then return {'losses', meta[2]} end
local held = redis.call('HLEN', batches) + 1
if held > tonumber(ARGV[4]) then return {'batches', tostring(held)} end
local new_labels = words(ARGV[7])
local new = 0
for _, label in ipairs(new_labels) do
  new = new + 1 - redis.call('SISMEMBER', groups, label)
end
local grouped = (redis.call('SCARD', groups) + new) * tonumber(ARGV[6])  -- group totals: labels x losses
if grouped > tonumber(ARGV[5]) then return {'groups', tostring(grouped)} end
local totals = words(ARGV[8])
local fields = {}
for i = 1, #totals, 4 do
  fields[#fields + 1] = totals[i] .. ':s'
  fields[#fields + 1] = totals[i] .. ':w'
  fields[#fields + 1] = totals[i] .. ':n'
end
local now = {}  -- one HMGET for every total (in chunks: unpack has a stack limit)
for i = 1, #fields, 3000 do
  local part = redis.call('HMGET', main, unpack(fields, i, math.min(i + 2999, #fields)))
  for j = 1, #part do now[#now + 1] = part[j] end
end
local writes = {}
for i = 1, #totals, 4 do
  local k = (i - 1) / 4 * 3
  local count = num(now[k + 3]) + tonumber(totals[i + 3])
  if count >= 9007199254740992 then return {'count', totals[i]} end  -- 2^53: exact in Lua's doubles below
  writes[#writes + 1] = fields[k + 1]
  writes[#writes + 1] = fmt(num(now[k + 1]) + tonumber(totals[i + 1]))
  writes[#writes + 1] = fields[k + 2]
  writes[#writes + 1] = fmt(num(now[k + 2]) + tonumber(totals[i + 2]))
  writes[#writes + 1] = fields[k + 3]
  writes[#writes + 1] = string.format('%.0f', count)
end
-- checked: from here on, only writes (one HSET, in chunks)
for i = 1, #writes, 4000 do
  redis.call('HSET', main, unpack(writes, i, math.min(i + 3999, #writes)))
end
for i = 1, #new_labels, 2000 do  -- unpack has a stack limit: a long list goes in chunks
  redis.call('SADD', groups, unpack(new_labels, i, math.min(i + 1999, #new_labels)))
end
redis.call('HSET', batches, ARGV[2], ARGV[3])
refresh(main, batches, groups, index, ARGV[1], meta[1])
return {'applied', ''}
"""
)

# KEYS: main, batches, groups, index. ARGV: id, max sessions, max batches, max groups, ttl_s, ttl_ms, losses
# (JSON), number of losses, B, B (batch id, digest) pairs, L, L labels, then (field, sum, weight, count) per
# total. Answers {outcome, detail}.
_CREATE = (
    _LUA_COMMON
    + """
local main, batches, groups, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = string.format('%.0f', now_ms())
local held = redis.call('ZCOUNT', index, '(' .. now, '+inf')  -- sessions not expired
if held >= tonumber(ARGV[2]) then return {'sessions', tostring(held)} end
if redis.call('EXISTS', main) == 1 then return {'exists', ''} end
local nbatches = tonumber(ARGV[9])
if nbatches > tonumber(ARGV[3]) then return {'batches', tostring(nbatches)} end
local at = 10 + 2 * nbatches
local nlabels = tonumber(ARGV[at])
if nlabels * tonumber(ARGV[8]) > tonumber(ARGV[4]) then return {'groups', tostring(nlabels * tonumber(ARGV[8]))} end
-- the first write: one Redis refuses at its maxmemory, which it checks at a script's first write only
redis.call('HSET', main, 'losses', ARGV[7], 'ttl_s', ARGV[5], 'ttl_ms', ARGV[6], 'nlosses', ARGV[8])
redis.call('ZREMRANGEBYSCORE', index, '-inf', now)  -- the expired sessions' entries
for i = at + nlabels + 1, #ARGV, 4 do
  local field = ARGV[i]
  redis.call('HSET', main, field .. ':s', ARGV[i + 1], field .. ':w', ARGV[i + 2], field .. ':n', ARGV[i + 3])
end
if nbatches > 0 then add_in_chunks('HSET', batches, 10, at - 1) end
if nlabels > 0 then add_in_chunks('SADD', groups, at + 1, at + nlabels) end
refresh(main, batches, groups, index, ARGV[1], ARGV[6])
return {'created', ''}
"""
)

_UNREACHABLE: tuple[type[BaseException], ...] = (rx.ConnectionError, rx.TimeoutError, TimeoutError)
"""Redis cannot be reached (BusyLoadingError and AuthenticationError are ConnectionErrors)."""
_CANNOT_SERVE: tuple[type[BaseException], ...] = (rx.ReadOnlyError, rx.OutOfMemoryError)
_CANNOT_SERVE_PREFIXES = ("MISCONF", "BUSY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS", "LOADING", "CLUSTERDOWN")
"""Error replies of a Redis that is up but cannot serve now (a replica after failover, out of memory, ...)."""


def _where(url: str) -> str:
    """The URL without its credentials, for messages."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        port = parts.port or 6379
    except ValueError:
        return "(an unreadable Redis URL)"
    db = parts.path if parts.path not in ("", "/") else "/0"
    return f"{parts.scheme}://{host}:{port}{db}"


def _increments(totals: list[LossTotals]) -> list[str]:
    """(field, sum, weight, count) for each loss total and group: repr reads back exactly in Lua's tonumber."""
    args: list[str] = []
    for i, loss in enumerate(totals):
        for field, t in [(str(i), loss.total), *((f"{i}:{label}", g) for label, g in loss.groups.items())]:
            args += [field, repr(float(t.sum)), repr(float(t.weight)), str(int(t.count))]
    return args


def _totals(fields: dict[str, str], nlosses: int) -> list[LossTotals]:
    """The totals held in a session's main hash."""
    out = [LossTotals() for _ in range(nlosses)]
    groups: list[dict[str, Totals]] = [{} for _ in range(nlosses)]
    for key, value in fields.items():
        if not key[:1].isdigit():
            continue
        field, kind = key.rsplit(":", 1)
        index, _, label = field.partition(":")
        t = groups[int(index)].setdefault(label, Totals()) if label else out[int(index)].total
        if kind == "n":
            t.count = int(value)
        elif kind == "s":
            t.sum = float(value)
        else:
            t.weight = float(value)
    for loss, held in zip(out, groups, strict=True):
        loss.groups = {label: held[label] for label in sorted(held, key=_numeric)}
    return out


class _Coalesced:
    """Runs of a script that arrive together go to Redis together: while one round trip is out, the runs that come
    wait, and then leave as one pipeline of EVALSHAs (each still atomic on its own, so nothing changes for a batch
    but the trip). Under load a replica's batches share round trips instead of taking one each.

    As one trip is out at a time, the trips keep one connection of the client's pool (taken at the first, given
    back at `close`): a batch pays for packing its command and parsing its reply, not for a pool checkout and
    redis-py's per-command bookkeeping, which took about a third of an EVALSHA's CPU time here. The connection's
    own retry policy applies (the client's: reconnect once), as it would to any command."""

    def __init__(self, client: Redis, script: Any):
        self.client = client
        self.script = script
        self.waiting: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self.sending = False
        self._sender: asyncio.Future[None] | None = None
        self._connection: AbstractConnection | None = None
        self.closed = False

    async def run(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((keys, args, future))
        if not self.sending:
            self.sending = True
            self._sender = asyncio.ensure_future(self._send())
        return await future

    async def close(self) -> None:
        """Let the trip out finish (its runs are answered), then close the connection; no trip leaves after."""
        self.closed = True
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._sender), OPERATION_TIMEOUT_S)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.disconnect()
            await self.client.connection_pool.release(connection)

    async def _send(self) -> None:
        try:
            while self.waiting:
                runs, self.waiting = self.waiting, []
                try:
                    results = await self._trip(runs)
                except Exception as exc:  # the connection: every run of this trip fails alike
                    results = [exc] * len(runs)
                for (_, _, future), result in zip(runs, results, strict=True):
                    if future.done():  # its request was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.sending = False

    async def _trip(self, runs: list[tuple[list[str], list[Any], Any]]) -> list[Any]:
        if self.closed:
            raise rx.ConnectionError("the session store is closed")
        if self._connection is None:
            self._connection = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        connection = self._connection
        commands = [("EVALSHA", self.script.sha, len(keys), *keys, *args) for keys, args, _ in runs]
        results: list[Any] = []  # replies read, kept over a retry: only the commands not answered are sent again
        await connection.retry.call_with_retry(
            lambda: self._exchange(connection, commands[len(results) :], results), lambda _: connection.disconnect()
        )
        for i, result in enumerate(results):
            if isinstance(result, rx.NoScriptError):  # Redis restarted or flushed its scripts: run it alone
                keys, args, _ = runs[i]
                try:
                    results[i] = await self.script(keys=keys, args=args)  # the Script loads itself again
                except Exception as exc:
                    results[i] = exc
        return results

    @staticmethod
    async def _exchange(connection: AbstractConnection, commands: list[tuple[Any, ...]], results: list[Any]) -> None:
        """Send the commands in one write and add one reply each to `results`; an error reply is that command's
        result. Any other failure leaves the connection closed (redis-py closes it), so a retry or the next trip
        starts on a fresh one."""
        await connection.send_packed_command(connection.pack_commands(commands))
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except rx.ResponseError as exc:  # read whole: the connection is still in step
                results.append(exc)


class RedisStore:
    """Sessions in Redis (see the module docstring). Every method is one round trip: a script or a
    MULTI/EXEC transaction."""

    def __init__(self, url: str, limits: SessionLimits, prefix: str = "lossd:"):
        self.limits = limits
        self.prefix = prefix
        self.where = _where(url)
        try:
            self._client: Redis = self._connect(url)
        except ValueError:  # its message may quote part of the password
            raise ValueError(
                "LOSSD_REDIS_URL is not a valid redis:// URL (percent-encode special characters of a password)"
            ) from None
        # Script objects send EVALSHA and load the script again on NOSCRIPT (after a restart or a flush).
        self._applies = _Coalesced(self._client, self._client.register_script(_APPLY))
        self._create = self._client.register_script(_CREATE)
        self._index = f"{prefix}sessions"
        self._definitions: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        """Loss definitions by session id, the most recent `DEFINITIONS_CACHED`: they never change, so a batch
        needs one round trip to Redis (its apply, which finds a deleted or expired session missing), not two."""

    @staticmethod
    def _connect(url: str) -> Redis:
        return Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=OPERATION_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            # One quick retry on a broken connection (a pooled one that Redis closed, or a Redis restarted
            # since): a retried apply whose first try went through answers "duplicate", never adds twice.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(rx.ConnectionError,)),
        )

    def _forget(self, session_id: str) -> None:
        self._definitions.pop(session_id, None)

    def _keys(self, session_id: str) -> list[str]:
        """The session's keys: main hash, batches, groups, and the index. An id that `new_id` could not have
        made names no session, and never reaches a key name."""
        if not _ID.fullmatch(session_id):
            raise missing(session_id)
        main = f"{self.prefix}{{{session_id}}}"
        return [main, f"{main}:batches", f"{main}:groups", self._index]

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Redis errors that mean "not now" become `StoreUnavailable` (503, Retry-After)."""
        try:
            yield
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"the session store at {self.where} is unreachable: {_say(exc)}") from exc
        except rx.ResponseError as exc:
            # a pipeline wraps the reply: "Command # 1 (HGETALL ...) of pipeline caused error: BUSY ..."
            reply = str(exc).rpartition("caused error: ")[2].lstrip("('\"")
            if isinstance(exc, _CANNOT_SERVE) or reply.startswith(_CANNOT_SERVE_PREFIXES):
                raise StoreUnavailable(f"the session store at {self.where} cannot serve now: {exc}") from exc
            raise

    async def create(self, losses: list[dict[str, Any]], ttl_s: int, merged: Merged | None = None) -> Record:
        totals = merged.totals if merged else [LossTotals() for _ in losses]
        batches = merged.batches if merged else {}
        held = sorted(labels(totals))
        definitions = orjson.dumps(losses).decode()
        pairs = [x for item in batches.items() for x in item]
        while True:
            session_id = new_id()
            args: list[Any] = [session_id, self.limits.max_sessions, self.limits.max_batches, self.limits.max_groups]
            args += [ttl_s, ttl_s * 1000, definitions, len(totals), len(batches), *pairs, len(held), *held]
            args += _increments(totals)
            with self._unavailable():
                outcome, detail = await self._create(keys=self._keys(session_id), args=args)
            if outcome != "exists":  # 128 random bits: never, but then a new id
                break
        if outcome == "sessions":
            raise TooManySessions(
                f"the server holds {detail} sessions, its limit; delete finished ones",
                limit=self.limits.max_sessions,
                actual=int(detail) + 1,
            )
        if outcome == "batches":
            raise self.limits.full_batches(int(detail))
        if outcome == "groups":
            raise self.limits.full_groups(int(detail))
        assert outcome == "created", outcome
        return Record(session_id, losses, ttl_s, len(batches), time.time() + ttl_s, totals)

    async def get(self, session_id: str) -> Record:
        fields, batches, pttl = await self._read(session_id, "HLEN")
        return self._record(session_id, fields, int(batches), pttl)

    async def losses(self, session_id: str) -> list[dict[str, Any]]:
        cached = self._definitions.get(session_id)
        if cached is not None:
            self._definitions.move_to_end(session_id)
            return cached
        main = self._keys(session_id)[0]
        with self._unavailable():
            definitions = await self._client.hget(main, "losses")
        if definitions is None:
            raise missing(session_id)
        losses: list[dict[str, Any]] = orjson.loads(definitions)
        self._definitions[session_id] = losses
        if len(self._definitions) > DEFINITIONS_CACHED:
            self._definitions.popitem(last=False)
        return losses

    async def apply(self, session_id: str, batch_id: str, digest: str, increments: list[LossTotals]) -> bool:
        keys = self._keys(session_id)
        new = " ".join(sorted(labels(increments)))
        args: list[Any] = [session_id, batch_id, digest, self.limits.max_batches, self.limits.max_groups]
        args += [len(increments), new, " ".join(_increments(increments))]
        with self._unavailable():
            outcome, detail = await self._applies.run(keys, args)
        if outcome == "applied":
            return True
        if outcome == "duplicate":
            return False
        if outcome == "missing":
            self._forget(session_id)
            raise missing(session_id)
        if outcome == "conflict":
            raise Conflict(
                f"batch {batch_id!r} was applied with other content; send new batches under new ids",
                loc=("batch_id",),
            )
        if outcome == "batches":
            raise self.limits.full_batches(int(detail))
        if outcome == "groups":
            raise self.limits.full_groups(int(detail))
        if outcome == "count":
            raise count_full(detail)
        assert outcome == "losses", outcome
        raise ValueError(f"{len(increments)} increments for a session of {detail} losses")

    async def export(self, session_id: str) -> tuple[Record, dict[str, str]]:
        fields, batches, pttl = await self._read(session_id, "HGETALL")
        return self._record(session_id, fields, len(batches), pttl), batches

    async def delete(self, session_id: str) -> None:
        main, batches, groups, index = self._keys(session_id)
        with self._unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.exists(main)
                pipe.delete(main, batches, groups)
                pipe.zrem(index, session_id)
                existed, *_ = await pipe.execute()
        self._forget(session_id)
        if not existed:
            raise missing(session_id)

    async def not_ready(self) -> str | None:
        try:
            with self._unavailable():
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await self._client.ping()
        except StoreUnavailable as exc:
            return exc.detail
        return None

    async def close(self) -> None:
        await self._applies.close()
        await self._client.aclose()

    async def _read(self, session_id: str, batches: str) -> tuple[dict[str, str], Any, int]:
        """The main hash, the batches (HLEN: their number, HGETALL: all of them) and the PTTL, at one instant."""
        main, batches_key, _, _ = self._keys(session_id)
        with self._unavailable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(main)
                pipe.execute_command(batches, batches_key)
                pipe.pttl(main)
                fields, held, pttl = await pipe.execute()
        if not fields or pttl < 0:
            raise missing(session_id)
        return fields, held, pttl

    def _record(self, session_id: str, fields: dict[str, str], batches: int, pttl: int) -> Record:
        losses = orjson.loads(fields["losses"])
        totals = _totals(fields, int(fields["nlosses"]))
        return Record(session_id, losses, int(fields["ttl_s"]), batches, time.time() + pttl / 1000, totals)


def _numeric(label: str) -> tuple[int, str]:
    """Labels in numeric order (they are decimal integers)."""
    try:
        return int(label), ""
    except ValueError:
        return 0, label


def _say(exc: BaseException) -> str:
    return str(exc) or f"no answer in time ({type(exc).__name__})"
