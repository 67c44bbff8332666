"""Parity with torch, generated from the registry: every loss x case x reduction x wire form and dtype.

Values and every gradient the API returns are compared with `torch.nn.functional` (the focal losses:
their published formulas) computed here on the very same numbers: bit for bit on the CPU, where lossd
runs the very same torch call (the softmax focal loss, written another way, within a few ulps:
tests.cases.WRITTEN_OUT). Where torch itself refuses a dtype (some CPU kernels have no half-precision
version), the service must refuse it the same way; on CUDA, whose kernels differ, it must do what torch's
CUDA kernel does with that call."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response
from torch import Tensor

from service.losses import REGISTRY
from tests import wire
from tests.cases import CASES, FUNCTIONAL, WRITTEN_OUT, Case, reference, written_out_tolerance

FORMS = {
    "nested-float32": torch.float32,
    "flat-float64": torch.float64,
    "b64-float32": torch.float32,
    "b64-float16": torch.float16,
    "b64-bfloat16": torch.bfloat16,
}
CUDA_TOLERANCE = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-7},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
}
"""lossd on CUDA against torch on the CPU: other kernels, other summation orders (blocked reductions, atomic adds,
some of them nondeterministic); half precision drifts further."""


def _torch_answer(
    name: str, tensors: dict[str, Tensor], params: dict[str, Any], device: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """torch's loss and the gradient of every differentiable input (by its name) for the very same call on
    `device`, back on the CPU; torch's error where it refuses the call there."""
    spec = REGISTRY.get(name)
    on_device = {k: v.to(device) for k, v in tensors.items()}
    leaves = {
        k: v.clone().requires_grad_(True)
        for k, v in on_device.items()
        if k in spec.differentiable and v.is_floating_point()
    }
    loss = reference(name, on_device | leaves, params)
    grads = torch.autograd.grad(loss, list(leaves.values()), torch.ones_like(loss), allow_unused=True)
    wanted = {
        arg: (torch.zeros_like(leaf) if grad is None else grad).cpu()
        for (arg, leaf), grad in zip(leaves.items(), grads, strict=True)
    }
    return loss.detach().cpu(), wanted


def _assert_refused(response: Response, refusal: Exception) -> None:
    """lossd answers torch's refusal of the call: 422 rejected-by-torch, quoting torch's own message."""
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "/problems/rejected-by-torch", problem
    assert str(refusal).splitlines()[0] in problem["detail"], (problem, refusal)


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
    dtype = FORMS[form]
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in case.tensors.items()}
    params = {**case.params, "reduction": reduction}
    body = {k: _encode(v, form) for k, v in tensors.items()} | params | {"return_grad": True}
    if form.startswith("b64"):
        body["output_encoding"] = "base64"
    response = client.post(f"/v1/losses/{name}", json=body)

    try:
        expected, grads = _torch_answer(name, tensors, params, "cpu")
    except (RuntimeError, NotImplementedError) as exc:  # torch refuses this dtype on the CPU
        if wire.DEVICE == "cpu":
            _assert_refused(response, exc)
            return
        # lossd computes on CUDA, where torch's kernel for this call may exist (multi_margin, multilabel_margin in
        # half precision) or not (ctc: float32 and float64 only): the service must do as torch does there.
        try:
            expected, grads = _torch_answer(name, tensors, params, wire.DEVICE)
        except (RuntimeError, NotImplementedError) as device_exc:
            _assert_refused(response, device_exc)
            return

    assert response.status_code == 200, response.text
    got = response.json()
    assert got["dtype"] == wire.NAMES[dtype]
    assert got["shape"] == list(expected.shape)
    assert sorted(got["grad"]) == sorted(grads)
    answers = [("loss", got["loss"], expected)] + [(f"grad {k}", got["grad"][k], want) for k, want in grads.items()]
    for what, value, want in answers:
        actual = wire.to_tensor(value)
        if wire.DEVICE != "cpu":  # torch's CUDA kernels may sum in another order than its CPU ones
            tolerance = CUDA_TOLERANCE[dtype]
        elif name in WRITTEN_OUT:  # see WRITTEN_OUT: not the same operations as the reference
            tolerance = written_out_tolerance(dtype)
        else:  # the very same torch call on the very same numbers
            wire.assert_exact(actual, want.double(), what)
            continue
        wire.assert_within(actual, want.double(), what, **tolerance)
