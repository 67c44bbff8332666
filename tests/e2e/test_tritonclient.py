"""NVIDIA's own client library (tritonclient[http]) against the running service, unchanged."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import wire
from tests.cases import randint, randn


@pytest.fixture(scope="module")
def triton(server: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.removeprefix("http://"))


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("cross_entropy")
    assert triton.is_model_ready("CrossEntropyLoss")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("ctc")
    assert [i["name"] for i in meta["inputs"]] == ["log_probs", "targets", "input_lengths", "target_lengths"]
    assert [o["name"] for o in meta["outputs"]] == ["loss", "grad_log_probs"]


@pytest.mark.parametrize("binary", [False, True])
def test_cross_entropy_with_gradient(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    x, t = randn(8, 5, seed=1).float(), randint(5, 8)
    result = triton.infer(
        "cross_entropy",
        [_input("input", x.numpy(), "FP32", binary), _input("target", t.numpy(), "INT64", binary)],
        outputs=[
            httpclient.InferRequestedOutput("loss", binary_data=binary),
            httpclient.InferRequestedOutput("grad_input", binary_data=binary),
        ],
        parameters={"label_smoothing": 0.2, "reduction": "mean"},
        request_id="r-1",
    )
    leaf = x.clone().requires_grad_(True)
    expected = F.cross_entropy(leaf, t, label_smoothing=0.2)
    expected.backward()
    wire.assert_same(float(result.as_numpy("loss")), expected)
    assert leaf.grad is not None
    wire.assert_same(result.as_numpy("grad_input").tolist(), leaf.grad)
    assert result.get_response()["id"] == "r-1"


def test_default_outputs_are_binary(triton: httpclient.InferenceServerClient) -> None:
    """Without `outputs`, tritonclient asks for every output in binary; lossd returns the loss."""
    x, y = randn(3, 4, seed=2).float(), randn(3, 4, seed=3).float()
    result = triton.infer("mse", [_input("input", x.numpy(), "FP32", True), _input("target", y.numpy(), "FP32", True)])
    assert result.get_output("loss")["parameters"]["binary_data_size"] == 4
    wire.assert_same(float(result.as_numpy("loss")), F.mse_loss(x, y))


def test_several_losses_json_and_compression(triton: httpclient.InferenceServerClient) -> None:
    a, p, n = (randn(6, 4, seed=s).float() for s in (4, 5, 6))
    result = triton.infer(
        "triplet_margin",
        [_input(name, v.numpy(), "FP32", False) for name, v in (("anchor", a), ("positive", p), ("negative", n))],
        outputs=[httpclient.InferRequestedOutput("loss", binary_data=False)],
        parameters={"margin": 0.5, "swap": True, "reduction": "none"},
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    wire.assert_same(
        result.as_numpy("loss").tolist(), F.triplet_margin_loss(a, p, n, margin=0.5, swap=True, reduction="none")
    )

    lp = randn(7, 2, 5, seed=7).float().log_softmax(2)
    targets, il, tl = np.array([[1, 2, 3], [4, 4, 0]]), np.array([7, 6]), np.array([3, 2])
    result = triton.infer(
        "CTCLoss",
        [
            _input("log_probs", lp.numpy(), "FP32", True),
            _input("targets", targets.astype(np.int32), "INT32", False),
            _input("input_lengths", il, "INT64", False),
            _input("target_lengths", tl, "INT64", False),
        ],
        outputs=[httpclient.InferRequestedOutput("loss"), httpclient.InferRequestedOutput("grad_log_probs")],
    )
    leaf = lp.clone().requires_grad_(True)
    expected = F.ctc_loss(leaf, torch.from_numpy(targets), torch.from_numpy(il), torch.from_numpy(tl))
    expected.backward()
    wire.assert_same(float(result.as_numpy("loss")), expected)
    assert leaf.grad is not None
    wire.assert_same(result.as_numpy("grad_log_probs").tolist(), leaf.grad)


def test_bf16_travels_in_binary(triton: httpclient.InferenceServerClient) -> None:
    x, y = randn(4, 4, seed=8).to(torch.bfloat16), randn(4, 4, seed=9).to(torch.bfloat16)
    inputs = []
    for name, v in (("input", x), ("target", y)):
        tensor = httpclient.InferInput(name, list(v.shape), "BF16")
        tensor.set_data_from_numpy(v.float().numpy().astype(ml_dtypes.bfloat16), binary_data=True)
        inputs.append(tensor)
    result = triton.infer("l1", inputs, outputs=[httpclient.InferRequestedOutput("loss", binary_data=True)])
    assert result.get_output("loss")["datatype"] == "BF16"
    wire.assert_same(float(result.as_numpy("loss").astype(np.float32)), F.l1_loss(x, y))


def test_errors_reach_the_client(triton: httpclient.InferenceServerClient) -> None:
    x = randn(2, 3, seed=1).float().numpy()
    with pytest.raises(InferenceServerException, match=r"class index 7 at target\[1\] is out of range"):
        triton.infer(
            "cross_entropy", [_input("input", x, "FP32", True), _input("target", np.array([0, 7]), "INT64", True)]
        )
    with pytest.raises(InferenceServerException, match="no loss named"):
        triton.get_model_metadata("cross_entopy")
    result = triton.infer(
        "cross_entropy", [_input("input", x, "FP32", True), _input("target", np.array([0, 2]), "INT64", True)]
    )
    wire.assert_same(float(result.as_numpy("loss")), F.cross_entropy(torch.from_numpy(x), torch.tensor([0, 2])))
