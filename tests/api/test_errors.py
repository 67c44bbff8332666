"""Every class of bad input gets its own RFC 9457 problem: status, type and the exact `loc`.

After each, the same client makes a valid request, which must still be answered correctly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from tests import wire

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]

CASES: list[tuple[str, str, dict[str, Any], int, str, list[Any]]] = [
    # (id, loss, body, status, problem type, loc)
    (
        "shape-mismatch",
        "mse",
        {"input": [1.0, 2.0, 3.0], "target": [1.0, 2.0]},
        422,
        "shape-mismatch",
        ["body", "target"],
    ),
    ("target-shape", "cross_entropy", {"input": X, "target": [0, 1, 2]}, 422, "shape-mismatch", ["body", "target"]),
    (
        "weight-length",
        "cross_entropy",
        {"input": X, "target": [0, 1], "weight": [1.0, 2.0]},
        422,
        "shape-mismatch",
        ["body", "weight"],
    ),
    (
        "mse-weight-shape",
        "mse",
        {"input": [1.0, 2.0], "target": [1.0, 2.0], "weight": [1.0]},
        422,
        "shape-mismatch",
        ["body", "weight"],
    ),
    (
        "alpha-length",
        "focal",
        {"input": X, "target": [0, 1], "alpha": [0.5, 0.5]},
        422,
        "shape-mismatch",
        ["body", "alpha"],
    ),
    (
        "class-index-high",
        "cross_entropy",
        {"input": X, "target": [0, 3]},
        422,
        "value-out-of-range",
        ["body", "target", 1],
    ),
    (
        "class-index-negative",
        "focal",
        {"input": X, "target": [-1, 0]},
        422,
        "value-out-of-range",
        ["body", "target", 0],
    ),
    (
        "class-index-spatial",
        "cross_entropy",
        {"input": [[[1.0, 2.0], [3.0, 4.0]]], "target": [[1, 7]]},
        422,
        "value-out-of-range",
        ["body", "target", 0, 1],
    ),
    ("fractional-index", "cross_entropy", {"input": X, "target": [0, 1.5]}, 422, "wrong-dtype", ["body", "target", 1]),
    (
        "float-dtype-index",
        "focal",
        {"input": X, "target": {"data": [0, 1], "dtype": "float32"}},
        422,
        "wrong-dtype",
        ["body", "target"],
    ),
    (
        "int-dtype-input",
        "mse",
        {"input": {"data": [1, 2], "dtype": "int64"}, "target": [1.0, 2.0]},
        422,
        "wrong-dtype",
        ["body", "input"],
    ),
    (
        "negative-beta",
        "smooth_l1",
        {"input": [1.0], "target": [2.0], "beta": -0.5},
        422,
        "invalid-request",
        ["body", "beta"],
    ),
    (
        "smoothing-above-1",
        "cross_entropy",
        {"input": X, "target": [0, 1], "label_smoothing": 1.5},
        422,
        "invalid-request",
        ["body", "label_smoothing"],
    ),
    (
        "smoothing-negative",
        "cross_entropy",
        {"input": X, "target": [0, 1], "label_smoothing": -0.1},
        422,
        "invalid-request",
        ["body", "label_smoothing"],
    ),
    ("negative-gamma", "focal", {"input": X, "target": [0, 1], "gamma": -1}, 422, "invalid-request", ["body", "gamma"]),
    ("unknown-field", "focal", {"input": X, "target": [0, 1], "gama": 2}, 422, "invalid-request", ["body", "gama"]),
    ("missing-tensor", "mse", {"input": [1.0]}, 422, "invalid-request", ["body", "target"]),
    (
        "bad-reduction",
        "mse",
        {"input": [1.0], "target": [1.0], "reduction": "avg"},
        422,
        "invalid-request",
        ["body", "reduction"],
    ),
    (
        "bad-return-grad",
        "cross_entropy",
        {"input": X, "target": [0, 1], "return_grad": ["target"]},
        422,
        "invalid-request",
        ["body", "return_grad", 0],
    ),
    (
        "grad-of-absent",
        "mse",
        {"input": [1.0], "target": [1.0], "return_grad": ["input", "weight"]},
        422,
        "invalid-request",
        ["body", "return_grad", 1],
    ),
    (
        "ragged",
        "mse",
        {"input": [[1.0, 2.0], [3.0]], "target": [1.0, 2.0]},
        422,
        "invalid-tensor",
        ["body", "input", 1],
    ),
    ("not-a-number", "mse", {"input": [1.0, "one"], "target": [1.0, 2.0]}, 422, "invalid-tensor", ["body", "input", 1]),
    (
        "bad-base64",
        "mse",
        {"input": {"b64": "%%%", "dtype": "float32"}, "target": [1.0]},
        422,
        "invalid-tensor",
        ["body", "input", "b64"],
    ),
    (
        "data-shape-mismatch",
        "mse",
        {"input": {"data": [1.0, 2.0, 3.0], "shape": [2]}, "target": [1.0]},
        422,
        "invalid-tensor",
        ["body", "input", "shape"],
    ),
    (
        "torch-rejects-mixed-dtypes",
        "cross_entropy",
        {
            "input": wire.flat(torch.tensor(X, dtype=torch.float64)),
            "target": [0, 1],
            "weight": wire.flat(torch.ones(3)),
        },
        422,
        "rejected-by-torch",
        ["body"],
    ),
]


def _assert_problem(response: Any, status: int, slug: str, loc: list[Any]) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"/problems/{slug}"
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert loc in [e["loc"] for e in problem["errors"]], problem
    return problem


def _still_works(client: TestClient) -> None:
    response = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 2]})
    assert response.status_code == 200
    expected = F.cross_entropy(torch.tensor(X), torch.tensor([0, 2]))
    wire.assert_same(response.json()["loss"], expected)


@pytest.mark.parametrize(("loss", "body", "status", "slug", "loc"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_a_problem(
    client: TestClient, loss: str, body: dict[str, Any], status: int, slug: str, loc: list[Any]
) -> None:
    _assert_problem(client.post(f"/v1/losses/{loss}", json=body), status, slug, loc)
    _still_works(client)


def test_messages_state_expected_and_received(client: TestClient) -> None:
    problem = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 3]}).json()
    assert "3" in problem["detail"]
    assert "< 3" in problem["detail"]
    problem = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [0, 1], "weight": [1.0]}).json()
    assert "[3]" in problem["detail"]
    assert "[1]" in problem["detail"]


def test_ignore_index_is_not_out_of_range(client: TestClient) -> None:
    response = client.post("/v1/losses/cross_entropy", json={"input": X, "target": [-100, 1]})
    assert response.status_code == 200
    wire.assert_same(response.json()["loss"], F.cross_entropy(torch.tensor(X), torch.tensor([-100, 1])))


def test_malformed_json(client: TestClient) -> None:
    response = client.post("/v1/losses/mse", content=b'{"input": [1.0,', headers={"content-type": "application/json"})
    _assert_problem(response, 400, "malformed-body", ["body"])
    response = client.post("/v1/losses/mse", content=b"[1, 2]", headers={"content-type": "application/json"})
    _assert_problem(response, 400, "malformed-body", ["body"])
    _still_works(client)


def test_nan_literal_is_not_json(client: TestClient) -> None:
    response = client.post(
        "/v1/losses/mse", content=b'{"input": [NaN], "target": [1]}', headers={"content-type": "application/json"}
    )
    _assert_problem(response, 400, "malformed-body", ["body"])


def test_wrong_content_type(client: TestClient) -> None:
    response = client.post(
        "/v1/losses/mse", content=b'{"input": [1.0], "target": [1.0]}', headers={"content-type": "text/plain"}
    )
    _assert_problem(response, 415, "unsupported-media-type", ["header", "content-type"])
    _still_works(client)


def test_unknown_loss_suggests_close_names(client: TestClient) -> None:
    for response in (client.post("/v1/losses/cross_entopy", json={}), client.get("/v1/losses/cross_entopy")):
        problem = _assert_problem(response, 404, "unknown-loss", ["path", "name"])
        assert "cross_entropy" in problem["detail"]


def test_an_unknown_loss_is_quoted_short(client: TestClient) -> None:
    """A 10,000-character name is not echoed whole (twice) into the problem."""
    response = client.post(f"/v1/losses/{'m' * 10000}", json={})
    assert response.status_code == 404
    assert response.json()["detail"].endswith("... (10000 characters)")
    assert len(response.content) < 1000


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    response = client.delete("/v1/losses")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == "GET"
    assert response.json()["errors"] == [{"loc": ["method"], "msg": response.json()["detail"]}]
    assert client.put("/healthz").headers["allow"] == "GET"
    assert client.delete("/v1/losses/mse").headers["allow"] == "GET, POST"  # the catalog entry and the loss
    assert client.get("/v2/models/mse/infer").headers["allow"] == "POST"


def test_a_trailing_slash_is_not_redirected(client: TestClient) -> None:
    """No 307 to a URL made from the Host header: a path that is not a route is a 404 problem."""
    response = client.post("/v1/losses/mse/", json={"input": [1.0], "target": [0.0]}, headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"


def test_problem_types_are_documented(client: TestClient) -> None:
    for slug in {c[4] for c in CASES} | {"malformed-body", "unsupported-media-type", "unknown-loss"}:
        described = client.get(f"/problems/{slug}").json()
        assert described["type"] == f"/problems/{slug}"
        assert described["status"] >= 400
    assert client.get("/problems/nope").status_code == 404
