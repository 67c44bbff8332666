"""`python -m service`: read the settings from the environment and serve (see `service.server`)."""

from __future__ import annotations

from service.config import Settings
from service.server import serve


def main() -> None:
    serve(Settings())


if __name__ == "__main__":
    main()
