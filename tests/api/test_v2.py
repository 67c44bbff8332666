"""The Open Inference Protocol in-process: routes, JSON and binary bodies, errors, compression.

Every v2 result is compared with the v1 API (itself checked against torch by the parity suite) and
with torch directly.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from service.losses import REGISTRY
from tests import wire
from tests.cases import randint, randn

X = randn(4, 3, seed=1).float()
T = randint(3, 4)


def _json_input(name: str, t: torch.Tensor, datatype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape), "datatype": datatype, "data": t.reshape(-1).tolist()}


def _binary_request(inputs: list[tuple[str, torch.Tensor, str]], **request: Any) -> tuple[bytes, dict[str, str]]:
    """A request with every input as binary data, framed as tritonclient frames it."""
    blobs = [t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for _, t, _ in inputs]
    request["inputs"] = [
        {"name": n, "shape": list(t.shape), "datatype": d, "parameters": {"binary_data_size": len(b)}}
        for (n, t, d), b in zip(inputs, blobs, strict=True)
    ]
    header = orjson.dumps(request)
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def _outputs(response: Any) -> dict[str, np.ndarray]:
    """Outputs by name from a JSON or binary v2 response."""
    length = response.headers.get("inference-header-content-length")
    body = response.content
    header = orjson.loads(body[: int(length)] if length else body)
    binary, out = body[int(length) :] if length else b"", {}
    dtypes = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64}
    for o in header["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if o["datatype"] == "BF16":
                raw = torch.frombuffer(bytearray(binary[:size]), dtype=torch.bfloat16).float().numpy()
            else:
                raw = np.frombuffer(binary[:size], dtype=dtypes[o["datatype"]])
            out[o["name"]], binary = raw.reshape(o["shape"]), binary[size:]
        else:
            out[o["name"]] = np.array(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
    return out


def test_server_routes(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "lossd"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("spec", list(REGISTRY), ids=lambda s: s.name)
def test_every_loss_is_a_model(client: TestClient, spec: Any) -> None:
    meta = client.get(f"/v2/models/{spec.name}").json()
    assert [i["name"] for i in meta["inputs"]] == [a.name for a in spec.tensors]
    assert [o["name"] for o in meta["outputs"]] == ["loss", *(f"grad_{n}" for n in spec.differentiable)]
    assert meta["versions"] == ["1"]
    assert client.get(f"/v2/models/{spec.name}/versions/1").json() == meta
    assert client.get(f"/v2/models/{spec.name}/ready").json()["ready"] is True
    assert client.get(f"/v2/models/{spec.name}/versions/1/ready").status_code == 200


def test_aliases_and_unknown_models(client: TestClient) -> None:
    assert client.get("/v2/models/CrossEntropyLoss").json()["name"] == "cross_entropy"
    response = client.get("/v2/models/cross_entopy")
    assert response.status_code == 404
    assert "cross_entropy" in response.json()["error"]
    assert client.get("/v2/models/mse/versions/2").status_code == 404
    assert client.post("/v2/models/mse/versions/2/infer", json={"inputs": []}).status_code == 404


def test_json_infer_with_parameters_and_gradient(client: TestClient) -> None:
    request = {
        "id": "42",
        "parameters": {"label_smoothing": 0.1, "reduction": "sum"},
        "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        "outputs": [{"name": "loss"}, {"name": "grad_input"}],
    }
    response = client.post("/v2/models/cross_entropy/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "42"
    assert body["model_name"] == "cross_entropy"
    x = X.clone().requires_grad_(True)
    expected = F.cross_entropy(x, T, label_smoothing=0.1, reduction="sum")
    expected.backward()
    out = _outputs(response)
    assert out["loss"].shape == ()
    wire.assert_same(out["loss"].item(), expected)
    assert x.grad is not None
    wire.assert_same(out["grad_input"].tolist(), x.grad)


def test_binary_in_and_out_equals_v1(client: TestClient) -> None:
    target = randn(4, 3, seed=2).float()
    body, headers = _binary_request(
        [("input", X, "FP32"), ("target", target, "FP32")],
        parameters={"binary_data_output": True, "reduction": "none", "beta": 0.5},
        outputs=[{"name": "loss"}, {"name": "grad_target", "parameters": {"binary_data": False}}],
    )
    response = client.post("/v2/models/smooth_l1/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    out = _outputs(response)
    v1 = client.post(
        "/v1/losses/smooth_l1",
        json={"input": X.tolist(), "target": target.tolist(), "reduction": "none", "beta": 0.5, "return_grad": True},
    ).json()
    np.testing.assert_array_equal(out["loss"], np.array(v1["loss"], dtype=np.float32))
    np.testing.assert_array_equal(out["grad_target"], np.array(v1["grad"]["target"], dtype=np.float32))


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("FP16", torch.float16), ("BF16", torch.bfloat16), ("FP64", torch.float64)]
)
def test_binary_dtypes(client: TestClient, datatype: str, dtype: torch.dtype) -> None:
    x, t = X.to(dtype), randn(4, 3, seed=2).to(dtype)
    body, headers = _binary_request(
        [("input", x, datatype), ("target", t, datatype)], parameters={"binary_data_output": True}
    )
    response = client.post("/v2/models/mse/infer", content=body, headers=headers)
    header = orjson.loads(response.content[: int(response.headers["inference-header-content-length"])])
    assert header["outputs"][0]["datatype"] == datatype
    wire.assert_same(float(_outputs(response)["loss"]), F.mse_loss(x, t))


@pytest.mark.parametrize("datatype", ["INT32", "INT16", "INT8", "UINT8", "BOOL"])
def test_integer_labels_are_converted(client: TestClient, datatype: str) -> None:
    target = torch.tensor([0, 1, 1, 0])
    request = {"inputs": [_json_input("input", X[:, :2], "FP32"), _json_input("target", target, datatype)]}
    if datatype == "BOOL":
        request["inputs"][1]["data"] = [bool(v) for v in target.tolist()]
    response = client.post("/v2/models/cross_entropy/infer", json=request)
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["outputs"][0]["data"][0], F.cross_entropy(X[:, :2], target))


def test_nested_json_data_is_accepted(client: TestClient) -> None:
    request = {
        "inputs": [
            {"name": "input", "shape": [4, 3], "datatype": "FP32", "data": X.tolist()},
            {"name": "target", "shape": [4], "datatype": "INT64", "data": T.tolist()},
        ]
    }
    out = client.post("/v2/models/cross_entropy/infer", json=request).json()["outputs"][0]
    wire.assert_same(out["data"][0], F.cross_entropy(X, T))


ERRORS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "class index",
        {"inputs": [_json_input("input", X, "FP32"), _json_input("target", torch.tensor([0, 1, 2, 3]), "INT64")]},
        400,
        "class index 3 at target[3] is out of range",
    ),
    (
        "unknown input",
        {"inputs": [_json_input("input", X, "FP32"), _json_input("labels", T, "INT64")]},
        400,
        "has no input 'labels'",
    ),
    ("missing input", {"inputs": [_json_input("input", X, "FP32")]}, 400, "needs input 'target'"),
    ("duplicate input", {"inputs": [_json_input("input", X, "FP32")] * 2}, 400, "given twice"),
    (
        "unknown output",
        {
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
            "outputs": [{"name": "grad_target2"}],
        },
        400,
        "has no output 'grad_target2'",
    ),
    (
        "unknown parameter",
        {
            "parameters": {"label_smothing": 0.1},
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        },
        400,
        "label_smothing: unknown field",
    ),
    (
        "an input as a parameter",
        {
            "parameters": {"weight": 2.0},
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        },
        400,
        "weight is an input of model cross_entropy: send it among the inputs, not the parameters",
    ),
    (
        "parameter range",
        {
            "parameters": {"label_smoothing": 2},
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        },
        400,
        "label_smoothing",
    ),
    (
        "float labels",
        {"inputs": [_json_input("input", X, "FP32"), _json_input("target", T.float(), "FP32")]},
        400,
        "class indices of shape [4] must be integers",
    ),
    (
        "data count",
        {
            "inputs": [
                {"name": "input", "shape": [4, 4], "datatype": "FP32", "data": X.reshape(-1).tolist()},
                _json_input("target", T, "INT64"),
            ]
        },
        400,
        "holds 16 elements but data has 12",
    ),
    (
        "datatype",
        {
            "inputs": [
                {"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                _json_input("target", T, "INT64"),
            ]
        },
        400,
        "unsupported datatype 'BYTES'",
    ),
    ("no inputs", {"inputs": []}, 400, "inputs"),
    *(
        (
            f"v1 option {name}",
            {
                "parameters": {name: value},
                "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
            },
            400,
            f"{name} is not a parameter of the inference protocol: {instead}",
        )
        for name, value, instead in [
            ("return_grad", True, "ask for gradients as outputs (grad_<input>)"),
            ("output_encoding", "base64", "each output's binary_data parameter"),
            ("return_stats", True, "a session's batches (sequence_id) accumulate statistics"),
        ]
    ),
    (
        "sequence_id",
        {
            "parameters": {"sequence_id": "abc"},
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        },
        400,
        "sequence_id: this route computes single requests; a session's batches go to POST /v1/sessions/{id}/batches",
    ),
    (
        "binary_data_output not a boolean",
        {
            "parameters": {"binary_data_output": "yes"},
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
        },
        400,
        "binary_data_output must be true or false, got 'yes'",
    ),
    (
        "binary_data not a boolean",
        {
            "inputs": [_json_input("input", X, "FP32"), _json_input("target", T, "INT64")],
            "outputs": [{"name": "loss", "parameters": {"binary_data": 1}}],
        },
        400,
        "binary_data must be true or false, got 1",
    ),
    (
        "binary_data_size not an integer",
        {
            "inputs": [
                {"name": "input", "shape": [4, 3], "datatype": "FP32", "parameters": {"binary_data_size": "48"}},
                _json_input("target", T, "INT64"),
            ]
        },
        400,
        "input: binary_data_size must be a non-negative integer (bytes), got '48'",
    ),
    (
        "data and binary data",
        {
            "inputs": [
                {**_json_input("input", X, "FP32"), "parameters": {"binary_data_size": 0}},
                _json_input("target", T, "INT64"),
            ]
        },
        400,
        "input: give its values in data or as binary data (binary_data_size), not both",
    ),
]


@pytest.mark.parametrize(("request_body", "status", "message"), [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
def test_errors_use_the_protocol_body(
    client: TestClient, request_body: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/v2/models/cross_entropy/infer", json=request_body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_mlservers_parameters_are_passed_over(client: TestClient) -> None:
    """MLServer's codecs send `content_type` (and `headers`) with a request and its inputs: not loss parameters,
    not refused."""
    inputs = [
        {**_json_input("input", X, "FP32"), "parameters": {"content_type": "np"}},
        _json_input("target", T, "INT64"),
    ]
    body = {"parameters": {"content_type": "np", "headers": {"x": "y"}, "label_smoothing": 0.1}, "inputs": inputs}
    response = client.post("/v2/models/cross_entropy/infer", json=body)
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["outputs"][0]["data"][0], F.cross_entropy(X, T, label_smoothing=0.1))


def test_error_wording_equals_v1(client: TestClient) -> None:
    v1 = client.post("/v1/losses/cross_entropy", json={"input": X.tolist(), "target": [0, 1, 2, 3]}).json()
    v2 = client.post("/v2/models/cross_entropy/infer", json={"inputs": ERRORS[0][1]["inputs"]}).json()
    assert v2["error"] == v1["detail"]


def test_binary_framing_errors(client: TestClient) -> None:
    body, headers = _binary_request([("input", X, "FP32"), ("target", T, "INT64")])
    for bad in ({"Inference-Header-Content-Length": str(len(body) + 1)}, {"Inference-Header-Content-Length": "x"}):
        assert client.post("/v2/models/cross_entropy/infer", content=body, headers=bad).status_code == 400
    extra = client.post("/v2/models/cross_entropy/infer", content=body + b"\0\0\0\0", headers=headers)
    assert extra.status_code == 400
    assert "belong to no input" in extra.json()["error"]
    short = client.post("/v2/models/cross_entropy/infer", content=body[:-4], headers=headers)
    assert short.status_code == 400
    assert "binary_data_size" in short.json()["error"]


def test_compressed_requests_and_responses(client: TestClient) -> None:
    big = randn(64, 32, seed=3).float()
    request = orjson.dumps(
        {
            "parameters": {"reduction": "none"},
            "inputs": [_json_input("input", big, "FP32"), _json_input("target", torch.zeros_like(big), "FP32")],
        }
    )
    expected = F.mse_loss(big, torch.zeros_like(big), reduction="none").numpy()
    for encoding, packed in (("gzip", gzip.compress(request)), ("deflate", zlib.compress(request))):
        response = client.post(
            "/v2/models/mse/infer",
            content=packed,
            headers={"Content-Encoding": encoding, "Accept-Encoding": encoding, "content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-encoding"] == encoding  # httpx decoded it for us
        np.testing.assert_array_equal(_outputs(response)["loss"], expected)


def test_decompression_is_bounded(client: TestClient, app: Any) -> None:
    limit = app.state.lossd.settings.max_body_bytes
    bomb = gzip.compress(b" " * (limit + 1))
    response = client.post("/v2/models/mse/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    bad = client.post("/v2/models/mse/infer", content=b"x", headers={"Content-Encoding": "br"})
    assert bad.status_code == 415
    broken = client.post("/v2/models/mse/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400
