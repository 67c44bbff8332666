"""`python -m service`: read the settings from the environment and run uvicorn."""

from __future__ import annotations

import signal

import uvicorn

from service.config import Settings


def main() -> None:
    settings = Settings()
    # uvicorn re-raises SIGTERM once it has drained; with this handler in place that ends main() normally,
    # so a graceful shutdown exits with status 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # lossd writes one JSON line per request itself
        timeout_graceful_shutdown=settings.drain_timeout_s,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
