"""`pip install .` gives the service and a `lossd` command: the wheel's metadata, entry point and files, built here
without network (setuptools from the test environment, no build isolation)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # a copy: setuptools writes build/ and *.egg-info beside the source
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("lossd-*.whl")
    return zipfile.ZipFile(path)


def _read(wheel: zipfile.ZipFile, suffix: str) -> str:
    (name,) = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name).decode()


def test_version_is_written_once(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(_read(wheel, ".dist-info/METADATA"))
    assert metadata["Version"] == service.__version__
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]


def test_dependencies_are_the_pinned_runtime_set(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(_read(wheel, ".dist-info/METADATA"))
    pins = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(metadata.get_all("Requires-Dist")) == sorted(pins)
    assert "torch==2.13.0" in pins


def test_lossd_command_is_python_m_service(wheel: zipfile.ZipFile) -> None:
    entry_points = _read(wheel, ".dist-info/entry_points.txt")
    assert "[console_scripts]\nlossd = service.__main__:main" in entry_points


def test_wheel_holds_every_module_and_the_proto(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "service").rglob("*.py")}
    assert sources <= names
    assert {"service/rpc/grpc_service.proto", "service/rpc/grpc_service_pb2.pyi"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_no_generated_client_file_at_the_top_level() -> None:
    assert not (ROOT / "client.py").exists()  # LitServe writes one unless generate_client_file=False
    peer = (ROOT / "bench" / "peers" / "litserve_server.py").read_text()
    assert "generate_client_file=False" in peer
