"""Liveness, readiness and the problem-type documentation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.api import errors
from service.api.deps import StateDep
from service.errors import NotFound

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="health-live")
async def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="health-ready")
async def readyz(state: StateDep) -> dict[str, Any]:
    """Ready: the registry is loaded and the compute device runs a computation."""
    why = await state.not_ready()
    if why is not None:
        raise errors.NotReady(why)
    return {"status": "ready", "device": str(state.plane.device), "losses": len(state.plane.registry)}


@router.get("/metrics", operation_id="metrics", response_class=Response, tags=["monitoring"])
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/problems/{slug}", operation_id="problems-get", tags=["problems"])
async def problem_type(slug: str) -> dict[str, Any]:
    """What a problem `type` returned by lossd means."""
    described = errors.describe(slug)
    if described is None:
        raise NotFound(f"no problem type {slug!r}", loc=("slug",))
    return described
