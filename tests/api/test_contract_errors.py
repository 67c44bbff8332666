"""Contract errors that say what to send instead: torch's deprecated `size_average` and `reduce` name the
`reduction` torch computes from them, an unknown field names the close field names, and a number that overflows
its declared float dtype is refused. Over /v1/losses, /v1/evaluate, sessions, /v2 (HTTP) and gRPC, each naming the
field, and each followed by a request that works.

Every suggested reduction is checked against torch itself: torch computes the loss with the deprecated arguments,
and lossd, sent the suggested `reduction`, gives the same value.
"""

from __future__ import annotations

import inspect
import itertools
import math
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import Tensor

from service import codec, compute
from service.errors import InvalidTensor
from service.losses import REGISTRY
from service.losses.registry import legacy_reduction
from service.rpc import grpc_service_pb2 as pb
from service.rpc import grpc_service_pb2_grpc as pb_grpc
from tests import wire
from tests.cases import CASES, FUNCTIONAL, reference

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
ABSENT = object()
"""A legacy argument left out of the request (as opposed to sent as null)."""
LEGACY_VALUES = (True, False, None, ABSENT)
COMBOS = [(s, r) for s, r in itertools.product(LEGACY_VALUES, repeat=2) if not (s is ABSENT and r is ABSENT)]


def _takes_legacy(name: str) -> bool:
    """Whether torch's own function of loss `name` takes size_average and reduce (from its signature, here)."""
    fn = FUNCTIONAL.get(name)
    return fn is not None and {"size_average", "reduce"} <= set(inspect.signature(fn).parameters)


LEGACY = [spec.name for spec in REGISTRY if _takes_legacy(spec.name)]
NOT_LEGACY = [spec.name for spec in REGISTRY if not _takes_legacy(spec.name)]


def _legacy_msg(reduction: str) -> str:
    return f'size_average and reduce are deprecated in torch; send "reduction": "{reduction}" instead'


def _legacy_args(size_average: Any, reduce: Any) -> dict[str, Any]:
    return {k: v for k, v in (("size_average", size_average), ("reduce", reduce)) if v is not ABSENT}


def _body(name: str, **params: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The first test case of loss `name`: its tensors, and its request body with `params` added."""
    case = CASES[name][0]
    return case.tensors, {k: wire.flat(t) for k, t in case.tensors.items()} | case.params | params


def _torch_legacy(name: str, tensors: dict[str, Tensor], params: dict[str, Any]) -> Tensor:
    """torch's loss computed with its deprecated arguments (the warning it prints silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reference(name, dict(tensors), params)


def _problem(response: Any, loc: list[Any], slug: str = "invalid-request") -> str:
    """The message of the problem's error at `loc` (a 422 of type `slug`)."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"/problems/{slug}", problem
    messages = [e["msg"] for e in problem["errors"] if e["loc"] == loc]
    assert messages, problem
    assert messages[0] in problem["detail"]
    return str(messages[0])


def _still_works(client: TestClient) -> None:
    response = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 2]})
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], F.cross_entropy(torch.tensor(X), torch.tensor([0, 2])))


# --- size_average and reduce --------------------------------------------------------------------------------------


def test_the_losses_told_are_those_whose_torch_function_takes_them() -> None:
    assert {spec.name for spec in REGISTRY if spec.legacy_reduction} == set(LEGACY)
    assert {"mse", "cross_entropy", "nll", "kl_div", "l1", "smooth_l1"} <= set(LEGACY)
    assert {"huber", "ctc", "gaussian_nll", "focal"} <= set(NOT_LEGACY)


@pytest.mark.parametrize(("size_average", "reduce"), list(itertools.product((True, False, None), repeat=2)))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_legacy_reduction_is_torchs(size_average: bool | None, reduce: bool | None, reduction: str) -> None:
    """torch's `legacy_get_string` when either is given; torch's own mse with them has the value of the reduction
    named."""
    suggested = legacy_reduction(size_average, reduce, reduction)
    if size_average is not None or reduce is not None:
        assert suggested == torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = F.mse_loss(x, y, size_average=size_average, reduce=reduce, reduction=reduction)
    assert torch.equal(legacy, F.mse_loss(x, y, reduction=suggested))


@pytest.mark.parametrize("name", LEGACY)
def test_every_legacy_loss_names_the_reduction(client: TestClient, name: str) -> None:
    """Each combination of size_average and reduce (true, false, null, absent), with and without a reduction:
    a 422 naming the field sent first, whose suggested reduction gives torch's value for those arguments."""
    for (size_average, reduce), given in itertools.product(COMBOS, (None, "sum")):
        legacy = _legacy_args(size_average, reduce)
        params = legacy | ({"reduction": given} if given else {})
        tensors, body = _body(name, **params)
        expected = _torch_legacy(name, tensors, CASES[name][0].params | params)
        first = next(iter(legacy))
        message = _problem(client.post(f"/v1/losses/{name}", json=body), ["body", first])
        suggested = message.split('"reduction": "')[1].split('"')[0]
        assert message == _legacy_msg(suggested)
        raw = {k: v for k, v in legacy.items() if v is not None}
        assert suggested == (
            legacy_reduction(raw.get("size_average"), raw.get("reduce"), given or "mean") if raw else (given or "mean")
        )
        _, fixed = _body(name, reduction=suggested)
        response = client.post(f"/v1/losses/{name}", json=fixed)
        assert response.status_code == 200, response.text
        wire.assert_same(response.json()["loss"], expected)


def test_size_average_false_says_sum(client: TestClient) -> None:
    body = {"input": X, "target": [0, 1], "size_average": False}
    message = _problem(client.post("/v1/losses/cross_entropy", json=body), ["body", "size_average"])
    assert message == 'size_average and reduce are deprecated in torch; send "reduction": "sum" instead'
    body = {"input": X, "target": [0, 1], "reduce": False, "size_average": True}
    response = client.post("/v1/losses/cross_entropy", json=body)
    assert _problem(response, ["body", "reduce"]) == _legacy_msg("none")
    assert _problem(response, ["body", "size_average"]) == _legacy_msg("none")
    _still_works(client)


def test_legacy_values_that_are_not_booleans(client: TestClient) -> None:
    body = {"input": [1.0], "target": [2.0], "size_average": "no"}
    message = _problem(client.post("/v1/losses/mse", json=body), ["body", "size_average"])
    assert message == (
        'size_average and reduce are deprecated in torch (true, false or null); send "reduction" '
        '("none", "mean" or "sum") instead'
    )
    _still_works(client)


@pytest.mark.parametrize("name", NOT_LEGACY)
def test_losses_without_them_keep_the_unknown_field_error(client: TestClient, name: str) -> None:
    _, body = _body(name, size_average=False)
    message = _problem(client.post(f"/v1/losses/{name}", json=body), ["body", "size_average"])
    assert message.startswith("unknown field 'size_average'")
    assert "deprecated" not in message
    _still_works(client)


def test_legacy_in_evaluate_entries_and_sessions(client: TestClient) -> None:
    x, t = torch.tensor(X), torch.tensor([0, 1])
    body = {
        "tensors": {"input": X, "target": [0, 1]},
        "losses": [{"name": "cross_entropy", "reduce": False}, {"name": "nll_loss", "size_average": False}],
    }
    response = client.post("/v1/evaluate", json=body)
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["status"] == 422
    assert first["errors"] == [{"loc": ["body", "losses", 0, "reduce"], "msg": _legacy_msg("none")}]
    assert second["errors"] == [{"loc": ["body", "losses", 1, "size_average"], "msg": _legacy_msg("sum")}]
    fixed = {"tensors": body["tensors"], "losses": [{"name": "cross_entropy", "reduction": "none"}]}
    results = client.post("/v1/evaluate", json=fixed).json()["results"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wire.assert_same(results[0]["loss"], F.cross_entropy(x, t, reduce=False))

    for value in (False, None):  # null too: a session refuses it as /v1/losses does
        body = {"losses": [{"name": "mse", "size_average": value}]}
        message = _problem(client.post("/v1/sessions", json=body), ["body", "losses", 0, "size_average"])
        assert message == _legacy_msg("sum" if value is False else "mean")
    response = client.post("/v1/sessions", json={"losses": [{"name": "mse", "reduction": "sum"}]})
    assert response.status_code == 201, response.text
    client.delete(f"/v1/sessions/{response.json()['id']}")
    _still_works(client)


def _v2_body(parameters: dict[str, Any], x: Tensor, t: Tensor) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()},
            {"name": "target", "shape": list(t.shape), "datatype": "INT64", "data": t.tolist()},
        ],
    }


def test_v2_parameters(client: TestClient) -> None:
    x, t = torch.tensor(X), torch.tensor([0, 1])
    response = client.post("/v2/models/cross_entropy/infer", json=_v2_body({"size_average": False}, x, t))
    assert response.status_code == 400
    assert response.json()["error"].endswith(f"size_average: {_legacy_msg('sum')}")
    response = client.post("/v2/models/cross_entropy/infer", json=_v2_body({"label_smooting": 0.1}, x, t))
    assert response.status_code == 400
    assert response.json()["error"].endswith("unknown field 'label_smooting'; did you mean 'label_smoothing'?")
    # an input's name is no parameter to suggest: inputs travel in `inputs`
    response = client.post("/v2/models/cross_entropy/infer", json=_v2_body({"inptu": 1}, x, t))
    assert response.json()["error"].endswith("inptu: unknown field 'inptu' (not an argument or parameter of this loss)")
    response = client.post("/v2/models/cross_entropy/infer", json=_v2_body({"reduction": "sum"}, x, t))
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["outputs"][0]["data"][0], F.cross_entropy(x, t, reduction="sum"))


# --- did you mean -------------------------------------------------------------------------------------------------


UNKNOWN: list[tuple[str, str, dict[str, Any], list[Any], str]] = [
    # (id, path, body, loc, message)
    (
        "loss-parameter",
        "/v1/losses/cross_entropy",
        {"input": X, "target": [0, 1], "label_smooting": 0.1},
        ["body", "label_smooting"],
        "unknown field 'label_smooting'; did you mean 'label_smoothing'?",
    ),
    (
        "request-option",
        "/v1/losses/mse",
        {"input": [1.0], "target": [1.0], "return_grads": True},
        ["body", "return_grads"],
        "unknown field 'return_grads'; did you mean 'return_grad', 'return_stats'?",
    ),
    (
        "tensor-argument",
        "/v1/losses/mse",
        {"input": [1.0], "targte": [1.0]},
        ["body", "targte"],
        "unknown field 'targte'; did you mean 'target'?",
    ),
    (
        "nested-options",
        "/v1/losses/linear_cross_entropy",
        {"input": X, "linear_weight": X, "target": [0, 1], "options": {"chunking_metod": "auto"}},
        ["body", "options", "chunking_metod"],
        "unknown field 'chunking_metod'; did you mean 'chunking_method'?",
    ),
    (
        "nothing-close",
        "/v1/losses/focal",
        {"input": X, "target": [0, 1], "xyzzy": 2},
        ["body", "xyzzy"],
        "unknown field 'xyzzy' (not an argument or parameter of this loss)",
    ),
    (
        "evaluate-top-level",
        "/v1/evaluate",
        {"tensors": {"input": X, "target": [0, 1]}, "losses": [{"name": "mse"}], "return_stat": True},
        ["body", "return_stat"],
        "unknown field 'return_stat'; did you mean 'return_stats', 'return_grad'?",
    ),
    (
        "session-entry",
        "/v1/sessions",
        {"losses": [{"name": "cross_entropy", "ignore_indx": 1}]},
        ["body", "losses", 0, "ignore_indx"],
        "unknown field 'ignore_indx'; did you mean 'ignore_index'?",
    ),
    (
        "session-top-level",
        "/v1/sessions",
        {"losses": [{"name": "mse"}], "ttl": 60},
        ["body", "ttl"],
        "unknown field 'ttl'; did you mean 'ttl_s'?",
    ),
]


@pytest.mark.parametrize(("path", "body", "loc", "message"), [pytest.param(*u[1:], id=u[0]) for u in UNKNOWN])
def test_unknown_fields_suggest_close_names(
    client: TestClient, path: str, body: dict[str, Any], loc: list[Any], message: str
) -> None:
    assert _problem(client.post(path, json=body), loc) == message
    _still_works(client)


def test_unknown_field_in_an_evaluate_entry(client: TestClient) -> None:
    x, t = torch.tensor(X), torch.tensor([0, 1])
    body = {
        "tensors": {"input": X, "target": [0, 1]},
        "losses": [{"name": "cross_entropy", "label_smoothin": 0.2}, {"name": "cross_entropy", "label_smoothing": 0.2}],
    }
    first, second = client.post("/v1/evaluate", json=body).json()["results"]
    assert first["errors"] == [
        {
            "loc": ["body", "losses", 0, "label_smoothin"],
            "msg": "unknown field 'label_smoothin'; did you mean 'label_smoothing'?",
        }
    ]
    assert second["status"] == 200
    wire.assert_same(second["loss"], F.cross_entropy(x, t, label_smoothing=0.2))


def test_an_unknown_fields_name_is_quoted_short(client: TestClient) -> None:
    name = "label_smoothing" + "x" * 10_000
    response = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 1], name: 0.1})
    message = _problem(response, ["body", name])
    assert message.endswith("... (10015 characters) (not an argument or parameter of this loss)")
    assert len(message) < 200
    _still_works(client)


# --- floats past their dtype's range ------------------------------------------------------------------------------


def _overflows(value: float, dtype: torch.dtype) -> bool:
    """torch's own conversion of a finite float64 makes it infinite."""
    return bool(torch.tensor(value, dtype=torch.float64).to(dtype).isinf())


def _place(loc: Sequence[Any]) -> str:
    """`loc` as a message leads with it: `input.data[1]`, `target[0][1]`, `input` (written out here, not taken from
    the service)."""
    head, *rest = loc
    return str(head) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _overflow_msg(value: Any, loc: Sequence[Any], dtype: torch.dtype) -> str:
    """The message of `value` at `loc` past `dtype`'s range: `loc` is the error's loc without its `body` (and a
    shared tensor's `tensors`), or in an evaluate entry that renames it, the argument the loss reads it as."""
    largest = torch.finfo(dtype).max
    return f"{_place(loc)}: value {value} exceeds the range of {wire.NAMES[dtype]} (max {largest:.8g})"


FLOATS = [torch.float16, torch.bfloat16, torch.float32]
"""The declared dtypes a JSON number can overflow (float64 holds every finite JSON number)."""


def _near_max(dtype: torch.dtype) -> list[float]:
    """Values about the largest of `dtype`: the largest itself, a quarter step past it (rounds to it), half a step
    past it (rounds to infinity, the tie going to the even), far past it, and negative."""
    largest = torch.finfo(dtype).max
    step = 2.0 ** (math.frexp(largest)[1] - 1) * torch.finfo(dtype).eps  # between the two largest finite values
    return [largest, largest + step / 4, largest + step / 2, largest * 2, -largest * 2]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_flat_data_past_the_dtype_is_refused(client: TestClient, dtype: torch.dtype) -> None:
    """Each value near the dtype's largest: refused exactly where torch's conversion gives infinity, else the loss
    is torch's of the converted values."""
    for value in [*_near_max(dtype), 70000.0, 1e39]:
        body = {"input": {"data": [1.0, value], "dtype": wire.NAMES[dtype]}, "target": [1.0, 2.0]}
        response = client.post("/v1/losses/l1", json=body)
        if _overflows(value, dtype):
            loc = ["body", "input", "data", 1]
            message = _problem(response, loc, "invalid-tensor")
            assert message == _overflow_msg(float(value), loc[1:], dtype)
        else:
            assert response.status_code == 200, response.text
            x = torch.tensor([1.0, value], dtype=torch.float64).to(dtype)
            wire.assert_same(response.json()["loss"], F.l1_loss(x, torch.tensor([1.0, 2.0]).to(dtype)))
    _still_works(client)


def test_float16_examples(client: TestClient) -> None:
    for value, refused in ((65504, False), (65519, False), (65520, True), (70000, True), (-70000, True)):
        assert _overflows(value, torch.float16) == refused
        body = {"input": {"data": [value, 0.0], "shape": [2], "dtype": "float16"}, "target": [0.0, 0.0]}
        response = client.post("/v1/losses/l1", json=body)
        if refused:
            message = _problem(response, ["body", "input", "data", 0], "invalid-tensor")
            assert message == f"input.data[0]: value {float(value)} exceeds the range of float16 (max 65504)"
        else:
            assert response.status_code == 200
            x = torch.tensor([value, 0.0]).to(torch.float16)
            wire.assert_same(response.json()["loss"], F.l1_loss(x, torch.zeros(2, dtype=torch.float16)))
    _still_works(client)


def test_non_finite_values_sent_as_such_stay(client: TestClient) -> None:
    """ "Infinity" is no overflow: it is what was sent."""
    body = {"input": {"data": ["Infinity", 1.0], "dtype": "float16"}, "target": [0.0, 1.0], "reduction": "none"}
    response = client.post("/v1/losses/l1", json=body)
    assert response.status_code == 200, response.text
    x = torch.tensor([torch.inf, 1.0], dtype=torch.float16)
    wire.assert_same(
        response.json()["loss"], F.l1_loss(x, torch.tensor([0.0, 1.0], dtype=torch.float16), reduction="none")
    )


def test_integers_past_a_float_dtype_are_refused(client: TestClient) -> None:
    body = {"input": {"data": [1, 2**40], "dtype": "float16"}, "target": [0.0, 0.0]}
    loc = ["body", "input", "data", 1]
    message = _problem(client.post("/v1/losses/l1", json=body), loc, "invalid-tensor")
    assert message == _overflow_msg(2**40, loc[1:], torch.float16)


def test_base64_bytes_cannot_overflow(client: TestClient) -> None:
    """Raw bytes are the dtype's own values: an infinity in them is one the client wrote."""
    x = torch.tensor([torch.inf, 65504.0], dtype=torch.float16)
    y = torch.zeros(2, dtype=torch.float16)
    response = client.post("/v1/losses/l1", json={"input": wire.b64(x), "target": wire.b64(y), "reduction": "none"})
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], F.l1_loss(x, y, reduction="none"))


def test_overflow_in_evaluate_and_session_batches(client: TestClient) -> None:
    tensors = {"input": {"data": [1.0, 1e39], "dtype": "float32"}, "target": [0.0, 0.0]}
    response = client.post("/v1/evaluate", json={"tensors": tensors, "losses": [{"name": "mse"}]})
    loc = ["body", "tensors", "input", "data", 1]
    message = _problem(response, loc, "invalid-tensor")
    assert message == _overflow_msg(1e39, loc[2:], torch.float32)  # a shared tensor's place is its key's

    created = client.post("/v1/sessions", json={"losses": [{"name": "l1", "reduction": "sum"}]})
    assert created.status_code == 201, created.text
    session = created.json()["id"]
    batch = {"batch_id": "b1", "tensors": {"input": {"data": [3.4e38], "dtype": "bfloat16"}, "target": [0.0]}}
    response = client.post(f"/v1/sessions/{session}/batches", json=batch)
    loc = ["body", "tensors", "input", "data", 0]
    message = _problem(response, loc, "invalid-tensor")
    assert message.endswith(_overflow_msg(3.4e38, loc[2:], torch.bfloat16))
    batch = {"batch_id": "b1", "tensors": {"input": {"data": [3.3e38], "dtype": "bfloat16"}, "target": [0.0]}}
    response = client.post(f"/v1/sessions/{session}/batches", json=batch)
    assert response.status_code == 200, response.text
    x = torch.tensor([3.3e38]).to(torch.bfloat16)
    expected = F.l1_loss(x, torch.zeros(1, dtype=torch.bfloat16), reduction="sum")
    assert response.json()["results"][0]["loss"] == float(expected)
    client.delete(f"/v1/sessions/{session}")
    _still_works(client)


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("FP16", torch.float16), ("BF16", torch.bfloat16), ("FP32", torch.float32)]
)
def test_v2_json_data_past_the_datatype(client: TestClient, datatype: str, dtype: torch.dtype) -> None:
    too_large = torch.finfo(dtype).max * 2
    inputs = [
        {"name": "input", "shape": [2], "datatype": datatype, "data": [0.5, too_large]},
        {"name": "target", "shape": [2], "datatype": datatype, "data": [0.0, 0.0]},
    ]
    response = client.post("/v2/models/l1/infer", json={"inputs": inputs})
    assert response.status_code == 400
    assert response.json() == {"error": _overflow_msg(too_large, ["input", "data", 1], dtype)}
    inputs[0]["data"] = [0.5, 1.5]
    response = client.post("/v2/models/l1/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    x, y = torch.tensor([0.5, 1.5]).to(dtype), torch.zeros(2, dtype=dtype)
    wire.assert_same(response.json()["outputs"][0]["data"][0], F.l1_loss(x, y))


# --- untyped numbers past the dtype they take ---------------------------------------------------------------------

DEFAULT_NOTE = ", the default dtype of untyped numbers"


def _inherited(name: str, source: str = "input") -> str:
    return f", the dtype `{name}` takes from `{source}`"


def test_untyped_examples(client: TestClient) -> None:
    """A number sent without a dtype never silently becomes infinite in the dtype lossd reads it as: float32 by
    default, or the dtype of the floating argument that declares one."""
    response = client.post("/v1/losses/mse", json={"input": [1e39], "target": [0.0]})
    message = _problem(response, ["body", "input", 0], "invalid-tensor")
    assert message == "input[0]: value 1e+39 exceeds the range of float32 (max 3.4028235e+38)" + DEFAULT_NOTE
    body = {"input": {"data": [1.0], "dtype": "float16"}, "target": [70000]}
    message = _problem(client.post("/v1/losses/mse", json=body), ["body", "target", 0], "invalid-tensor")
    assert (
        message
        == "target[0]: value 70000 exceeds the range of float16 (max 65504), the dtype `target` takes from `input`"
    )
    body = {"input": {"data": [1.0, 2.0], "dtype": "float16"}, "target": [1, 2**40]}  # integers, shown as sent
    loc = ["body", "target", 1]
    message = _problem(client.post("/v1/losses/mse", json=body), loc, "invalid-tensor")
    assert message == _overflow_msg(2**40, loc[1:], torch.float16) + _inherited("target")
    _still_works(client)


@pytest.mark.parametrize("form", ["nested", "flat"])
def test_untyped_numbers_past_the_default_float32(client: TestClient, form: str) -> None:
    """Each value near float32's largest, without a dtype anywhere: refused exactly where torch's conversion gives
    infinity, else the loss is torch's of the converted values."""
    for value in [*_near_max(torch.float32), 1e39, -1e39, 1e300]:
        sent: Any = [1.0, value] if form == "nested" else {"data": [1.0, value], "shape": [2]}
        response = client.post("/v1/losses/l1", json={"input": sent, "target": [1.0, 2.0]})
        if _overflows(value, torch.float32):
            loc = ["body", "input", 1] if form == "nested" else ["body", "input", "data", 1]
            message = _problem(response, loc, "invalid-tensor")
            assert message == _overflow_msg(float(value), loc[1:], torch.float32) + DEFAULT_NOTE
        else:
            assert response.status_code == 200, response.text
            x = torch.tensor([1.0, value], dtype=torch.float64).to(torch.float32)
            wire.assert_same(response.json()["loss"], F.l1_loss(x, torch.tensor([1.0, 2.0])))
    _still_works(client)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_untyped_numbers_past_an_inherited_dtype(client: TestClient, dtype: torch.dtype) -> None:
    """An untyped `target` takes the dtype `input` declares, and may not overflow it."""
    for value in [*_near_max(dtype), 70000.0, 1e39]:
        body = {"input": {"data": [1.0, 2.0], "dtype": wire.NAMES[dtype]}, "target": [[1.0, value]]}
        response = client.post("/v1/losses/l1", json=body)
        if _overflows(value, dtype):
            loc = ["body", "target", 0, 1]
            message = _problem(response, loc, "invalid-tensor")
            assert message == _overflow_msg(float(value), loc[1:], dtype) + _inherited("target")
        else:
            assert response.status_code == 200, response.text
            x = torch.tensor([1.0, 2.0]).to(dtype)
            y = torch.tensor([[1.0, value]], dtype=torch.float64).to(dtype)
            wire.assert_same(response.json()["loss"], F.l1_loss(x, y))
    _still_works(client)


EDGES = [
    pytest.param("mse", {"data": [65504.0, 1.0], "dtype": "float16"}, [65519, 3], torch.float16, id="mse-float16"),
    pytest.param("l1", {"data": [60000.0, 1.0], "dtype": "float16"}, [65519, 3], torch.float16, id="l1-float16"),
    pytest.param("mse", [3.4e38, 1.0], [3.4e38, 3.0], torch.float32, id="mse-float32"),
    pytest.param("l1", [3.4e38, 1.0], [1e38, 3.0], torch.float32, id="l1-float32"),
]


@pytest.mark.parametrize(("name", "x", "y", "dtype"), EDGES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_untyped_edges_in_range_are_torchs(
    client: TestClient, name: str, x: Any, y: list[float], dtype: torch.dtype, reduction: str
) -> None:
    """65519 rounds to float16's 65504 (inherited from `input`), 3.4e38 to a finite float32 (the default): both
    accepted, and the loss is torch's of the values converted as torch converts them."""
    numbers = x["data"] if isinstance(x, dict) else x
    response = client.post(f"/v1/losses/{name}", json={"input": x, "target": y, "reduction": reduction})
    assert response.status_code == 200, response.text
    assert response.json()["dtype"] == wire.NAMES[dtype]
    fn = F.mse_loss if name == "mse" else F.l1_loss
    expected = fn(torch.tensor(numbers).to(dtype), torch.tensor(y).to(dtype), reduction=reduction)
    assert torch.isfinite(expected).all()
    wire.assert_same(response.json()["loss"], expected)


def test_untyped_forms_name_the_element(client: TestClient) -> None:
    """Where the number is: a flat `data` array by its flat index, nested arrays by their indices, a lone number
    by its field; class probabilities (untyped numbers of `input`'s shape) take `input`'s dtype too."""
    half = {"data": [1.0, 2.0, 3.0, 4.0], "shape": [2, 2], "dtype": "float16"}
    cases = [
        ("mse", {"input": half, "target": {"data": [0, 0, 0, 1e5], "shape": [2, 2]}}, ["target", "data", 3]),
        ("mse", {"input": half, "target": [[0, 0], [1e5, 0]]}, ["target", 1, 0]),
        ("mse", {"input": 1e39, "target": 0.0}, ["input"]),
        ("cross_entropy", {"input": {**half, "shape": [1, 4]}, "target": [[0.5, 1e5, 0.0, 0.0]]}, ["target", 0, 1]),
    ]
    for name, body, loc in cases:
        dtype = torch.float32 if loc == ["input"] else torch.float16
        message = _problem(client.post(f"/v1/losses/{name}", json=body), ["body", *loc], "invalid-tensor")
        value = 1e39 if dtype == torch.float32 else 1e5
        note = DEFAULT_NOTE if dtype == torch.float32 else _inherited("target")
        assert message == _overflow_msg(value, loc, dtype) + note
    # integers cannot overflow float32 (int64's largest is far below its range): read as torch reads them
    response = client.post("/v1/losses/l1", json={"input": [2**62, 1], "target": [0, 0]})
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], F.l1_loss(torch.tensor([2**62, 1]).float(), torch.zeros(2)))
    _still_works(client)


def test_untyped_non_finite_tokens_stay_and_do_not_hide_an_overflow(client: TestClient) -> None:
    """ "Infinity" and "NaN" sent as such are what was sent; a number that overflows next to them is still found."""
    body = {"input": ["NaN", "Infinity", "-Infinity", 1e39], "target": [0.0, 0.0, 0.0, 0.0]}
    loc = ["body", "input", 3]
    message = _problem(client.post("/v1/losses/l1", json=body), loc, "invalid-tensor")
    assert message == _overflow_msg(1e39, loc[1:], torch.float32) + DEFAULT_NOTE
    body = {"input": ["NaN", "Infinity", "-Infinity", 3.4e38], "target": [0.0, 0.0, 0.0, 0.0], "reduction": "none"}
    response = client.post("/v1/losses/l1", json=body)
    assert response.status_code == 200, response.text
    x = torch.tensor([math.nan, math.inf, -math.inf, 3.4e38], dtype=torch.float64).float()
    wire.assert_same(response.json()["loss"], F.l1_loss(x, torch.zeros(4), reduction="none"))
    response = client.post("/v1/losses/mse", json={"input": [], "target": {"data": [], "shape": [0]}})
    assert response.status_code == 200, response.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns of the mean of no elements
        wire.assert_same(response.json()["loss"], F.mse_loss(torch.empty(0), torch.empty(0)))


def test_untyped_overflow_in_evaluate_and_session_batches(client: TestClient) -> None:
    """/v1/evaluate: the entry whose dtype the number overflows answers the problem, at the shared tensor's key;
    an entry reading it in another dtype computes. A session batch is refused whole, and the next one works."""
    tensors = {"x": {"data": [1.0, 2.0], "dtype": "float16"}, "y": [70000.0, 1.0], "z": [1.0, 2.0]}
    losses = [
        {"name": "mse", "tensors": {"input": "x", "target": "y"}},
        {"name": "mse", "tensors": {"input": "z", "target": "y"}},
    ]
    response = client.post("/v1/evaluate", json={"tensors": tensors, "losses": losses})
    assert response.status_code == 200, response.text
    refused, computed = response.json()["results"]
    assert refused["status"] == 422, refused
    assert refused["type"] == "/problems/invalid-tensor", refused
    # the message names the element as the loss reads it (its argument `target`, as the note and the loss's other
    # checks do: "class index 5 at target[0]"), the loc the shared tensor it is in
    message = _overflow_msg(70000.0, ["target", 0], torch.float16) + _inherited("target")
    assert refused["errors"] == [{"loc": ["body", "tensors", "y", 0], "msg": message}]
    assert computed["status"] == 200, computed
    wire.assert_same(computed["loss"], F.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([70000.0, 1.0])))

    created = client.post("/v1/sessions", json={"losses": [{"name": "l1", "reduction": "sum"}]})
    assert created.status_code == 201, created.text
    session = created.json()["id"]
    batch = {"batch_id": "b1", "tensors": {"input": {"data": [1.0], "dtype": "bfloat16"}, "target": [1e39]}}
    response = client.post(f"/v1/sessions/{session}/batches", json=batch)
    loc = ["body", "tensors", "target", 0]
    message = _problem(response, loc, "invalid-tensor")
    assert message == _overflow_msg(1e39, loc[2:], torch.bfloat16) + _inherited("target")
    batch = {"batch_id": "b1", "tensors": {"input": [[3.4e38]], "target": [[1e38]]}}
    response = client.post(f"/v1/sessions/{session}/batches", json=batch)
    assert response.status_code == 200, response.text
    expected = F.l1_loss(torch.tensor([[3.4e38]]), torch.tensor([[1e38]]), reduction="sum")
    assert response.json()["results"][0]["loss"] == float(expected)
    batch = {"batch_id": "b2", "tensors": {"input": [[3.5e38]], "target": [[1e38]]}}
    response = client.post(f"/v1/sessions/{session}/batches", json=batch)
    message = _problem(response, ["body", "tensors", "input", 0, 0], "invalid-tensor")
    assert message.endswith(
        "input[0][0]: value 3.5e+38 exceeds the range of float32 (max 3.4028235e+38)" + DEFAULT_NOTE
    )
    client.delete(f"/v1/sessions/{session}")
    _still_works(client)


@pytest.mark.parametrize("form", ["nested", "flat"])
def test_an_untyped_number_past_float32_is_found_among_many(form: str) -> None:
    """One value past float32 among a million untyped numbers is found and located; at float32's largest, the
    tensor is torch's conversion of the numbers."""
    spec = REGISTRY.get("mse")
    values = np.linspace(-1.0, 1.0, 1_000_000)
    values[876_543] = 1e39

    def prepare() -> dict[str, Tensor]:
        sent = values.tolist() if form == "nested" else {"data": values.tolist()}
        raw = {"input": codec.decode_tensor(sent, "input"), "target": codec.decode_tensor([0.0], "target")}
        return compute.prepare(spec, raw)

    with pytest.raises(InvalidTensor) as info:
        prepare()
    loc = ("input", 876_543) if form == "nested" else ("input", "data", 876_543)
    assert info.value.errors[0].loc == loc
    assert info.value.detail == _overflow_msg(1e39, loc, torch.float32) + DEFAULT_NOTE
    values[876_543] = torch.finfo(torch.float32).max
    assert torch.equal(prepare()["input"], torch.from_numpy(values).to(torch.float32))


def test_only_narrowing_conversions_are_checked() -> None:
    """The check costs a pass over the data only where the conversion can overflow."""
    narrowing = {
        (torch.float64, torch.float32),
        (torch.float64, torch.float16),
        (torch.float64, torch.bfloat16),
        (torch.int64, torch.float16),
    }
    sources = [torch.float64, torch.int64, torch.bool]
    targets = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64]
    for source, target in itertools.product(sources, targets):
        assert compute.narrows(source, target) == ((source, target) in narrowing), (source, target)


# --- gRPC ---------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def grpc_stub(make_client: Callable[..., TestClient]) -> Iterator[Any]:
    """A stub of the gRPC server an in-process app serves (on the test client's event loop)."""
    port = _free_port()
    make_client(grpc_port=port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _grpc_request(model: str, x: Tensor, t: Tensor, **parameters: Any) -> Any:
    message = pb.ModelInferRequest(model_name=model)
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        else:
            message.parameters[key].double_param = value
    item = message.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    item.contents.fp32_contents.extend(x.reshape(-1).tolist())
    item = message.inputs.add(name="target", datatype="INT64", shape=list(t.shape))
    item.contents.int64_contents.extend(t.tolist())
    return message


def test_grpc_parameters(grpc_stub: Any) -> None:
    x, t = torch.tensor(X), torch.tensor([0, 1])
    for parameters, message in (
        ({"reduce": False}, f"reduce: {_legacy_msg('none')}"),
        ({"size_average": False, "reduce": True}, f"size_average: {_legacy_msg('sum')}"),
        ({"label_smooting": 0.1}, "unknown field 'label_smooting'; did you mean 'label_smoothing'?"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            grpc_stub.ModelInfer(_grpc_request("cross_entropy", x, t, **parameters))
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details(), error.details()
    response = grpc_stub.ModelInfer(_grpc_request("cross_entropy", x, t, label_smoothing=0.1))
    loss = torch.frombuffer(bytearray(response.raw_output_contents[0]), dtype=torch.float32)
    assert torch.equal(loss.reshape(()), F.cross_entropy(x, t, label_smoothing=0.1))


INT_BODIES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"input": [[1.0, 2.0]], "target": [0]},
    "nll": {"input": [[-1.0, -2.0]], "target": [1]},
    "ctc": {
        "log_probs": [[[-1.2, -0.9, -1.2]], [[-0.7, -1.5, -1.2]], [[-1.0, -1.0, -1.3]]],
        "targets": [[1, 2]],
        "input_lengths": [3],
        "target_lengths": [2],
    },
}


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [("cross_entropy", "ignore_index", 2**63), ("nll", "ignore_index", -(2**63) - 1), ("ctc", "blank", 2**70)],
)
def test_an_integer_parameter_beyond_int64_is_named(client: TestClient, name: str, field: str, value: int) -> None:
    """torch takes integer parameters as int64: past it, its argument parser refuses the call without naming the
    parameter; lossd names it. int64's own extremes are torch's to judge (as `ignore_index` they are accepted)."""
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):  # what torch itself does with such a value
        F.cross_entropy(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), ignore_index=value)
    message = _problem(client.post(f"/v1/losses/{name}", json={**INT_BODIES[name], field: value}), ["body", field])
    if value == 2**63:  # read as an integer (it fits 64 unsigned bits)
        assert message == f"Value error, {value} does not fit in 64 bits (torch takes integer parameters as int64)"
    else:  # the JSON parser reads an integer beyond 64 bits as a float: not an integer
        assert message == "Input should be a valid integer"
    _still_works(client)
    if field == "ignore_index":
        extreme = 2**63 - 1 if value > 0 else -(2**63)
        response = client.post(f"/v1/losses/{name}", json={**INT_BODIES[name], field: extreme})
        assert response.status_code == 200, response.text
        fn = {"cross_entropy": F.cross_entropy, "nll": F.nll_loss}[name]
        x, t = torch.tensor(INT_BODIES[name]["input"]), torch.tensor(INT_BODIES[name]["target"])
        wire.assert_same(response.json()["loss"], fn(x, t, ignore_index=extreme))


# --- integers at the edge of int64 --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, 2**63 + 1000, -(2**63) - 2048, 2**64 + 5])
def test_typed_integers_just_past_int64_are_refused(client: TestClient, value: int) -> None:
    """Next to a float, or past int64, JSON integers are read as float64, where 2^63 - 1 rounds up to 2^63: a
    value from 2^63 on must be refused, not wrap to -2^63 (which `ignore_index` would then silently ignore)."""
    body = {
        "input": X,
        "target": {"data": [0, value], "dtype": "int64"},
        "ignore_index": -(2**63),
        "reduction": "none",
    }
    message = _problem(
        client.post("/v1/losses/cross_entropy", json=body), ["body", "target", "data", 1], "invalid-tensor"
    )
    read = float(value)
    assert message == f"target.data[1]: value {read} does not fit int64 (integers {-(2**63)} to {2**63 - 1})"
    inputs = [
        {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": X},
        {"name": "target", "shape": [2], "datatype": "INT64", "data": [0, value]},
    ]
    response = client.post("/v2/models/cross_entropy/infer", json={"inputs": inputs})
    assert response.status_code == 400
    assert response.json() == {"error": message}
    _still_works(client)


def test_int64_extremes_are_torchs_to_judge(client: TestClient) -> None:
    """int64's own largest and smallest are read exactly; as class indices torch's range check refuses them."""
    for value in (2**63 - 1, -(2**63)):
        body = {"input": X, "target": {"data": [0, value], "dtype": "int64"}}
        message = _problem(
            client.post("/v1/losses/cross_entropy", json=body), ["body", "target", 1], "value-out-of-range"
        )
        assert f"class index {value} at target[1] is out of range" in message


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ([0, 2**63], "which must fit int64; got 9.223372036854776e+18"),
        ([0.0, 1e16], "and a number read as a float is an exact integer only up to 2^53; got 1e+16"),
        ([0.0, 1.5], "which must be integers; got 1.5"),
    ],
    ids=["past-int64", "past-2^53", "fraction"],
)
def test_untyped_class_indices_say_what_is_wrong(client: TestClient, target: list[Any], why: str) -> None:
    response = client.post("/v1/losses/cross_entropy", json={"input": X, "target": target})
    message = _problem(response, ["body", "target", 1], "wrong-dtype")
    assert message == f"target holds class indices, {why} at target[1]"
    _still_works(client)
