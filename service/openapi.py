"""`python -m service.openapi`: print the OpenAPI document of the default app (for openapi/openapi.json)."""

from __future__ import annotations

import json
import sys

from service.app import create_app
from service.config import Settings


def document() -> str:
    """The committed form of the OpenAPI document: CPU settings, sorted keys, trailing newline."""
    return json.dumps(create_app(Settings(device="cpu")).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
