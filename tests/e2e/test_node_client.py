"""The Node.js examples against the running service: client.mjs and session.mjs (built-in fetch only) over HTTP,
grpc.mjs (@grpc/grpc-js, installed by `make install-node`) over gRPC; their results equal torch's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.conftest import free_port, start_server, stop_server

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
    wire.assert_same(case["grad"], x.grad)


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
    wire.assert_same(case["grad"], x.grad)


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
        kept = y[rows][y[rows] != -100]
        # the session's means: torch's float32 per-sample terms added up in float64, over the count of the targets
        # not ignored, or their weights (wire.SUMMED); torch's own float32 mean would round them to float32
        plain_terms = F.cross_entropy(x[rows], y[rows], reduction="none")
        weighted_terms = F.cross_entropy(x[rows], y[rows], weight=weight, label_smoothing=0.05, reduction="none")
        want_plain = plain_terms.double().sum() / len(kept)
        want_weighted = weighted_terms.double().sum() / weight.double()[kept].sum()
        got_plain = plain if label == "whole" else plain["groups"][str(label)]
        got_weighted = weighted if label == "whole" else weighted["groups"][str(label)]
        wire.assert_within(_f64(got_plain["loss"]), want_plain, f"{label}, plain", **wire.SUMMED)
        wire.assert_within(_f64(got_weighted["loss"]), want_weighted, f"{label}, weighted", **wire.SUMMED)
        assert got_plain["stats"]["count"] == len(kept)


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


NODE_MODULES = ROOT / "examples" / "node" / "node_modules"


@pytest.fixture(scope="module")
def grpc_printed() -> dict[str, Any]:
    """What examples/node/grpc.mjs prints against a server of its own with gRPC on a free port. Fails, never
    skips, where node or the example's npm packages are missing."""
    if NODE is None:
        pytest.fail("node is not on PATH: the gRPC example needs Node.js 18+ and `make install-node`")
    if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir() or not (NODE_MODULES / "@grpc" / "proto-loader").is_dir():
        pytest.fail("examples/node has no node_modules/@grpc: run `make install-node` (npm ci in examples/node)")
    grpc_port = free_port()
    _, proc = start_server(LOSSD_GRPC_PORT=str(grpc_port))
    try:
        run = subprocess.run(
            [NODE, str(ROOT / "examples" / "node" / "grpc.mjs")],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | {"LOSSD_GRPC": f"127.0.0.1:{grpc_port}"},
        )
    finally:
        stop_server(proc)
    assert run.returncode == 0, run.stderr
    out: dict[str, Any] = json.loads(run.stdout)
    return out


def _fp32(request: dict[str, Any], name: str) -> torch.Tensor:
    """A typed FP32 input of a request as grpc.mjs sent it."""
    (tensor,) = [t for t in request["inputs"] if t["name"] == name]
    return torch.tensor(tensor["contents"]["fp32_contents"], dtype=torch.float32).reshape(tensor["shape"])


def test_grpc_ready_and_metadata(grpc_printed: dict[str, Any]) -> None:
    assert grpc_printed["ready"] is True
    metadata = grpc_printed["metadata"]
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == ("cross_entropy", ["1"], "pytorch")
    assert metadata["inputs"][:2] == [
        {"name": "input", "datatype": "FP32", "shape": [-1]},
        {"name": "target", "datatype": "INT64", "shape": [-1]},
    ]
    assert [t["name"] for t in metadata["outputs"]][:2] == ["loss", "grad_input"]


def test_grpc_typed_contents(grpc_printed: dict[str, Any]) -> None:
    case = grpc_printed["mse"]
    assert (case["id"], case["loss_shape"]) == ("node-grpc-mse", [])
    expected = F.mse_loss(torch.tensor(case["input"]), torch.tensor(case["target"]))
    wire.assert_same(case["loss"], expected)


def test_grpc_raw_contents_with_grad(grpc_printed: dict[str, Any]) -> None:
    case = grpc_printed["cross_entropy"]
    x = torch.tensor(case["input"], dtype=torch.float32).reshape(case["input_shape"]).requires_grad_()
    expected = F.cross_entropy(x, torch.tensor(case["target"]), label_smoothing=case["label_smoothing"])
    expected.backward()
    assert x.grad is not None
    assert case["datatypes"] == ["FP32", "FP32"]
    assert case["grad_input_shape"] == list(x.shape)
    wire.assert_same(case["loss"], expected)
    wire.assert_same(case["grad_input"], x.grad.reshape(-1))


def test_grpc_error_status(grpc_printed: dict[str, Any]) -> None:
    error = grpc_printed["error"]
    assert error is not None, "the call with class index 5 of 3 classes succeeded"
    assert (error["code"], error["code_number"]) == ("INVALID_ARGUMENT", 3)
    assert error["message"].startswith("class index 5 at target[0] is out of range"), error


def test_grpc_stream_answers_in_order(grpc_printed: dict[str, Any]) -> None:
    requests, answers = grpc_printed["stream"]["requests"], grpc_printed["stream"]["answers"]
    assert [a["id"] for a in answers] == [r["id"] for r in requests] == ["stream-1", "stream-2", "stream-3"]
    smooth, _, l1 = requests
    beta = smooth["parameters"]["beta"]["double_param"]
    assert answers[0]["model"] == "smooth_l1"
    wire.assert_same(answers[0]["loss"], F.smooth_l1_loss(_fp32(smooth, "input"), _fp32(smooth, "target"), beta=beta))
    assert answers[1]["error_message"].startswith("no loss named 'no_such_loss'"), answers[1]
    reduction = l1["parameters"]["reduction"]["string_param"]
    assert answers[2]["model"] == "l1"
    wire.assert_same(answers[2]["loss"], F.l1_loss(_fp32(l1, "input"), _fp32(l1, "target"), reduction=reduction))
