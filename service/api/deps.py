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

    async def offload(self, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        """Run CPU/GPU-bound work in a worker thread, at most `max_concurrency` at a time.

        Work on a body smaller than `inline_max_bytes` runs right here instead: it takes less time than
        the hop to a thread and back, and holding the event loop for it delays nobody noticeably.
        """
        if size < self.settings.inline_max_bytes:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)


async def get_state(request: Request) -> AppState:  # async: FastAPI would run a plain def in a thread
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
