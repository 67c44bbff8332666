"""What a session accumulates, and its exported state. No HTTP, no storage.

A session holds, for each of its losses, float64 sums of the loss's sufficient statistics
(`Totals`: sum S, weight W, count n; the loss over the dataset is S / W for a mean, S for a sum), and
the same per group label. Batches add `Totals`; the ids of the batches applied, with a digest of their
content, make a retried batch count once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.codec import NON_FINITE, number
from service.errors import Conflict, ErrorDetail, InvalidRequest, SessionFull
from service.losses import REGISTRY
from service.losses.registry import LossTotals, StatsRule, Totals

__all__ = ["LossTotals", "Totals"]  # re-exported: what a session accumulates

STATE_FORMAT = "lossd.session"
MAX_COUNT = 2**53
"""A total's count stays below this: the most terms Redis' Lua (doubles) counts exactly, in either store."""
STATE_VERSION = 1
MAX_BATCH_ID = 128
"""The most characters in a batch id (`schemas.BatchRequest.batch_id`)."""
DIGEST_LENGTH = 32
DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_LENGTH}}}")
"""A batch's digest: 32 hexadecimal digits (`dataplane._Pool.digest`)."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int
    max_batches: int
    max_groups: int
    """Group totals: distinct labels x losses."""

    def full_batches(self, batches: int) -> SessionFull:
        """The error of a session that would hold `batches` batches, over the limit."""
        return SessionFull(
            f"the session would hold {batches} batches, over its limit of {self.max_batches}",
            limit=self.max_batches,
            actual=batches,
        )

    def full_groups(self, totals: int) -> SessionFull:
        """The error of a session that would hold `totals` group totals, over the limit."""
        return SessionFull(
            f"the session would hold {totals} group totals (group labels x losses), over its limit of "
            f"{self.max_groups}",
            loc=("groups",),
            limit=self.max_groups,
            actual=totals,
        )


def totals_json(t: Totals) -> dict[str, Any]:
    """Totals as JSON: non-finite sums as "NaN", "Infinity", "-Infinity"."""
    return {"sum": number(t.sum), "weight": number(t.weight), "count": t.count}


def read_totals(value: Any, where: tuple[str | int, ...]) -> Totals:
    """Totals from their JSON (`totals_json`), or a 422 naming `where`."""
    if not isinstance(value, dict) or set(value) != {"sum", "weight", "count"}:
        raise InvalidRequest("stats must be an object with sum, weight and count", loc=where)
    s, w, n = (
        NON_FINITE.get(x, x) if isinstance(x, str) else x for x in (value["sum"], value["weight"], value["count"])
    )
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (s, w)):
        raise InvalidRequest('stats sum and weight must be numbers (or "NaN", "Infinity", "-Infinity")', loc=where)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidRequest("stats count must be a non-negative integer", loc=(*where, "count"))
    if n >= MAX_COUNT:
        raise InvalidRequest(
            f"stats count must be below 2^53 (the most a session counts exactly), got {n}", loc=(*where, "count")
        )
    return Totals(float(s), float(w), n)


def labels(increments: list[LossTotals]) -> set[str]:
    """Every group label the increments name."""
    return {label for inc in increments for label in inc.groups}


@dataclass
class Record:
    """A session as `GET /v1/sessions/{id}` shows it."""

    id: str
    losses: list[dict[str, Any]]
    """The loss definitions, normalized (canonical name, every parameter, `reduction`, `tensors`)."""
    ttl_s: int
    batches: int
    expires_at: float
    """Unix time."""
    totals: list[LossTotals]

    def results(self) -> list[dict[str, Any]]:
        """Each loss's dataset value and stats (and per group, when groups were sent)."""
        out = []
        for definition, totals in zip(self.losses, self.totals, strict=True):
            reduction = definition["reduction"]
            out.append(result_json(definition, totals, totals.total.loss(reduction, _rule(definition))))
        return out


def _rule(definition: dict[str, Any]) -> StatsRule:
    return REGISTRY.get(definition["name"]).stats


def result_json(definition: dict[str, Any], totals: LossTotals, loss: float) -> dict[str, Any]:
    """One loss's result: name, reduction, `loss`, stats, and per group label when there are groups."""
    reduction = definition["reduction"]
    result: dict[str, Any] = {
        "name": definition["name"],
        "reduction": reduction,
        "loss": number(loss),
        "stats": totals_json(totals.total),
    }
    if totals.groups:
        result["groups"] = {
            label: {"loss": number(g.loss(reduction, _rule(definition))), "stats": totals_json(g)}
            for label, g in sorted(totals.groups.items(), key=lambda item: int(item[0]))
        }
    return result


def export(record: Record, batches: dict[str, str]) -> dict[str, Any]:
    """The versioned state of a session, which `from_states` reads back."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "losses": record.losses,
        "batches": batches,
        "totals": [
            {**totals_json(t.total), "groups": {label: totals_json(g) for label, g in t.groups.items()}}
            for t in record.totals
        ],
    }


@dataclass
class Merged:
    """States merged into the contents of a new session."""

    losses: list[dict[str, Any]]
    totals: list[LossTotals]
    batches: dict[str, str]


def merge(states: list[Any], limits: SessionLimits) -> Merged:
    """The sum of exported states. They must hold the same loss definitions (else 409), and no batch id may
    appear in two of them: its batch would count twice (409). The session's limits on batches and group totals
    hold as the states are read, not after."""
    if not states:
        raise InvalidRequest("from_states needs at least one state", loc=("from_states",))
    merged: Merged | None = None
    held: set[str] = set()  # group labels
    for i, state in enumerate(states):
        where: tuple[str | int, ...] = ("from_states", i)
        losses, totals, batches = _read_state(state, where)
        if merged is None:
            merged = Merged(losses, [LossTotals() for _ in losses], {})
        elif losses != merged.losses:
            raise Conflict(
                f"state {i} holds other loss definitions than state 0; only states of identical losses merge",
                loc=(*where, "losses"),
            )
        twice = next((batch for batch in batches if batch in merged.batches), None)
        if twice is not None:
            raise Conflict(
                f"batch id {twice!r} is in state {i} and an earlier state; merging would count it twice",
                loc=(*where, "batches", twice),
            )
        merged.batches.update(batches)
        if len(merged.batches) > limits.max_batches:
            raise _located(limits.full_batches(len(merged.batches)), (*where, "batches"))
        held |= labels(totals)
        if len(held) * len(losses) > limits.max_groups:
            raise _located(limits.full_groups(len(held) * len(losses)), (*where, "totals"))
        for into, add in zip(merged.totals, totals, strict=True):
            into.add(add)
            if max((t.count for t in (into.total, *into.groups.values())), default=0) >= MAX_COUNT:
                raise InvalidRequest(
                    f"merging state {i} would count 2^53 terms or more, the most a session counts exactly",
                    loc=(*where, "totals"),
                )
    assert merged is not None
    return merged


def _located(exc: SessionFull, loc: tuple[str | int, ...]) -> SessionFull:
    """`exc` about the state at `loc` (the state that took the merge past the limit)."""
    exc.errors = [ErrorDetail(loc, exc.detail)]
    return exc


def _read_state(
    state: Any, where: tuple[str | int, ...]
) -> tuple[list[dict[str, Any]], list[LossTotals], dict[str, str]]:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InvalidRequest(f"not a lossd session state (its format must be {STATE_FORMAT!r})", loc=where)
    version = state.get("version")
    if type(version) is not int or version != STATE_VERSION:
        raise InvalidRequest(
            f"state version {version!r} is not one this server reads ({STATE_VERSION})",
            loc=(*where, "version"),
        )
    losses, totals, batches = state.get("losses"), state.get("totals"), state.get("batches")
    if not isinstance(losses, list) or not losses or not all(isinstance(x, dict) for x in losses):
        raise InvalidRequest("losses must be a non-empty list of loss definitions", loc=(*where, "losses"))
    if not isinstance(totals, list) or len(totals) != len(losses):
        raise InvalidRequest("totals must hold one entry per loss", loc=(*where, "totals"))
    if not isinstance(batches, dict):
        raise InvalidRequest("batches must map batch ids to digests", loc=(*where, "batches"))
    for batch_id, digest in batches.items():
        if not 1 <= len(batch_id) <= MAX_BATCH_ID:
            raise InvalidRequest(
                f"a batch id has 1 to {MAX_BATCH_ID} characters, got {len(batch_id)}", loc=(*where, "batches")
            )
        if not (isinstance(digest, str) and DIGEST.fullmatch(digest)):
            raise InvalidRequest(
                f"a batch's digest is {DIGEST_LENGTH} hexadecimal digits, as GET /v1/sessions/{{id}}/state gives it",
                loc=(*where, "batches", batch_id),
            )
    read: list[LossTotals] = []
    for j, entry in enumerate(totals):
        at = (*where, "totals", j)
        if not isinstance(entry, dict) or not isinstance(entry.get("groups", {}), dict):
            raise InvalidRequest("each totals entry is an object with sum, weight, count and groups", loc=at)
        groups = entry.get("groups", {})
        one = LossTotals(read_totals({k: v for k, v in entry.items() if k != "groups"}, at))
        for label, value in groups.items():
            if not _is_label(label):
                raise InvalidRequest(f"group label {label!r} is not an integer", loc=(*at, "groups", label))
            one.groups[label] = read_totals(value, (*at, "groups", label))
        read.append(one)
    return losses, read, batches


def _is_label(label: str) -> bool:
    try:
        return str(int(label)) == label
    except ValueError:
        return False
