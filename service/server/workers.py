"""Several worker processes (`LOSSD_WORKERS` > 1): gunicorn's arbiter over uvicorn workers.

Why gunicorn rather than uvicorn's own `workers=`: on SIGTERM gunicorn closes its listening socket and
signals every worker at once, so each worker turns not-ready (the app's SIGTERM hook), closes its copy of
the socket and drains; new connections are then refused instead of waiting on a socket that nobody
accepts on, and the arbiter exits with status 0 when the last worker has drained (or after
`LOSSD_DRAIN_TIMEOUT_S`).

Metrics are shared: the workers count in prometheus_client's multiprocess mode, in a directory made
fresh for each start and removed at exit, so every `/metrics` scrape, whichever worker answers it, reports
all the workers (see `service.api.metrics`).

Each worker runs the same uvicorn server as a single process does (`service.server.uvicorn_options`:
uvloop, `LossdHttpProtocol` with the settings' connection limits, the drain timeout) with the app that
`create_app` builds after the fork. `LOSSD_MAX_CONNECTIONS` is per worker: the server accepts up to
`workers * max_connections` connections in all.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from service.config import Settings
from service.server import uvicorn_options

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps its files, read when prometheus_client is imported
(so not taken from `service.api.metrics`: importing it here, before the variable is set, would be too early)."""

HEARTBEAT_MARGIN_S = 30
"""gunicorn kills a worker silent for longer than the longest request or drain plus this margin."""


class LossdWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn_worker's gunicorn worker, running lossd's uvicorn options (uvloop, LossdHttpProtocol, drain).

    Its heartbeat to the arbiter is a timer on the worker's event loop (uvicorn's main loop, every
    `timeout / 2` seconds). Requests compute in threads, so a long computation does not silence it; the
    loop stops beating only when it is blocked, or while the worker drains on its way out.
    """

    def __init__(self, age: int, ppid: int, sockets: list[Any], app: LossdApplication, *args: Any) -> None:
        self.CONFIG_KWARGS = uvicorn_options(app.settings)  # read by UvicornWorker.__init__
        super().__init__(age, ppid, sockets, app, *args)


class LossdApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from lossd's settings, programmatically: no config file, no command line."""

    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        super().__init__()

    def load_config(self) -> None:
        for name, value in gunicorn_options(self.settings, self.metrics_dir).items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """The app, built in each worker after the fork (imports torch and prometheus_client there)."""
        from service.app import create_app

        return create_app(self.settings)


def gunicorn_options(settings: Settings, metrics_dir: str) -> dict[str, Any]:
    """gunicorn's settings for lossd."""

    def child_exit(_arbiter: Any, worker: Any) -> None:
        """A worker exited: its live gauges (`in_flight`, ...) no longer count."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]

    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return {
        "bind": [f"{host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": LossdWorker,
        "graceful_timeout": settings.drain_timeout_s,
        "timeout": math.ceil(max(settings.request_timeout_s, settings.drain_timeout_s)) + HEARTBEAT_MARGIN_S,
        "keepalive": math.ceil(settings.keep_alive_s),  # whole seconds; the workers' protocol uses the setting
        "accesslog": None,  # lossd writes one JSON line per request itself
        "loglevel": "debug" if settings.log_level == "trace" else settings.log_level,
        "proc_name": "lossd",
        "control_socket_disable": True,
        "child_exit": child_exit,
    }


def run_workers(settings: Settings) -> None:
    """Run `settings.workers` workers until SIGTERM has drained them (gunicorn exits with status 0 then)."""
    metrics_dir = tempfile.mkdtemp(prefix="lossd-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client
    arbiter = os.getpid()
    try:
        LossdApplication(settings, metrics_dir).run()
    finally:
        if os.getpid() == arbiter:  # a worker leaves gunicorn's fork through here too
            shutil.rmtree(metrics_dir, ignore_errors=True)
