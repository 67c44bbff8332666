"""Per-app state and the dependency aliases routes use to reach it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, Request

from service.config import Settings
from service.dataplane import DataPlane
from service.errors import UnsupportedMediaType

T = TypeVar("T")


@dataclass
class AppState:
    """What every request needs: settings, the data plane, the compute limiter, the catalog."""

    settings: Settings
    plane: DataPlane
    limiter: CapacityLimiter
    catalog: dict[str, dict[str, Any]]

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU/GPU-bound work in a worker thread, at most `max_concurrency` at a time."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.lossd
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def require_json(request: Request) -> None:
    """Refuse bodies declared as anything but JSON (a missing content type is read as JSON)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"expected content-type application/json, got {media_type!r} (curl: -H 'content-type: application/json')",
            loc=("content-type",),
        )
