"""How lossd is served: the HTTP/1.1 protocol of every connection, and the processes that run the app.

- `protocol`: `LossdHttpProtocol`, uvicorn's fast httptools (llhttp) protocol with lossd's connection-level
  rules and limits (`protocol_for(settings)`: connections per worker, head size, read and idle deadlines).
  Everything decided per connection, before a request reaches the app, belongs there.
- `workers`: more than one worker process (`LOSSD_WORKERS` > 1) under gunicorn, with metrics shared
  across the workers and a graceful, refusing shutdown on SIGTERM.
- `serve()`: what `python -m service` runs; one worker is uvicorn in this very process.
"""

from __future__ import annotations

import functools
import logging
import resource
import signal
from typing import Any

from service.config import Settings
from service.server.protocol import protocol_for

FD_HEADROOM = 256
"""Open files a server process needs besides its client connections (listening socket, torch's and the
logs' files, worker pipes)."""

log = logging.getLogger("lossd")


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn `Config` options of every lossd server, whether one process or a gunicorn worker."""
    return {
        "loop": "uvloop",
        "http": protocol_for(settings),  # a class: uvicorn makes one per connection
        "log_level": settings.log_level,
        "access_log": False,  # lossd writes one JSON line per request itself
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        # The protocol closes idle connections itself after `keep_alive_s` (it arms no uvicorn keep-alive
        # timer); uvicorn's setting is kept equal for anything of uvicorn's that reads it.
        "timeout_keep_alive": settings.keep_alive_s,
    }


def serve(settings: Settings) -> None:
    """Serve lossd with `settings` until SIGTERM (or SIGINT) has drained it; returns normally then."""
    ensure_file_limit(settings)
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


def ensure_file_limit(settings: Settings) -> None:
    """Raise this process's soft limit on open files (which gunicorn's workers inherit) so that
    `max_connections` connections fit with room to spare: past the limit, every accept fails (the limit
    is often 1024, as low as the default `LOSSD_MAX_CONNECTIONS`). Never beyond the hard limit: short of
    it, a warning."""
    needed = settings.max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < needed:
        log.warning(
            "the open-files limit (%d) leaves no room for LOSSD_MAX_CONNECTIONS=%d: connections past about %d "
            "will fail to be accepted; raise the limit (ulimit -n) or lower LOSSD_MAX_CONNECTIONS",
            raised,
            settings.max_connections,
            raised - FD_HEADROOM,
        )
