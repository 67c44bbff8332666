"""Where sessions live: in this process (`MemoryStore`, the default) or in Redis (`RedisStore`, shared by
every replica). Both keep the same contract, which the API layer relies on:

- `apply` is atomic: the batch-id check, the limits and the additions happen together or not at all.
  A batch id applied before with the same digest answers "duplicate" and changes nothing; with another
  digest it is a `Conflict`.
- Each applied batch refreshes the session's TTL. An expired or deleted session is `SessionNotFound`.
- Limits: sessions held (`TooManySessions`), batches per session and group labels per session
  (`SessionFull`).
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from service.errors import Conflict, NotConfigured, SessionFull, SessionNotFound, TooManySessions
from service.losses.registry import LossTotals
from service.sessions.state import MAX_COUNT, Merged, Record, SessionLimits, labels

if TYPE_CHECKING:
    from service.dataplane import Batch


def count_full(field: str) -> SessionFull:
    """The error of a batch that would take a count (`field`: the loss's index, and `:label` for a group's) to
    2^53 (`state.MAX_COUNT`)."""
    return SessionFull(f"the count of {field!r} would reach 2^53, the most a session counts exactly", loc=("tensors",))


def missing(session_id: str) -> SessionNotFound:
    """The error of a session id that names no session."""
    return SessionNotFound(f"no session {session_id!r}: never created, deleted, or expired", loc=("id",))


def new_id() -> str:
    """A session id: 128 random bits, URL-safe."""
    return secrets.token_hex(16)


async def feed(
    store: Store, session_id: str, compute: Callable[[list[dict[str, Any]]], Awaitable[Batch]]
) -> tuple[list[dict[str, Any]], Batch, bool]:
    """Add one batch to a session, whatever the protocol: its losses, the batch `compute`d for them (every loss
    with its statistics, or an error, before anything is applied), then the store's atomic apply. Returns the
    losses, the batch and whether it was applied (False: a duplicate of a batch applied before)."""
    losses = await store.losses(session_id)
    batch = await compute(losses)
    applied = await store.apply(session_id, batch.batch_id, batch.digest, batch.stats)
    return losses, batch, applied


class Store(Protocol):
    """The contract of a session store (see the module docstring)."""

    limits: SessionLimits

    async def create(self, losses: list[dict[str, Any]], ttl_s: int, merged: Merged | None = None) -> Record:
        """A new session of `losses` (normalized definitions), empty or holding `merged`'s contents."""
        ...

    async def get(self, session_id: str) -> Record:
        """The session's definitions and totals."""
        ...

    async def losses(self, session_id: str) -> list[dict[str, Any]]:
        """The session's loss definitions only (what a batch needs before it computes)."""
        ...

    async def apply(self, session_id: str, batch_id: str, digest: str, increments: list[LossTotals]) -> bool:
        """Add one batch's totals (one `LossTotals` per loss, in order): True when applied, False for a
        duplicate of a batch applied before."""
        ...

    async def export(self, session_id: str) -> tuple[Record, dict[str, str]]:
        """The session and its applied batch ids (id -> digest)."""
        ...

    async def delete(self, session_id: str) -> None: ...

    async def not_ready(self) -> str | None:
        """Why the store cannot serve now (Redis unreachable), or None."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Session:
    losses: list[dict[str, Any]]
    ttl_s: int
    expires: float  # time.time()
    totals: list[LossTotals]
    batches: dict[str, str] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)


class MemoryStore:
    """Sessions in this process's memory, lost on restart. Every method runs on the event loop without
    awaiting in between, so each is atomic."""

    def __init__(self, limits: SessionLimits, clock: Any = time.time, refuse: str | None = None):
        self.limits = limits
        self.clock = clock
        self.refuse = refuse
        """Why this store takes no sessions (None: it does)."""
        self._sessions: dict[str, _Session] = {}

    async def create(self, losses: list[dict[str, Any]], ttl_s: int, merged: Merged | None = None) -> Record:
        if self.refuse is not None:
            raise NotConfigured(self.refuse)
        self._expire()
        if len(self._sessions) >= self.limits.max_sessions:
            raise TooManySessions(
                f"the server holds {len(self._sessions)} sessions, its limit; delete finished ones",
                limit=self.limits.max_sessions,
                actual=len(self._sessions) + 1,
            )
        totals = copy.deepcopy(merged.totals) if merged else [LossTotals() for _ in losses]
        batches = dict(merged.batches) if merged else {}
        self._check_limits(len(batches), labels(totals), len(losses))
        session = _Session(losses, ttl_s, self.clock() + ttl_s, totals, batches, labels(totals))
        session_id = new_id()
        self._sessions[session_id] = session
        return self._record(session_id, session)

    async def get(self, session_id: str) -> Record:
        return self._record(session_id, self._find(session_id))

    async def losses(self, session_id: str) -> list[dict[str, Any]]:
        return self._find(session_id).losses

    async def apply(self, session_id: str, batch_id: str, digest: str, increments: list[LossTotals]) -> bool:
        session = self._find(session_id)
        if len(increments) != len(session.totals):
            raise ValueError(f"{len(increments)} increments for a session of {len(session.totals)} losses")
        seen = session.batches.get(batch_id)
        if seen is not None:
            if seen != digest:
                raise Conflict(
                    f"batch {batch_id!r} was applied with other content; send new batches under new ids",
                    loc=("batch_id",),
                )
            return False
        new_labels = labels(increments) - session.labels
        self._check_limits(len(session.batches) + 1, session.labels | new_labels, len(session.totals))
        for i, (held, add) in enumerate(zip(session.totals, increments, strict=True)):
            if held.total.count + add.total.count >= MAX_COUNT:
                raise count_full(str(i))
            for label, group in add.groups.items():
                before = held.groups.get(label)
                if (before.count if before else 0) + group.count >= MAX_COUNT:
                    raise count_full(f"{i}:{label}")
        for into, add in zip(session.totals, increments, strict=True):
            into.add(add)
        session.labels |= new_labels
        session.batches[batch_id] = digest
        session.expires = self.clock() + session.ttl_s
        return True

    async def export(self, session_id: str) -> tuple[Record, dict[str, str]]:
        session = self._find(session_id)
        return self._record(session_id, session), dict(session.batches)

    async def delete(self, session_id: str) -> None:
        self._find(session_id)
        del self._sessions[session_id]

    async def not_ready(self) -> str | None:
        return None

    async def close(self) -> None:
        self._sessions.clear()

    def _check_limits(self, batches: int, all_labels: set[str], losses: int) -> None:
        if batches > self.limits.max_batches:
            raise self.limits.full_batches(batches)
        totals = len(all_labels) * losses  # what each batch adds to, and GET and the state hold
        if totals > self.limits.max_groups:
            raise self.limits.full_groups(totals)

    def _find(self, session_id: str) -> _Session:
        if self.refuse is not None:
            raise NotConfigured(self.refuse)
        session = self._sessions.get(session_id)
        if session is None or session.expires <= self.clock():
            self._sessions.pop(session_id, None)
            raise missing(session_id)
        return session

    def _expire(self) -> None:
        now = self.clock()
        for session_id in [i for i, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[session_id]

    def _record(self, session_id: str, s: _Session) -> Record:
        return Record(session_id, s.losses, s.ttl_s, len(s.batches), s.expires, s.totals)
