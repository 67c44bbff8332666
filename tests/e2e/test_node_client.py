"""The Node.js example (built-in fetch only) against the running service; its results equal torch's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests import wire

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def printed(server: str) -> dict[str, dict[str, Any]]:
    if NODE is None:
        pytest.skip("node is not on PATH")
    run = subprocess.run(
        [NODE, str(ROOT / "examples" / "node" / "client.mjs"), server], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    return {line["case"]: line for line in lines}


def test_all_cases_ran(printed: dict[str, dict[str, Any]]) -> None:
    assert sorted(printed) == ["v1-base64", "v1-json", "v2-binary", "v2-json"]


def test_v1_json(printed: dict[str, dict[str, Any]]) -> None:
    case = printed["v1-json"]
    x = torch.tensor(case["input"], requires_grad=True)
    expected = F.cross_entropy(x, torch.tensor(case["target"]), label_smoothing=case["label_smoothing"])
    expected.backward()
    wire.assert_same(case["result"], expected)
    assert x.grad is not None
    torch.testing.assert_close(torch.tensor(case["grad"]), x.grad)


def test_v1_base64(printed: dict[str, dict[str, Any]]) -> None:
    case = printed["v1-base64"]
    expected = F.cross_entropy(torch.tensor(case["input"]), torch.tensor(case["target"]), reduction="none")
    assert case["shape"] == [2]
    wire.assert_same(case["result"], expected)


def test_v2_json(printed: dict[str, dict[str, Any]]) -> None:
    case = printed["v2-json"]
    x = torch.tensor(case["input"], requires_grad=True)
    expected = F.smooth_l1_loss(x, torch.tensor(case["target"]), beta=case["beta"])
    expected.backward()
    assert case["id"] == "node-1"
    wire.assert_same(case["result"], expected)
    assert x.grad is not None
    torch.testing.assert_close(torch.tensor(case["grad"]), x.grad)


def test_v2_binary(printed: dict[str, dict[str, Any]]) -> None:
    case = printed["v2-binary"]
    wire.assert_same(case["result"], F.mse_loss(torch.tensor(case["input"]), torch.tensor(case["target"])))
