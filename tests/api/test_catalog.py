"""The catalog, health routes and the committed OpenAPI document, all derived from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.docs import README, render
from service.losses import REGISTRY
from service.openapi import document
from tests import wire

ROOT = Path(__file__).resolve().parents[2]


def test_catalog_lists_every_loss_with_its_declaration(client: TestClient) -> None:
    losses = {entry["name"]: entry for entry in client.get("/v1/losses").json()["losses"]}
    assert sorted(losses) == sorted(spec.name for spec in REGISTRY)
    for spec in REGISTRY:
        entry = losses[spec.name]
        assert entry == client.get(f"/v1/losses/{spec.name}").json()
        assert [t["name"] for t in entry["tensors"]] == [t.name for t in spec.tensors]
        assert {t["name"] for t in entry["tensors"] if t["differentiable"]} == set(spec.differentiable)
        assert entry["reductions"] == list(spec.reductions)
        assert entry["default_reduction"] in entry["reductions"]
        assert entry["aliases"] == list(spec.aliases)
        assert entry["parameters"]["additionalProperties"] is False
        assert "upstream gradient of ones" in entry["gradients"]


def test_catalog_parameter_schemas_carry_torch_defaults_and_bounds(client: TestClient) -> None:
    ce = client.get("/v1/losses/cross_entropy").json()
    props = ce["parameters"]["properties"]
    assert props["ignore_index"]["default"] == -100
    assert props["label_smoothing"] == props["label_smoothing"] | {"default": 0.0, "minimum": 0.0, "maximum": 1.0}
    assert props["reduction"]["default"] == "mean"
    target = next(t for t in ce["tensors"] if t["name"] == "target")
    assert target["kind"] == "index_or_probability"
    assert target["differentiable"]  # when it holds probabilities
    beta = client.get("/v1/losses/smooth_l1").json()["parameters"]["properties"]["beta"]
    assert beta["default"] == 1.0
    assert beta["minimum"] == 0
    assert client.get("/v1/losses/focal").json()["parameters"]["properties"]["gamma"]["default"] == 2.0


def test_reductions_follow_torch(client: TestClient) -> None:
    assert client.get("/v1/losses/kl_div").json()["reductions"] == ["none", "batchmean", "sum", "mean"]
    sigmoid_focal = client.get("/v1/losses/sigmoid_focal").json()
    assert sigmoid_focal["default_reduction"] == "none"  # torchvision's default


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("mse_loss", "mse"),
        ("MSELoss", "mse"),
        ("mseloss", "mse"),
        ("CrossEntropyLoss", "cross_entropy"),
        ("nll_loss", "nll"),
        ("NLLLoss", "nll"),
        ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits"),
        ("BCELoss", "binary_cross_entropy"),
        ("KLDivLoss", "kl_div"),
        ("ctc_loss", "ctc"),
        ("CTCLoss", "ctc"),
        ("SmoothL1Loss", "smooth_l1"),
        ("TripletMarginWithDistanceLoss", "triplet_margin_with_distance"),
        ("LinearCrossEntropyLoss", "linear_cross_entropy"),
        ("sigmoid_focal_loss", "sigmoid_focal"),
        ("MSE", "mse"),
    ],
)
def test_aliases_resolve_everywhere(client: TestClient, alias: str, name: str) -> None:
    assert client.get(f"/v1/losses/{alias}").json()["name"] == name


def test_alias_computes_like_its_loss(client: TestClient) -> None:
    body = {"input": [[0.5, 1.0], [2.0, 3.0]], "target": [[0.0, 1.0], [2.0, 2.0]], "return_grad": True}
    assert client.post("/v1/losses/MSELoss", json=body).json() == client.post("/v1/losses/mse", json=body).json()


def test_no_deprecated_torch_arguments(client: TestClient) -> None:
    for entry in client.get("/v1/losses").json()["losses"]:
        assert not {"size_average", "reduce"} & set(entry["parameters"]["properties"]), entry["name"]


def test_every_torch_loss_is_served() -> None:
    """Every loss function of torch.nn.functional is registered (under its name or as an alias)."""
    import torch.nn.functional as F

    functional = {n for n in dir(F) if n.endswith("_loss")} | {"cross_entropy", "binary_cross_entropy", "kl_div"}
    functional |= {"binary_cross_entropy_with_logits", "linear_cross_entropy"}
    for name in functional:
        REGISTRY.get(name)


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["device"].startswith(wire.DEVICE)
    assert ready.json()["losses"] == len(REGISTRY)


def test_openapi_documents_each_loss_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for loss in REGISTRY:
        operation = spec["paths"][f"/v1/losses/{loss.name}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(model["properties"]) >= {t.name for t in loss.tensors} | {
            "reduction",
            "return_grad",
            "output_encoding",
        }
        assert model["additionalProperties"] is False
        assert "application/problem+json" in operation["responses"]["422"]["content"]
    by_name = spec["paths"]["/v1/losses/{name}"]
    assert set(by_name) == {"get", "post"}  # the catalog entry and the loss computed by any of its names
    assert {"404", "422"} <= set(by_name["post"]["responses"])
    assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]  # probes need no key


def test_committed_openapi_is_current() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == document(), "openapi/openapi.json is stale: run `make openapi`"


def test_readme_loss_table_is_current() -> None:
    readme = README.read_text()
    assert render(README, readme) == readme, "README.md's loss table is stale: run `make docs`"
    assert all(f"| `{spec.name}` |" in readme for spec in REGISTRY)
