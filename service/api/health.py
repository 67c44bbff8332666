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
    if not state.ready:
        why = "the compute device failed" if state.failed else "the server is shutting down"
        return problems.problem(503, "not-ready", "Not ready", why, [])
    try:
        ready = await state.offload(state.plane.ready)
    except Exception as exc:  # any device failure means not ready, whatever its type
        problems.log.error("readiness check failed: %s", exc)
        ready = False
    if not ready:
        return problems.problem(503, "not-ready", "Not ready", "the compute device is not usable", [])
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
