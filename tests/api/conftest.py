"""Fixtures of the API tests: apps with settings of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests import wire


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Clients of apps with other settings (log level warning unless given), closed after the test."""
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        settings = {"log_level": "warning"} | settings
        client = TestClient(create_app(Settings(device=wire.DEVICE, **settings)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
