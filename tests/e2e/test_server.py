"""End to end over a real socket: the documented example, errors, and the service surviving them."""

from __future__ import annotations

import httpx
import torch
import torch.nn.functional as F

from tests import wire

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]


def test_readme_example_over_http(server: str) -> None:
    body = {"input": X, "target": [0, 2], "label_smoothing": 0.1, "return_grad": True}
    response = httpx.post(f"{server}/v1/losses/cross_entropy", json=body)
    assert response.status_code == 200
    got = response.json()
    x = torch.tensor(X, requires_grad=True)
    expected = F.cross_entropy(x, torch.tensor([0, 2]), label_smoothing=0.1)
    expected.backward()
    wire.assert_same(got["loss"], expected)
    assert got["shape"] == []
    assert got["dtype"] == "float32"
    assert got["device"].startswith(wire.DEVICE)
    assert x.grad is not None
    wire.assert_same(got["grad"]["input"], x.grad)


def test_bad_requests_do_not_poison_the_server(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        for _ in range(3):
            bad = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 9]})
            assert bad.status_code == 422
            assert bad.headers["content-type"] == "application/problem+json"
            assert bad.json()["errors"][0]["loc"] == ["body", "target", 1]
            broken = client.post("/v1/losses/mse", content=b"{", headers={"content-type": "application/json"})
            assert broken.status_code == 400
            good = client.post("/v1/losses/mse", json={"input": [1.0, 2.0], "target": [0.0, 0.0]})
            assert good.status_code == 200
            assert good.json()["loss"] == 2.5


def test_catalog_and_openapi_are_served(server: str) -> None:
    names = [entry["name"] for entry in httpx.get(f"{server}/v1/losses").json()["losses"]]
    assert {"l1", "mse", "smooth_l1", "cross_entropy", "focal"} <= set(names)
    assert httpx.get(f"{server}/openapi.json").json()["info"]["title"] == "lossd"
