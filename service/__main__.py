"""`python -m service`: read the settings from the environment and run uvicorn."""

from __future__ import annotations

import uvicorn

from service.config import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
