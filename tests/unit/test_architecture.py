"""Imports go one way: the compute layer knows no HTTP, the HTTP layer knows no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
PURE = [
    *sorted((SERVICE / "losses").glob("*.py")),
    *sorted((SERVICE / "sessions").glob("*.py")),
    SERVICE / "compute.py",
    SERVICE / "errors.py",
]
HTTP = sorted((SERVICE / "api").glob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_compute_layer_imports_no_http(path: Path) -> None:
    assert not _imports(path) & {"fastapi", "starlette", "uvicorn", "httpx"}


@pytest.mark.parametrize("path", HTTP, ids=lambda p: p.name)
def test_http_layer_imports_no_torch(path: Path) -> None:
    assert "torch" not in _imports(path)
