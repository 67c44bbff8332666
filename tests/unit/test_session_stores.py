"""The session store contract, the same tests over `MemoryStore` and `RedisStore` (against a real
redis-server, see tests/redis_server.py), then what only Redis has: replicas, outages and restarts."""

from __future__ import annotations

import asyncio
import copy
import math
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.errors import (
    Conflict,
    LossdError,
    SessionFull,
    SessionNotFound,
    StoreUnavailable,
    TooManySessions,
)
from service.sessions.redis import RedisStore
from service.sessions.state import LossTotals, Merged, SessionLimits, Totals
from service.sessions.store import MemoryStore, Store
from tests.redis_server import RedisServer
from tests.wait import wait_until_async

pytestmark = pytest.mark.anyio

LIMITS = SessionLimits(max_sessions=10, max_batches=100, max_groups=16)
LOSSES: list[dict[str, Any]] = [
    {"name": "mse_loss", "reduction": "mean", "tensors": ["input", "target"]},
    {"name": "l1_loss", "reduction": "sum", "tensors": ["input", "target"]},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Opens stores of one kind; `advance` lets time pass (a fake clock for memory, real time for Redis)."""

    kind: str
    server: RedisServer | None = None
    clock: FakeClock = field(default_factory=FakeClock)

    @asynccontextmanager
    async def store(self, limits: SessionLimits = LIMITS, prefix: str = "lossd:") -> AsyncIterator[Store]:
        store: Store
        if self.server is not None:
            store = RedisStore(self.server.url, limits, prefix=prefix)
        else:
            store = MemoryStore(limits, clock=self.clock)
        try:
            yield store
        finally:
            await store.close()

    def now(self) -> float:
        return self.clock() if self.server is None else time.time()

    async def advance(self, seconds: float) -> None:
        if self.server is None:
            self.clock.now += seconds
        else:  # not a wait: Redis's TTLs run on its own clock, so the time must pass (the tests' point)
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend("redis", request.getfixturevalue("redis_server"))
    return Backend("memory")


def inc(s: float, w: float, n: int, **groups: tuple[float, float, int]) -> LossTotals:
    """One loss's increment; groups by label (`g3=(...)` is label "3", `m2` is "-2")."""
    return LossTotals(
        Totals(s, w, n),
        {k[1:] if k[0] == "g" else "-" + k[1:]: Totals(*v) for k, v in groups.items()},
    )


def exact(totals: list[LossTotals]) -> list[Any]:
    """Totals as comparable values that tell every float apart (-0.0 from 0.0; any NaN is "nan")."""

    def f(x: float) -> str:
        return "nan" if math.isnan(x) else x.hex()

    def t(x: Totals) -> tuple[str, str, int]:
        return (f(x.sum), f(x.weight), x.count)

    return [(t(lt.total), {label: t(g) for label, g in lt.groups.items()}) for lt in totals]


def expected(*batches: list[LossTotals]) -> list[LossTotals]:
    """What Python's float additions give (MemoryStore's arithmetic)."""
    out = [LossTotals() for _ in LOSSES]
    for batch in batches:
        for into, add in zip(out, batch, strict=True):
            into.add(add)
    return out


def same_error(exc: LossdError, kind: type[LossdError], detail: str, **attributes: Any) -> None:
    assert type(exc) is kind
    assert exc.detail == detail
    for name, value in attributes.items():
        if name == "loc":
            assert exc.errors[0].loc == value
        else:
            assert getattr(exc, name) == value


LABELS = [str(i) for i in range(-5, 11)]
B1 = [inc(1.5, 2.0, 2, g0=(1.0, 1.0, 1), g1=(0.5, 1.0, 1)), inc(3.0, 0.0, 2, g1=(3.0, 0.0, 2))]
B2 = [inc(0.25, 1.0, 1, m2=(0.25, 1.0, 1)), inc(-1.0, 0.0, 1)]


# --- the contract, over both stores ---


async def test_create_get_losses_export_delete(backend: Backend) -> None:
    async with backend.store() as store:
        before = backend.now()
        record = await store.create(LOSSES, ttl_s=60)
        assert len(record.id) == 32
        assert (record.losses, record.ttl_s, record.batches) == (LOSSES, 60, 0)
        assert exact(record.totals) == exact(expected())
        assert before + 59 < record.expires_at <= backend.now() + 60

        assert await store.losses(record.id) == LOSSES
        assert await store.apply(record.id, "b1", "d1", B1) is True
        assert await store.apply(record.id, "b2", "d2", B2) is True
        got = await store.get(record.id)
        assert (got.id, got.losses, got.ttl_s, got.batches) == (record.id, LOSSES, 60, 2)
        assert exact(got.totals) == exact(expected(B1, B2))

        exported, batches = await store.export(record.id)
        assert batches == {"b1": "d1", "b2": "d2"}
        assert exact(exported.totals) == exact(got.totals)
        assert exported.batches == 2

        other = await store.create(LOSSES[:1], ttl_s=30)
        assert other.id != record.id
        assert await store.losses(other.id) == LOSSES[:1]

        await store.delete(record.id)
        detail = f"no session {record.id!r}: never created, deleted, or expired"
        for call in (
            store.get(record.id),
            store.losses(record.id),
            store.apply(record.id, "b3", "d3", B1),
            store.export(record.id),
            store.delete(record.id),
        ):
            with pytest.raises(SessionNotFound) as caught:
                await call
            same_error(caught.value, SessionNotFound, detail, loc=("id",))
        assert (await store.get(other.id)).batches == 0  # the other session is untouched


@pytest.mark.parametrize("session_id", ["0" * 32, "nope", "", "x}:batches", "{x}", "A" * 32])
async def test_unknown_ids(backend: Backend, session_id: str) -> None:
    async with backend.store() as store:
        await store.create(LOSSES, ttl_s=60)
        for call in (store.get, store.losses, store.export, store.delete):
            with pytest.raises(SessionNotFound):
                await call(session_id)
        with pytest.raises(SessionNotFound):
            await store.apply(session_id, "b", "d", B1)


async def test_duplicate_and_conflict(backend: Backend) -> None:
    async with backend.store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1) is True
        assert await store.apply(session, "b1", "d1", B2) is False  # same digest: a retry, content ignored
        with pytest.raises(Conflict) as caught:
            await store.apply(session, "b1", "other", B1)
        detail = "batch 'b1' was applied with other content; send new batches under new ids"
        same_error(caught.value, Conflict, detail, loc=("batch_id",))
        record, batches = await store.export(session)
        assert record.batches == 1
        assert batches == {"b1": "d1"}
        assert exact(record.totals) == exact(expected(B1))


async def test_batch_limit(backend: Backend) -> None:
    async with backend.store(SessionLimits(max_sessions=10, max_batches=2, max_groups=16)) as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)
        assert await store.apply(session, "b2", "d2", B2)
        with pytest.raises(SessionFull) as caught:
            await store.apply(session, "b3", "d3", B1)
        same_error(
            caught.value, SessionFull, "the session would hold 3 batches, over its limit of 2", limit=2, actual=3
        )
        assert await store.apply(session, "b2", "d2", B2) is False  # a duplicate is still answered
        record, batches = await store.export(session)
        assert record.batches == 2
        assert set(batches) == {"b1", "b2"}
        assert exact(record.totals) == exact(expected(B1, B2))


async def test_group_limit(backend: Backend) -> None:
    async with backend.store(SessionLimits(max_sessions=10, max_batches=100, max_groups=6)) as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)  # labels 0, 1
        # a label counts once per loss of the session: labels 0, 1, 5 (in any loss) make 3 x 2 group totals
        fits = [inc(1.0, 1.0, 1, g5=(1.0, 1.0, 1), g1=(0.0, 0.0, 0)), inc(1.0, 1.0, 1, g5=(1.0, 1.0, 1))]
        too_many = [
            inc(1.0, 1.0, 1, g6=(1.0, 1.0, 1), g8=(1.0, 1.0, 1)),
            inc(1.0, 1.0, 1, m7=(1.0, 1.0, 1), g0=(1.0, 1.0, 1)),
        ]
        with pytest.raises(SessionFull) as caught:
            await store.apply(session, "b2", "d2", [*fits[:1], too_many[1]])
        detail = "the session would hold 8 group totals (group labels x losses), over its limit of 6"
        same_error(caught.value, SessionFull, detail, loc=("groups",), limit=6, actual=8)
        with pytest.raises(SessionFull) as caught:
            await store.apply(session, "b2", "d2", too_many)
        detail = "the session would hold 10 group totals (group labels x losses), over its limit of 6"
        same_error(caught.value, SessionFull, detail, loc=("groups",), limit=6, actual=10)
        record, batches = await store.export(session)  # nothing of the refused batches
        assert record.batches == 1
        assert batches == {"b1": "d1"}
        assert exact(record.totals) == exact(expected(B1))
        assert await store.apply(session, "b2", "d2", fits)  # the id was not taken by the refusals
        assert exact((await store.get(session)).totals) == exact(expected(B1, fits))


async def test_sessions_limit(backend: Backend) -> None:
    async with backend.store(SessionLimits(max_sessions=2, max_batches=100, max_groups=16)) as store:
        first = (await store.create(LOSSES, ttl_s=60)).id
        await store.create(LOSSES, ttl_s=60)
        with pytest.raises(TooManySessions) as caught:
            await store.create(LOSSES, ttl_s=60)
        detail = "the server holds 2 sessions, its limit; delete finished ones"
        same_error(caught.value, TooManySessions, detail, limit=2, actual=3)
        await store.delete(first)
        await store.create(LOSSES, ttl_s=60)


async def test_ttl_expiry_and_refresh(backend: Backend) -> None:
    async with backend.store(SessionLimits(max_sessions=1, max_batches=100, max_groups=16)) as store:
        start = backend.now()
        session = (await store.create(LOSSES, ttl_s=1)).id
        await backend.advance(0.5)
        assert await store.apply(session, "b1", "d1", B1)  # renews the TTL: 1 s from now
        refreshed = backend.now()
        await backend.advance(0.7)  # 1.2 s after creation
        record = await store.get(session)
        assert record.ttl_s == 1
        assert record.batches == 1
        assert refreshed + 0.9 < record.expires_at < refreshed + 1.1
        assert record.expires_at > start + 1.3
        with pytest.raises(TooManySessions):  # still held: the refresh moved its expiry in the index too
            await store.create(LOSSES, ttl_s=1)
        await backend.advance(1.2)
        for call in (store.get(session), store.losses(session), store.apply(session, "b2", "d2", B2)):
            with pytest.raises(SessionNotFound):
                await call
        await store.create(LOSSES, ttl_s=1)  # the expired session no longer counts against the limit


async def test_merged_create(backend: Backend) -> None:
    totals = expected(B1, B2)
    totals[1].total.sum = -0.0  # survives, as it would in memory
    after = copy.deepcopy(totals)
    for into, add in zip(after, B1, strict=True):
        into.add(add)
    merged = Merged(LOSSES, copy.deepcopy(totals), {"a": "da", "b": "db"})
    async with backend.store() as store:
        record = await store.create(LOSSES, ttl_s=60, merged=merged)
        assert record.batches == 2
        assert exact(record.totals) == exact(totals)
        exported, batches = await store.export(record.id)
        assert batches == {"a": "da", "b": "db"}
        assert exact(exported.totals) == exact(totals)
        assert await store.apply(record.id, "a", "da", B1) is False
        with pytest.raises(Conflict):
            await store.apply(record.id, "b", "other", B1)
        assert await store.apply(record.id, "c", "dc", B1) is True
        assert exact((await store.get(record.id)).totals) == exact(after)

    many = Merged(LOSSES, expected(B1), {str(i): "d" for i in range(3)})
    async with backend.store(SessionLimits(max_sessions=10, max_batches=2, max_groups=16)) as store:
        with pytest.raises(SessionFull) as caught:
            await store.create(LOSSES, ttl_s=60, merged=many)
        same_error(
            caught.value, SessionFull, "the session would hold 3 batches, over its limit of 2", limit=2, actual=3
        )
    async with backend.store(SessionLimits(max_sessions=10, max_batches=100, max_groups=4)) as store:
        with pytest.raises(SessionFull) as caught:
            await store.create(LOSSES, ttl_s=60, merged=Merged(LOSSES, expected(B1, B2), {}))
        detail = "the session would hold 6 group totals (group labels x losses), over its limit of 4"
        same_error(caught.value, SessionFull, detail, loc=("groups",), limit=4, actual=6)


async def test_special_values(backend: Backend) -> None:
    inf, nan = math.inf, math.nan
    batches = [
        [inc(inf, 1.0, 1, g1=(-inf, 1.0, 1), g2=(1.0, inf, 1)), inc(nan, 1.0, 1, g3=(-0.0, -0.0, 0))],
        [inc(1.0, 1.0, 1, g1=(-1e308, 1.0, 1), g2=(1.0, -inf, 1)), inc(1.0, 1.0, 1, g3=(-0.0, 5e-324, 1))],
        [inc(1.0, 1.0, 1, g4=(1.7976931348623157e308, 1.0, 1)), inc(0.0, 0.0, 0, g4=(-1e-320, 0.0, 0))],
        [inc(0.0, 0.0, 0, g4=(1.7976931348623157e308, 0.0, 0)), inc(0.0, 0.0, 0)],
    ]
    async with backend.store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        for i, batch in enumerate(batches):
            assert await store.apply(session, f"b{i}", "d", batch)
        totals = (await store.get(session)).totals
    assert exact(totals) == exact(expected(*batches))
    assert totals[0].total.sum == inf
    assert totals[0].groups["1"].sum == -inf
    assert math.isnan(totals[0].groups["2"].weight)
    assert math.isnan(totals[1].total.sum)
    assert totals[0].groups["4"].sum == inf  # overflow, as Python's addition
    assert math.copysign(1.0, totals[1].groups["3"].sum) == 1.0  # a new group starts at 0.0: 0.0 + -0.0 is 0.0


async def test_large_session(backend: Backend) -> None:
    """Thousands of batch ids and labels (the scripts pass them to Redis in chunks)."""
    limits = SessionLimits(max_sessions=10, max_batches=5000, max_groups=10000)
    totals = [LossTotals(Totals(1.0, 1.0, 1), {str(i): Totals(i / 7, 1.0, 1) for i in range(4000)}), LossTotals()]
    merged = Merged(LOSSES, copy.deepcopy(totals), {f"b{i}": f"d{i}" for i in range(4100)})
    labels = [*map(str, range(4000)), *map(str, range(-1000, 0))]
    batch = [LossTotals(Totals(0.5, 1.0, 1), {label: Totals(0.1, 0.5, 2) for label in labels}), LossTotals()]
    for into, add in zip(totals, batch, strict=True):
        into.add(add)
    async with backend.store(limits) as store:
        session = (await store.create(LOSSES, ttl_s=60, merged=merged)).id
        assert await store.apply(session, "new", "d", batch)
        with pytest.raises(SessionFull) as caught:
            await store.apply(session, "more", "d", [inc(1.0, 1.0, 1, m1001=(1.0, 1.0, 1)), LossTotals()])
        assert caught.value.actual == 10002  # 5001 labels x 2 losses
        record, batches = await store.export(session)
        assert len(batches) == 4101
        assert record.batches == 4101
        assert exact(record.totals) == exact(totals)


# --- the same arithmetic in both stores, bit for bit ---


def _value(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.2:
        return rng.choice([1e16, -1e16, 1.0, -1.0, 0.1, 0.2, 0.3, 1e-16, 2.0**53, 2.0**-1074, -0.0, 3.0])
    if pick < 0.3:
        return float(rng.randint(-(10**6), 10**6))
    if pick < 0.4:
        return rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-320, 300)
    return rng.gauss(0.0, 1.0) * 10.0 ** rng.randint(-8, 17)


async def test_float_sums_bit_identical(redis_server: RedisServer) -> None:
    rng = random.Random(20_261_128)
    batches = [
        [
            LossTotals(
                Totals(_value(rng), abs(_value(rng)), rng.randint(0, 1000)),
                {label: Totals(_value(rng), _value(rng), rng.randint(0, 9)) for label in rng.sample(LABELS, 3)},
            )
            for _ in LOSSES
        ]
        for _ in range(400)
    ]
    cancel = [[inc(1e16, 1e16, 1), inc(0.1, 0.1, 1)], [inc(1.0, 1.0, 1), inc(0.2, 0.2, 1)]]
    cancel += [[inc(-1e16, -1e16, 1), inc(-0.3, 0.3, 1)]]
    limits = SessionLimits(max_sessions=10, max_batches=1000, max_groups=32)
    async with (
        Backend("memory").store(limits) as memory,
        Backend("redis", redis_server).store(limits) as redis,
    ):
        records = []
        for store in (memory, redis):
            session = (await store.create(LOSSES, ttl_s=60)).id
            small = (await store.create(LOSSES, ttl_s=60)).id
            for i, batch in enumerate(batches):
                assert await store.apply(session, f"b{i}", f"d{i}", batch)
            for i, batch in enumerate(cancel):
                assert await store.apply(small, f"c{i}", "d", batch)
            records.append((await store.get(session), await store.get(small)))
    (memory_big, memory_small), (redis_big, redis_small) = records
    assert exact(redis_big.totals) == exact(memory_big.totals) == exact(expected(*batches))
    assert exact(redis_small.totals) == exact(memory_small.totals)
    # Python's rounding, not exact arithmetic: 1e16 + 1 rounds to 1e16, 0.1 + 0.2 - 0.3 is not 0
    assert redis_small.totals[0].total.sum == 0.0 != math.fsum([1e16, 1.0, -1e16])
    assert redis_small.totals[1].total.sum == 0.1 + 0.2 - 0.3 != 0.0


# --- Redis only: replicas, outages, restarts ---


async def test_concurrent_applies_from_two_replicas(redis_server: RedisServer) -> None:
    limits = SessionLimits(max_sessions=10, max_batches=1000, max_groups=16)
    async with (
        Backend("redis", redis_server).store(limits) as one,
        Backend("redis", redis_server).store(limits) as two,
    ):
        session = (await one.create(LOSSES, ttl_s=60)).id
        batches = {
            f"b{i}": [inc(float(i), 1.0, 1, **{f"g{i % 4}": (float(i), 0.5, 1)}), inc(1.0, 2.0, 3)] for i in range(64)
        }

        async def send(i: int, batch_id: str) -> bool:
            return await (one if i % 2 else two).apply(session, batch_id, "d" + batch_id, batches[batch_id])

        assert await asyncio.gather(*(send(i, b) for i, b in enumerate(batches))) == [True] * 64
        assert await asyncio.gather(*(send(i + 1, b) for i, b in enumerate(batches))) == [False] * 64
        record, applied = await two.export(session)
        assert record.batches == 64
        assert len(applied) == 64
        # integers and halves: every order of the additions gives the same sums
        assert exact(record.totals) == exact(expected(*batches.values()))
        assert record.totals[0].total.sum == sum(range(64))
        assert record.totals[1].total.count == 192


async def test_sessions_limit_over_replicas(redis_server: RedisServer) -> None:
    limits = SessionLimits(max_sessions=3, max_batches=100, max_groups=16)
    async with (
        Backend("redis", redis_server).store(limits) as one,
        Backend("redis", redis_server).store(limits) as two,
        Backend("redis", redis_server).store(limits, prefix="other:") as elsewhere,
    ):
        created = await asyncio.gather(
            *(store.create(LOSSES, ttl_s=60) for store in (one, two, one, two, one)), return_exceptions=True
        )
        assert sum(isinstance(r, TooManySessions) for r in created) == 2
        await elsewhere.create(LOSSES, ttl_s=60)  # another prefix, another deployment: its own limit
        with pytest.raises(TooManySessions):
            await two.create(LOSSES, ttl_s=60)


async def test_mismatched_increments_change_nothing(redis_server: RedisServer) -> None:
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        with pytest.raises(ValueError, match="1 increments for a session of 2 losses"):
            await store.apply(session, "b1", "d1", B1[:1])
        record, batches = await store.export(session)
        assert batches == {}
        assert exact(record.totals) == exact(expected())


async def test_redis_down_then_back(redis_server: RedisServer) -> None:
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)
        assert await store.not_ready() is None

        redis_server.stop()
        where = f"the session store at redis://127.0.0.1:{redis_server.port}/0 is unreachable: "
        calls: list[Callable[[], Any]] = [
            lambda: store.apply(session, "b2", "d2", B2),
            lambda: store.get(session),
            lambda: store.losses(session),
            lambda: store.export(session),
            lambda: store.create(LOSSES, ttl_s=60),
            lambda: store.delete(session),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert caught.value.detail.startswith(where)
            assert time.monotonic() - started < 3
        reason = await store.not_ready()
        assert reason is not None
        assert reason.startswith(where)

        redis_server.start()  # same port, no persistence: the sessions are gone, the script too
        assert await store.not_ready() is None
        with pytest.raises(SessionNotFound):
            await store.get(session)
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)
        assert exact((await store.get(session)).totals) == exact(expected(B1))


async def test_applies_survive_their_connection_closing(redis_server: RedisServer) -> None:
    """Applies keep a connection of their own; when Redis closes it (a timeout, a failover, CLIENT KILL), the
    next apply reconnects and is applied once, with no error."""
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)
        killer = Redis.from_url(redis_server.url)
        try:
            assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
        finally:
            await killer.aclose()
        assert await store.apply(session, "b2", "d2", B2)
        record = await store.get(session)
        assert record.batches == 2
        assert exact(record.totals) == exact(expected(B1, B2))


async def test_no_password_in_messages(redis_server: RedisServer) -> None:
    redis_server.kill()
    url = f"redis://user:s3cret-pw@127.0.0.1:{redis_server.port}/2"
    store = RedisStore(url, LIMITS)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.get("0" * 32)
        reason = await store.not_ready()
    finally:
        await store.close()
    assert f"at redis://127.0.0.1:{redis_server.port}/2 is unreachable" in caught.value.detail
    assert reason is not None
    assert "s3cret" not in caught.value.detail + reason
    assert "user" not in caught.value.detail + reason


async def test_redis_not_answering(redis_server: RedisServer) -> None:
    """A Redis that accepts nothing (SIGSTOP): not_ready answers within its PING timeout; an apply that
    timed out may still have run, and its retry under the same batch id counts it once."""
    assert redis_server.process is not None
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            reason = await store.not_ready()
            assert reason is not None
            assert "unreachable" in reason
            assert time.monotonic() - started < 2
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await store.apply(session, "b1", "d1", B1)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert await store.apply(session, "b1", "d1", B1) in (True, False)
        record = await store.get(session)
        assert record.batches == 1
        assert exact(record.totals) == exact(expected(B1))


async def test_a_busy_redis_is_unavailable_on_every_route(redis_server: RedisServer) -> None:
    """A Redis busy running a long script answers BUSY to everything, reads in a MULTI pipeline included
    (redis-py wraps that reply in its own words): 503s, never 500s; then it serves again."""
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        admin, busy = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
        await admin.config_set("busy-reply-threshold", 100)
        spin = asyncio.create_task(busy.eval("while true do end", 0))

        async def answers_busy() -> bool:
            try:
                await admin.ping()  # queued behind the script until busy-reply-threshold, then BUSY
            except ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False  # the script has not begun

        try:
            await wait_until_async(answers_busy, 10, "Redis answering BUSY while the script runs")
            for call in (
                store.get(session),
                store.export(session),
                store.delete(session),
                store.apply(session, "b1", "d1", B1),
                store.create(LOSSES, ttl_s=60),
            ):
                with pytest.raises(StoreUnavailable, match="cannot serve now"):
                    await call
            assert await store.not_ready() is not None
        finally:
            await admin.script_kill()
            with pytest.raises(Exception, match="killed"):
                await spin
            await admin.aclose()
            await busy.aclose()
        assert await store.apply(session, "b1", "d1", B1) is True
        assert (await store.get(session)).batches == 1


async def test_a_full_redis_refuses_new_sessions_and_batches(redis_server: RedisServer) -> None:
    """At its maxmemory (noeviction), Redis refuses a script's first write: a new session and a batch are 503s
    that change nothing (the create script's first write is one Redis checks), then it serves again."""
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        admin = Redis.from_url(redis_server.url)
        try:
            keys = sorted(await admin.keys("*"))
            await admin.config_set("maxmemory", 1)
            with pytest.raises(StoreUnavailable, match="cannot serve now"):
                await store.create(LOSSES, ttl_s=60)
            with pytest.raises(StoreUnavailable, match="cannot serve now"):
                await store.apply(session, "b1", "d1", B1)
            assert sorted(await admin.keys("*")) == keys
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
        assert (await store.get(session)).batches == 0
        assert await store.apply(session, "b1", "d1", B1) is True
        assert (await store.create(LOSSES, ttl_s=60)).id != session


async def test_script_flushed(redis_server: RedisServer) -> None:
    async with Backend("redis", redis_server).store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        assert await store.apply(session, "b1", "d1", B1)
        admin = Redis.from_url(redis_server.url)
        try:
            await admin.script_flush()
        finally:
            await admin.aclose()
        assert await store.apply(session, "b2", "d2", B2)  # NOSCRIPT: loaded again, then run
        await store.create(LOSSES, ttl_s=60)
        assert exact((await store.get(session)).totals) == exact(expected(B1, B2))
        admin = Redis.from_url(redis_server.url)
        try:
            await admin.script_flush()
        finally:
            await admin.aclose()
        # batches applied together share one pipeline: NOSCRIPT there too, and each keeps its own outcome
        outcomes = await asyncio.gather(
            *(store.apply(session, f"c{i}", f"e{i}", B1) for i in range(4)),
            store.apply(session, "b1", "d1", B1),
            store.apply(session, "b2", "other", B2),
            return_exceptions=True,
        )
        assert outcomes[:5] == [True, True, True, True, False]
        assert isinstance(outcomes[5], Conflict)
        assert exact((await store.get(session)).totals) == exact(expected(B1, B2, B1, B1, B1, B1))


async def test_appendonly_restart_keeps_sessions(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "aof", appendonly=True) as server:
        async with Backend("redis", server).store() as store:
            session = (await store.create(LOSSES, ttl_s=600)).id
            assert await store.apply(session, "b1", "d1", B1)
            assert await store.apply(session, "b2", "d2", B2)
            before = await store.export(session)

            server.restart()
            record, batches = await store.export(session)
            assert batches == before[1] == {"b1": "d1", "b2": "d2"}
            assert exact(record.totals) == exact(before[0].totals) == exact(expected(B1, B2))
            assert record.losses == LOSSES
            assert 590 < record.expires_at - time.time() <= 600
            assert await store.apply(session, "b1", "d1", B1) is False
            assert await store.apply(session, "b3", "d3", B1) is True  # the script, loaded again
            assert exact((await store.get(session)).totals) == exact(expected(B1, B2, B1))


def test_a_malformed_url_is_refused_without_quoting_it() -> None:
    """An unencoded '?' in the password breaks the URL; the error must not quote a piece of the password."""
    with pytest.raises(ValueError, match="not a valid redis:// URL") as caught:
        RedisStore("redis://:Secr3tE?x@127.0.0.1:16391/0", LIMITS)
    assert "Secr3t" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


async def test_a_count_past_what_redis_counts_exactly_is_refused(backend: Backend) -> None:
    """Counts are added in Lua's doubles with Redis, exact below 2^53: in either store a count (a loss's, or a
    group's) may not reach it, and the batch that would changes nothing."""
    async with backend.store() as store:
        session = (await store.create(LOSSES, ttl_s=60)).id
        big = [inc(1.0, 1.0, 2**53 - 1, g1=(1.0, 1.0, 2**53 - 2)), inc(1.0, 1.0, 1)]
        assert await store.apply(session, "b1", "d1", big)
        with pytest.raises(SessionFull, match="the count of '0' would reach 2\\^53"):
            await store.apply(session, "b2", "d2", [inc(1.0, 1.0, 1), inc(1.0, 1.0, 1)])
        with pytest.raises(SessionFull, match="the count of '0:1' would reach 2\\^53"):
            await store.apply(session, "b3", "d3", [inc(1.0, 1.0, 0, g1=(1.0, 1.0, 2)), inc(1.0, 1.0, 1)])
        record = await store.get(session)
        assert record.batches == 1
        assert exact(record.totals) == exact(expected(big))
