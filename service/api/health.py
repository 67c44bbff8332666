"""Liveness, readiness and the problem-type documentation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from service.api import problems
from service.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="health-live")
async def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="health-ready", responses={503: {"description": "Not ready"}})
async def readyz(state: StateDep) -> Any:
    """Ready: the registry is loaded and the compute device runs a computation."""
    why = await state.not_ready()
    if why is not None:
        return problems.problem(503, "not-ready", "Not ready", why, [])
    return {"status": "ready", "device": str(state.plane.device), "losses": len(state.plane.registry)}


@router.get("/metrics", operation_id="metrics", response_class=Response, tags=["monitoring"])
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/problems/{slug}", operation_id="problems-get", tags=["problems"])
async def problem_type(slug: str) -> dict[str, Any]:
    """What a problem `type` returned by lossd means."""
    described = problems.describe(slug)
    if described is None:
        raise HTTPException(404, f"no problem type {slug!r}")
    return described
