"""Behaviour beyond plain parity: how untyped JSON is read, focal's guarantees, warnings, encodings."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import Tensor

from tests import wire
from tests.cases import randint, randn

X = randn(5, 4, seed=7).float()
T = torch.tensor([0, 3, -100, 1, 2])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_with_gamma_0_equals_cross_entropy(client: TestClient, reduction: str) -> None:
    body = {"input": X.tolist(), "target": T.tolist(), "reduction": reduction, "return_grad": True}
    focal = client.post("/v1/losses/focal", json=body | {"gamma": 0.0}).json()
    ce = client.post("/v1/losses/cross_entropy", json=body).json()
    wire.assert_same(ce["loss"], F.cross_entropy(X, T, reduction=reduction))
    # focal's own formula (log_softmax, gather, sum / count) is cross_entropy's arithmetic at gamma 0: on the CPU
    # bit for bit; on CUDA cross_entropy's kernel may sum in another order
    wire.assert_same(focal["loss"], wire.to_tensor(ce["loss"]).float())
    wire.assert_same(focal["grad"]["input"], wire.to_tensor(ce["grad"]["input"]).float())


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.99])
def test_focal_gradients_stay_finite_at_saturated_logits(client: TestClient, gamma: float) -> None:
    logits = [[100.0, -100.0, 0.0], [0.0, 50.0, -50.0]]
    got = client.post("/v1/losses/focal", json={"input": logits, "target": [0, 1], "gamma": gamma, "return_grad": True})
    grad = wire.to_tensor(got.json()["grad"]["input"])
    assert torch.isfinite(grad).all()
    assert wire.to_tensor(got.json()["loss"]).item() == 0.0  # p_t == 1 exactly in float32


def test_untyped_integers_with_input_shape_are_probabilities(client: TestClient) -> None:
    """JavaScript writes 1.0 as 1: a one-hot target of input's shape is read as probabilities."""
    one_hot = [[1, 0, 0, 0]] * 5
    got = client.post("/v1/losses/cross_entropy", json={"input": X.tolist(), "target": one_hot}).json()
    wire.assert_same(got["loss"], F.cross_entropy(X, torch.tensor(one_hot, dtype=torch.float32)))


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_narrow_integer_targets_are_converted(client: TestClient, dtype: torch.dtype) -> None:
    target = randint(4, 5)
    got = client.post("/v1/losses/cross_entropy", json={"input": X.tolist(), "target": wire.b64(target.to(dtype))})
    wire.assert_same(got.json()["loss"], F.cross_entropy(X, target))


def test_integral_floats_are_class_indices(client: TestClient) -> None:
    got = client.post("/v1/losses/cross_entropy", json={"input": X.tolist(), "target": [0.0, 3.0, 1.0, 1.0, 2.0]})
    wire.assert_same(got.json()["loss"], F.cross_entropy(X, torch.tensor([0, 3, 1, 1, 2])))


def test_broadcasting_follows_torch_and_returns_its_warning(client: TestClient) -> None:
    x, t = randn(3, 4, seed=1).float(), randn(4, seed=2).float()
    got = client.post("/v1/losses/mse", json={"input": x.tolist(), "target": t.tolist(), "return_grad": True}).json()
    wire.assert_same(got["loss"], F.mse_loss(x, t))
    assert "different to the input size" in got["warnings"][0]
    assert got["grad"]["target"] is not None
    assert len(got["grad"]["target"]) == 4
    assert "warnings" not in client.post("/v1/losses/mse", json={"input": [1.0], "target": [2.0]}).json()


def _torch_warnings(call: Callable[[], Tensor]) -> tuple[Tensor, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    return value, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("shape", "body", "bias"),
    [
        ((5, 4), {"label_smoothing": 0.1}, False),
        ((5, 4), {"label_smoothing": 0.25, "reduction": "sum"}, True),
        ((5, 2, 4), {}, False),  # a K-dimensional weight
        ((5, 4), {"probabilities": True}, True),
        ((5, 4), {}, True),  # the chunked path: no warning
    ],
    ids=["smoothing", "smoothing-sum-bias", "k-dim", "probabilities", "chunked"],
)
def test_linear_cross_entropy_options_ignored_is_torchs_warning(
    client: TestClient, shape: tuple[int, ...], body: dict[str, Any], bias: bool
) -> None:
    """With `options`, torch takes its chunked path only for class indices, no label smoothing and a 2-D weight;
    otherwise it warns that the options are ignored. The client gets that warning, in torch's words."""
    x, w = randn(6, 4, seed=8).float(), randn(*shape, seed=9).float()
    b = randn(*shape[:-1], seed=10).float() if bias else None
    probabilities = body.pop("probabilities", False)
    t = (
        torch.softmax(randn(6, *shape[:-1], seed=11).float(), 1)
        if probabilities
        else randint(shape[0], 6, *shape[1:-1])
    )
    options = {"batch_chunk_size": 2}
    kwargs = dict(body)
    expected, said = _torch_warnings(
        lambda: F.linear_cross_entropy(
            x, w, t, linear_bias=b, options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2), **kwargs
        )
    )
    sent = {"input": x.tolist(), "linear_weight": w.tolist(), "target": t.tolist(), "options": options, **body}
    if b is not None:
        sent["linear_bias"] = b.tolist()
    response = client.post("/v1/losses/linear_cross_entropy", json=sent)
    assert response.status_code == 200, response.text
    got = response.json()
    wire.assert_same(got["loss"], expected)
    assert got.get("warnings", []) == said
    assert len(said) == (0 if shape == (5, 4) and not body and not probabilities else 1)


def test_untyped_arguments_follow_a_typed_input(client: TestClient) -> None:
    x = randn(4, 3, seed=3)
    body = {"input": wire.flat(x), "target": [0, 1, 2, 0], "weight": [1.0, 2.0, 0.5]}
    got = client.post("/v1/losses/cross_entropy", json=body).json()
    assert got["dtype"] == "float64"
    expected = F.cross_entropy(x, torch.tensor([0, 1, 2, 0]), weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    wire.assert_same(got["loss"], expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["l1", "mse", "smooth_l1", "cross_entropy", "focal"])
def test_half_precision(client: TestClient, dtype: torch.dtype, loss: str) -> None:
    x = randn(6, 4, seed=4).to(dtype)
    if loss in ("cross_entropy", "focal"):
        target = randint(4, 6)
        sent = target.tolist()
    else:
        target = randn(6, 4, seed=5).to(dtype)
        sent = wire.b64(target)
    got = client.post(f"/v1/losses/{loss}", json={"input": wire.b64(x), "target": sent, "output_encoding": "base64"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["dtype"] == wire.NAMES[dtype]
    assert body["loss"]["dtype"] == wire.NAMES[dtype]
    if loss == "focal":
        return  # its formula is checked in float32/float64 by the parity suite
    expected = {
        "l1": F.l1_loss,
        "mse": F.mse_loss,
        "smooth_l1": F.smooth_l1_loss,
        "cross_entropy": F.cross_entropy,
    }[loss](x, target)
    wire.assert_same(body["loss"], expected)


def test_base64_output_equals_json_output(client: TestClient) -> None:
    body = {"input": X.tolist(), "target": T.tolist(), "reduction": "none", "return_grad": True}
    as_json = client.post("/v1/losses/cross_entropy", json=body).json()
    as_b64 = client.post("/v1/losses/cross_entropy", json=body | {"output_encoding": "base64"}).json()
    assert torch.equal(wire.to_tensor(as_json["loss"]), wire.to_tensor(as_b64["loss"]))
    assert torch.equal(wire.to_tensor(as_json["grad"]["input"]), wire.to_tensor(as_b64["grad"]["input"]))


def test_return_grad_list_selects_arguments(client: TestClient) -> None:
    got = client.post("/v1/losses/mse", json={"input": [1.0, 2.0], "target": [0.0, 0.0], "return_grad": ["target"]})
    assert got.json()["grad"] == {"target": [-1.0, -2.0]}
    assert "grad" not in client.post("/v1/losses/mse", json={"input": [1.0], "target": [0.0]}).json()


def test_reduction_none_gradients_use_ones_upstream(client: TestClient) -> None:
    got = client.post(
        "/v1/losses/mse", json={"input": [1.0, 3.0], "target": [0.0, 0.0], "reduction": "none", "return_grad": True}
    ).json()
    assert got["loss"] == [1.0, 9.0]
    assert got["grad"]["input"] == [2.0, 6.0]


def test_non_finite_values_travel_as_strings(client: TestClient) -> None:
    got = client.post(
        "/v1/losses/l1", json={"input": ["NaN", "Infinity", 1.0], "target": [0.0, 0.0, 0.0], "reduction": "none"}
    )
    assert got.json()["loss"] == ["NaN", "Infinity", 1.0]
    assert client.post("/v1/losses/l1", json={"input": ["NaN"], "target": [0.0]}).json()["loss"] == "NaN"


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("loss", ["multi_margin", "multilabel_margin"])
def test_margin_losses_of_no_samples_reduce_like_every_other_loss(
    client: TestClient, loss: str, reduction: str
) -> None:
    """torch's multi_margin and multilabel_margin kernels leave the reduced loss of an empty (0, C) batch
    uninitialized (whatever the memory held). lossd answers torch's reduction of the per-element result instead
    (empty): 0 for the sum, NaN for the mean, as mse and the others give; the gradient is torch's (empty)."""
    x = torch.empty(0, 3, dtype=torch.float64)
    target = torch.empty(0, dtype=torch.int64) if loss == "multi_margin" else torch.empty(0, 3, dtype=torch.int64)
    fn = F.multi_margin_loss if loss == "multi_margin" else F.multilabel_margin_loss
    per_element = fn(x, target, reduction="none")
    expected = per_element.sum() if reduction == "sum" else per_element.mean()
    assert expected.item() == 0.0 if reduction == "sum" else expected.isnan()
    body = {"input": wire.flat(x), "target": wire.flat(target), "reduction": reduction, "return_grad": True}
    answer = client.post(f"/v1/losses/{loss}", json=body)
    assert answer.status_code == 200, answer.text
    wire.assert_same(answer.json()["loss"], expected)
    assert answer.json()["grad"] == {"input": []}  # (0, 3) as nested arrays
