"""Shared fixtures: an app on CPU and an in-process client. Folders mark the test kind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests import wire

# Every app and server the tests make serves no gRPC unless a test asks for it (LOSSD_GRPC_PORT), so that parallel
# tests do not compete for port 8001.
os.environ.setdefault("LOSSD_GRPC_PORT", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def app() -> FastAPI:
    return create_app(Settings(device=wire.DEVICE, log_level="warning"))


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[object]:
    """A real redis-server of this test's own (tests.redis_server.RedisServer), killed after it. Fails, never
    skips, where redis-server is not installed."""
    from tests.redis_server import MISSING, RedisServer

    try:
        server = RedisServer(tmp_path / "redis")
    except RuntimeError:
        pytest.fail(MISSING)
    server.start()
    yield server
    server.kill()
