"""POST /v1/evaluate: tensors sent once, many losses; each entry equals its single-loss request."""

from __future__ import annotations

from typing import Any

import pytest
import torch.nn.functional as F
from fastapi.testclient import TestClient

from tests import wire
from tests.cases import rand, randint, randn

X = randn(4, 3, seed=1).float()
Y = randn(4, 3, seed=2).float()
TENSORS = {
    "input": X.tolist(),
    "target": Y.tolist(),
    "labels": randint(3, 4).tolist(),
    "var": (rand(4, 3) + 0.1).tolist(),
}
LOSSES: list[dict[str, Any]] = [
    {"name": "mse"},
    {"name": "smooth_l1", "beta": 0.5},
    {"name": "l1", "reduction": "none"},
    {"name": "gaussian_nll", "full": True},
    {"name": "cross_entropy", "tensors": {"target": "labels"}, "label_smoothing": 0.1},
    {"name": "MSELoss", "return_grad": ["input"]},
    {"name": "sigmoid_focal", "tensors": {"inputs": "input", "targets": "target"}, "reduction": "mean"},
    {"name": "kl_div", "reduction": "batchmean", "output_encoding": "base64"},
]


def _single(client: TestClient, entry: dict[str, Any], return_grad: Any) -> dict[str, Any]:
    entry = dict(entry)
    renames = entry.pop("tensors", {})
    spec = client.get(f"/v1/losses/{entry['name']}").json()
    body = {"return_grad": return_grad} | {k: v for k, v in entry.items() if k != "name"}
    for arg in spec["tensors"]:
        key = renames.get(arg["name"], arg["name"])
        if key in TENSORS:
            body[arg["name"]] = TENSORS[key]
    response = client.post(f"/v1/losses/{entry['name']}", json=body)
    assert response.status_code == 200, response.text
    return {"name": spec["name"], "status": 200, **response.json()}


@pytest.mark.parametrize("return_grad", [False, True])
def test_each_entry_equals_the_single_loss_endpoint(client: TestClient, return_grad: bool) -> None:
    response = client.post("/v1/evaluate", json={"tensors": TENSORS, "losses": LOSSES, "return_grad": return_grad})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["name"] for r in results] == [
        "mse",
        "smooth_l1",
        "l1",
        "gaussian_nll",
        "cross_entropy",
        "mse",
        "sigmoid_focal",
        "kl_div",
    ]
    for entry, result in zip(LOSSES, results, strict=True):
        assert result == _single(client, entry, return_grad)


def test_bad_entries_fail_alone(client: TestClient) -> None:
    losses = [
        {"name": "mse"},
        {"name": "smooth_l1", "beta": -1},
        {"name": "cross_entropy", "tensors": {"target": "labels"}, "weight": [1.0]},
        {"name": "nope"},
        {"name": "focal", "tensors": {"target": "labels"}, "gama": 2},
        {"name": "cross_entropy"},  # the shared target has input's shape: class probabilities
        {"name": "nll", "tensors": {"target": "missing"}},
        {"name": "mse", "input": [1.0]},
        {"name": "mse", "tensors": {"prediction": "input"}},
        {"name": "l1"},
    ]
    results = client.post("/v1/evaluate", json={"tensors": TENSORS, "losses": losses}).json()["results"]
    statuses = [r["status"] for r in results]
    assert statuses == [200, 422, 422, 422, 422, 200, 422, 422, 422, 200]
    assert ["body", "losses", 1, "beta"] in [e["loc"] for e in results[1]["errors"]]
    assert results[2]["type"] == "/problems/invalid-request"
    assert ["body", "losses", 2, "weight"] in [e["loc"] for e in results[2]["errors"]]
    assert results[3]["errors"][0]["loc"] == ["body", "losses", 3, "name"]
    assert ["body", "losses", 4, "gama"] in [e["loc"] for e in results[4]["errors"]]
    assert results[6]["errors"][0]["loc"] == ["body", "losses", 6, "tensors", "target"]
    held = ", ".join(repr(key) for key in TENSORS)
    assert (
        results[6]["detail"]
        == f"tensors.target names 'missing', which the request's tensors do not hold (they hold {held})"
    )
    assert results[0]["loss"] == _single(client, {"name": "mse"}, False)["loss"]


def test_tensor_problems_point_at_the_shared_tensor(client: TestClient) -> None:
    """A loss's rule broken by a shared tensor fails that entry; a malformed tensor fails the request."""
    tensors = {"input": [[1.0, 2.0], [3.0, 4.0]], "target": [1.0, 2.0], "labels": [0, 5, 1, 2], "logits": X.tolist()}
    losses = [
        {"name": "mse"},
        {"name": "cross_entropy", "tensors": {"input": "logits", "target": "labels"}},
    ]
    results = client.post("/v1/evaluate", json={"tensors": tensors, "losses": losses}).json()["results"]
    assert results[0]["status"] == 200
    assert results[1]["type"] == "/problems/value-out-of-range"
    assert results[1]["errors"][0]["loc"] == ["body", "tensors", "labels", 1]
    malformed = client.post(
        "/v1/evaluate", json={"tensors": tensors | {"unused": [[1.0], [2.0, 3.0]]}, "losses": losses}
    )
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["loc"] == ["body", "tensors", "unused", 1]


def test_request_level_errors(client: TestClient) -> None:
    for body, loc in (
        ({"tensors": TENSORS, "losses": []}, ["body", "losses"]),
        ({"losses": [{"name": "mse"}]}, ["body", "tensors"]),
        ({"tensors": TENSORS, "losses": [{"beta": 1}]}, ["body", "losses", 0, "name"]),
        ({"tensors": TENSORS, "losses": [{"name": "mse"}], "extra": 1}, ["body", "extra"]),
    ):
        response = client.post("/v1/evaluate", json=body)
        assert response.status_code == 422, response.text
        assert loc in [e["loc"] for e in response.json()["errors"]]


def test_gradients_in_evaluate_equal_torch(client: TestClient) -> None:
    body = {"tensors": TENSORS, "losses": [{"name": "mse", "return_grad": ["input", "target"]}]}
    result = client.post("/v1/evaluate", json=body).json()["results"][0]
    x, y = X.clone().requires_grad_(True), Y.clone().requires_grad_(True)
    F.mse_loss(x, y).backward()
    assert x.grad is not None
    assert y.grad is not None
    wire.assert_same(result["grad"]["input"], x.grad)
    wire.assert_same(result["grad"]["target"], y.grad)
