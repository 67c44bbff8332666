"""Parity with torch, generated from the registry: every loss x case x reduction x wire form and dtype.

Values and every gradient the API returns are compared with `torch.nn.functional` (the focal losses:
their published formulas) computed here on the very same numbers. Where torch itself refuses a dtype
on the CPU (some kernels have no half-precision version), the service must refuse it the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import Tensor

from service.losses import REGISTRY
from tests import wire
from tests.cases import CASES, FUNCTIONAL, Case, reference

FORMS = {
    "nested-float32": torch.float32,
    "flat-float64": torch.float64,
    "b64-float32": torch.float32,
    "b64-float16": torch.float16,
    "b64-bfloat16": torch.bfloat16,
}
TOLERANCE = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-7},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 1e-4},  # 2 ulps: the focal formulas are written another way than
    torch.bfloat16: {"rtol": 3.2e-2, "atol": 1e-3},  # the references, which may round differently
}
if wire.DEVICE != "cpu":  # other kernels, other summation orders: half precision drifts further
    TOLERANCE[torch.float16] = {"rtol": 1e-2, "atol": 1e-2}
    TOLERANCE[torch.bfloat16] = {"rtol": 5e-2, "atol": 5e-2}


def _encode(t: Tensor, form: str) -> Any:
    if not t.is_floating_point():
        return t.tolist()
    if form == "nested-float32":
        return t.tolist()
    if form == "flat-float64":
        return wire.flat(t)
    return wire.b64(t)


PARAMS = [
    pytest.param(spec.name, case, reduction, form, id=f"{spec.name}-{case.id}-{reduction}-{form}")
    for spec in REGISTRY
    for case in CASES.get(spec.name, [])
    for reduction in spec.reductions
    for form in FORMS
]


def test_every_loss_has_cases() -> None:
    assert sorted(CASES) == sorted(spec.name for spec in REGISTRY)


@pytest.mark.parametrize(("name", "case", "reduction", "form"), PARAMS)
def test_matches_torch(client: TestClient, name: str, case: Case, reduction: str, form: str) -> None:
    if name in FUNCTIONAL and FUNCTIONAL[name] is None:
        pytest.skip(f"this torch ({torch.__version__}) has no {name}")
    spec = REGISTRY.get(name)
    dtype = FORMS[form]
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in case.tensors.items()}
    params = {**case.params, "reduction": reduction}
    body = {k: _encode(v, form) for k, v in tensors.items()} | params | {"return_grad": True}
    if form.startswith("b64"):
        body["output_encoding"] = "base64"
    response = client.post(f"/v1/losses/{name}", json=body)

    leaves = {
        k: v.clone().requires_grad_(True)
        for k, v in tensors.items()
        if k in spec.differentiable and v.is_floating_point()
    }
    try:
        expected = reference(name, tensors | leaves, params)
    except (RuntimeError, NotImplementedError) as exc:  # torch refuses this dtype on the CPU
        refusal = str(exc).splitlines()[0]
        if wire.DEVICE == "cpu":
            assert response.status_code == 422, response.text
            assert response.json()["type"] == "/problems/rejected-by-torch"
            assert refusal in response.json()["detail"]
        return
    grads = torch.autograd.grad(expected, list(leaves.values()), torch.ones_like(expected), allow_unused=True)

    assert response.status_code == 200, response.text
    got = response.json()
    assert got["dtype"] == wire.NAMES[dtype]
    assert got["shape"] == list(expected.shape)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(wire.to_tensor(got["loss"]), expected.detach().double(), **tolerance, equal_nan=True)
    assert sorted(got["grad"]) == sorted(leaves)
    for (arg, leaf), grad in zip(leaves.items(), grads, strict=True):
        want = torch.zeros_like(leaf) if grad is None else grad
        torch.testing.assert_close(wire.to_tensor(got["grad"][arg]), want.double(), **tolerance, equal_nan=True)
