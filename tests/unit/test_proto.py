"""The committed gRPC stubs are what `make proto` generates from the committed proto: they cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "service/rpc/grpc_service.proto"
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}"]
    command += [f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", PROTO]
    subprocess.run(command, cwd=ROOT, check=True)
    for name in GENERATED:
        fresh = (tmp_path / "service" / "rpc" / name).read_text()
        committed = (ROOT / "service" / "rpc" / name).read_text()
        assert fresh == committed, f"service/rpc/{name} differs from what {PROTO} generates: run `make proto`"


def test_the_makefile_generates_them_the_same_way() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert f"-m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. {PROTO}" in makefile
