"""How lossd is served: the HTTP/1.1 protocol of every connection, and the processes that run the app.

- `protocol`: `LossdHttpProtocol`, uvicorn's fast httptools (llhttp) protocol with lossd's connection-level
  rules. Everything decided per connection, before a request reaches the app, belongs there.
- `workers`: more than one worker process (`LOSSD_WORKERS` > 1) under gunicorn, with metrics shared
  across the workers and a graceful, refusing shutdown on SIGTERM.
- `serve()`: what `python -m service` runs; one worker is uvicorn in this very process.
"""

from __future__ import annotations

import functools
import signal
from typing import Any

from service.config import Settings
from service.server.protocol import LossdHttpProtocol

KEEP_ALIVE_S = 5
"""Seconds an idle keep-alive connection stays open (uvicorn's default, also under gunicorn)."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn `Config` options of every lossd server, whether one process or a gunicorn worker."""
    return {
        "loop": "uvloop",
        "http": LossdHttpProtocol,
        "log_level": settings.log_level,
        "access_log": False,  # lossd writes one JSON line per request itself
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }


def serve(settings: Settings) -> None:
    """Serve lossd with `settings` until SIGTERM (or SIGINT) has drained it; returns normally then."""
    if settings.workers > 1:
        from service.server.workers import run_workers  # gunicorn, only where it is used

        run_workers(settings)
        return
    import uvicorn

    from service.app import create_app

    # uvicorn re-raises SIGTERM once it has drained; with this handler in place that ends serve() normally,
    # so a graceful shutdown exits with status 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        functools.partial(create_app, settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        **uvicorn_options(settings),
    )
