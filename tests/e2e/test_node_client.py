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


def test_session_example(server: str) -> None:
    """examples/node/session.mjs streams a dataset in batches of different sizes (one sent twice) into a
    session: the dataset values equal torch's on the whole dataset, overall and per group."""
    if NODE is None:
        pytest.skip("node is not on PATH")
    run = subprocess.run(
        [NODE, str(ROOT / "examples" / "node" / "session.mjs"), server], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    x, y = torch.tensor(out["input"]), torch.tensor(out["target"])
    weight, groups = torch.tensor(out["weight"]), torch.tensor(out["groups"])
    assert out["result"]["batches"] == 4
    plain, weighted = out["result"]["results"]
    for label in ("whole", 0, 1):
        rows = torch.ones_like(groups, dtype=torch.bool) if label == "whole" else groups == label
        want_plain = F.cross_entropy(x[rows], y[rows])
        want_weighted = F.cross_entropy(x[rows], y[rows], weight=weight, label_smoothing=0.05)
        got_plain = plain if label == "whole" else plain["groups"][str(label)]
        got_weighted = weighted if label == "whole" else weighted["groups"][str(label)]
        # float64 sums of float32 terms: torch's float32 value to float32 precision
        torch.testing.assert_close(torch.tensor(got_plain["loss"], dtype=torch.float32), want_plain)
        torch.testing.assert_close(torch.tensor(got_weighted["loss"], dtype=torch.float32), want_weighted)
        assert got_plain["stats"]["count"] == int((y[rows] != -100).sum())
