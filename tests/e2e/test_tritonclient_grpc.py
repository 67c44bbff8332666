"""NVIDIA's tritonclient[grpc], unchanged, against the running service: health, metadata, inference with raw and
typed inputs and a gradient, errors, and a stream that also feeds a dataset session. The client runs in a process
of its own (tests/e2e/triton_grpc_client.py); every number is compared here with torch.nn.functional."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.cases import randint, randn
from tests.e2e.conftest import ROOT, free_port, start_server, stop_server


@pytest.fixture(scope="module")
def answers() -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    port = free_port()
    url, proc = start_server(LOSSD_GRPC_PORT=str(port))
    tensors = {
        "logits": randn(6, 4, seed=1).float(),
        "labels": randint(4, 6, seed=2),
        "logits_2": randn(3, 4, seed=3).float(),
        "labels_2": randint(4, 3, seed=4),
        "bad_labels": torch.tensor([0, 1, 2, 3, 9, 0]),
        "x": randn(2, 5, seed=5).float(),
        "y": randn(2, 5, seed=6).float(),
    }
    try:
        session = httpx.post(f"{url}/v1/sessions", json={"losses": [{"name": "cross_entropy"}]}).json()["id"]
        job = {
            "address": f"127.0.0.1:{port}",
            "session": session,
            "tensors": {
                k: [v.reshape(-1).tolist(), list(v.shape), "FP32" if v.is_floating_point() else "INT64"]
                for k, v in tensors.items()
            },
        }
        run = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "e2e" / "triton_grpc_client.py")],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout)
        got["session_view"] = httpx.get(f"{url}/v1/sessions/{session}").json()
        yield got, tensors
    finally:
        stop_server(proc)


def test_health_and_metadata(answers: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    got, _ = answers
    assert got["live"] is True
    assert got["ready"] is True
    assert got["model_ready"] is True
    assert got["server_metadata"]["name"] == "lossd"
    assert "binary_tensor_data" in got["server_metadata"]["extensions"]
    meta = got["ctc_metadata"]
    assert [i["name"] for i in meta["inputs"]] == ["log_probs", "targets", "input_lengths", "target_lengths"]
    assert [o["name"] for o in meta["outputs"]] == ["loss", "grad_log_probs"]


def test_infer_raw_with_gradient_and_typed(answers: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    got, t = answers
    leaf = t["logits"].clone().requires_grad_(True)
    expected = F.cross_entropy(leaf, t["labels"], label_smoothing=0.2)
    (grad,) = torch.autograd.grad(expected, [leaf])
    assert got["cross_entropy"]["id"] == "ce-1"
    wire.assert_same(got["cross_entropy"]["loss"], expected)
    wire.assert_same(got["cross_entropy"]["grad_input"], grad)
    wire.assert_same(got["mse_typed"], F.mse_loss(t["x"], t["y"], reduction="sum"))
    wire.assert_same(got["smooth_l1_raw"], F.smooth_l1_loss(t["x"], t["y"], beta=0.5, reduction="none"))


def test_errors(answers: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    got, _ = answers
    assert got["bad_index"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert got["bad_index"]["message"].startswith("class index 9 at target[4] is out of range")
    assert got["unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert "no_such_loss" in got["unknown"]["message"]


def test_stream_in_order_and_into_a_session(answers: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    got, t = answers
    first, bad, third, batch_0, batch_1 = got["stream"]
    assert first["id"] == "s1"
    wire.assert_same(first["loss"], F.mse_loss(t["x"], t["y"]))
    assert "class index 9" in bad["error"]
    assert third["id"] == "s3"
    wire.assert_same(third["loss"], F.l1_loss(t["x"], t["y"]))
    assert (batch_0["id"], batch_1["id"]) == ("batch-0", "batch-1")
    wire.assert_same(batch_0["loss"], F.cross_entropy(t["logits"], t["labels"]).double().reshape(1))
    wire.assert_same(batch_1["loss"], F.cross_entropy(t["logits_2"], t["labels_2"]).double().reshape(1))
    view = got["session_view"]
    assert view["batches"] == 2
    # the dataset's mean: torch's float32 per-sample terms of each batch, added up in float64 (wire.SUMMED)
    terms = [F.cross_entropy(t[x], t[y], reduction="none") for x, y in (("logits", "labels"), ("logits_2", "labels_2"))]
    dataset = torch.cat(terms).double().mean()
    wire.assert_within(torch.tensor(view["results"][0]["loss"], dtype=torch.float64), dataset, "dataset", **wire.SUMMED)
