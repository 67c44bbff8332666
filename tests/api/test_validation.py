"""One invalid-input test per validation rule of the catalog: each a 422 problem naming the argument
(and, for elementwise rules, the first offending index), each caught before torch runs."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
LP = [[[-1.0, -2.0, -0.5]] * 2] * 4  # log_probs (T=4, N=2, C=3)
CTC = {"log_probs": LP, "targets": [[1, 2], [2, 1]], "input_lengths": [4, 4], "target_lengths": [2, 2]}
TRIPLET = {"anchor": X, "positive": X, "negative": X}
PAIR = {"input1": [1.0, 2.0], "input2": [0.5, 3.0]}

RULES: list[tuple[str, str, dict[str, Any], str, list[Any]]] = [
    # (rule, loss, body, problem type, loc)
    ("nll index >= C", "nll", {"input": X, "target": [0, 3]}, "value-out-of-range", ["body", "target", 1]),
    ("nll ignore_index passes", "nll", {"input": X, "target": [0, 3], "ignore_index": 3}, "", []),
    ("nll weight length", "nll", {"input": X, "target": [0, 1], "weight": [1.0]}, "shape-mismatch", ["body", "weight"]),
    (
        "multi_margin index",
        "multi_margin",
        {"input": X, "target": [-1, 0]},
        "value-out-of-range",
        ["body", "target", 0],
    ),
    ("multi_margin p", "multi_margin", {"input": X, "target": [0, 1], "p": 3}, "invalid-request", ["body", "p"]),
    (
        "multi_margin weight",
        "multi_margin",
        {"input": X, "target": [0, 1], "weight": [1.0, 1.0]},
        "shape-mismatch",
        ["body", "weight"],
    ),
    (
        "multilabel_margin index before padding",
        "multilabel_margin",
        {"input": X, "target": [[0, -1, 7], [1, 5, -1]]},
        "value-out-of-range",
        ["body", "target", 1, 1],
    ),
    (
        "multilabel_margin shape",
        "multilabel_margin",
        {"input": X, "target": [[0, -1], [1, -1]]},
        "shape-mismatch",
        ["body", "target"],
    ),
    (
        "bce input above 1",
        "binary_cross_entropy",
        {"input": [0.5, 1.5], "target": [0.0, 1.0]},
        "value-out-of-range",
        ["body", "input", 1],
    ),
    (
        "bce input NaN",
        "binary_cross_entropy",
        {"input": ["NaN", 0.5], "target": [0.0, 1.0]},
        "value-out-of-range",
        ["body", "input", 0],
    ),
    (
        "bce target below 0",
        "binary_cross_entropy",
        {"input": [0.5, 0.5], "target": [-0.1, 1.0]},
        "value-out-of-range",
        ["body", "target", 0],
    ),
    (
        "bce target shape",
        "binary_cross_entropy",
        {"input": [0.5, 0.5], "target": [1.0]},
        "shape-mismatch",
        ["body", "target"],
    ),
    (
        "bce weight not broadcastable",
        "binary_cross_entropy",
        {"input": [[0.5, 0.5]], "target": [[1.0, 0.0]], "weight": [1.0, 2.0, 3.0]},
        "shape-mismatch",
        ["body", "weight"],
    ),
    (
        "bce_with_logits pos_weight length",
        "binary_cross_entropy_with_logits",
        {"input": X, "target": X, "pos_weight": [1.0, 2.0]},
        "shape-mismatch",
        ["body", "pos_weight"],
    ),
    (
        "margin_ranking target",
        "margin_ranking",
        PAIR | {"target": [1.0, 0.0]},
        "value-out-of-range",
        ["body", "target", 1],
    ),
    ("margin_ranking dims", "margin_ranking", PAIR | {"target": [[1.0, 1.0]]}, "shape-mismatch", ["body", "target"]),
    (
        "hinge_embedding target",
        "hinge_embedding",
        {"input": [1.0, 2.0], "target": [2.0, 1.0]},
        "value-out-of-range",
        ["body", "target", 0],
    ),
    (
        "soft_margin target",
        "soft_margin",
        {"input": [1.0, 2.0], "target": [1.0, 0.5]},
        "value-out-of-range",
        ["body", "target", 1],
    ),
    (
        "cosine target",
        "cosine_embedding",
        {"input1": X, "input2": X, "target": [1.0, 0.0]},
        "value-out-of-range",
        ["body", "target", 1],
    ),
    (
        "cosine target shape",
        "cosine_embedding",
        {"input1": X, "input2": X, "target": [1.0]},
        "shape-mismatch",
        ["body", "target"],
    ),
    (
        "cosine margin",
        "cosine_embedding",
        {"input1": X, "input2": X, "target": [1.0, -1.0], "margin": 1.5},
        "invalid-request",
        ["body", "margin"],
    ),
    (
        "ctc input_lengths > T",
        "ctc",
        CTC | {"input_lengths": [5, 4]},
        "value-out-of-range",
        ["body", "input_lengths", 0],
    ),
    (
        "ctc negative input_lengths",
        "ctc",
        CTC | {"input_lengths": [4, -1]},
        "value-out-of-range",
        ["body", "input_lengths", 1],
    ),
    (
        "ctc target_lengths > S",
        "ctc",
        CTC | {"target_lengths": [3, 2]},
        "value-out-of-range",
        ["body", "target_lengths", 0],
    ),
    ("ctc lengths shape", "ctc", CTC | {"input_lengths": [4]}, "shape-mismatch", ["body", "input_lengths"]),
    (
        "ctc concatenated sum",
        "ctc",
        CTC | {"targets": [1, 2, 1]},
        "shape-mismatch",
        ["body", "targets"],
    ),
    ("ctc label >= C", "ctc", CTC | {"targets": [[1, 3], [2, 1]]}, "value-out-of-range", ["body", "targets", 0, 1]),
    (
        "ctc blank in targets",
        "ctc",
        CTC | {"targets": [[1, 2], [0, 1]]},
        "value-out-of-range",
        ["body", "targets", 1, 0],
    ),
    ("ctc padding may be anything", "ctc", CTC | {"targets": [[1, 99], [2, 1]], "target_lengths": [1, 2]}, "", []),
    ("ctc blank >= C", "ctc", CTC | {"blank": 3}, "invalid-request", ["body", "blank"]),
    (
        "gaussian var negative",
        "gaussian_nll",
        {"input": [1.0, 2.0], "target": [1.0, 2.0], "var": [1.0, -0.5]},
        "value-out-of-range",
        ["body", "var", 1],
    ),
    (
        "gaussian var shape",
        "gaussian_nll",
        {"input": X, "target": X, "var": [1.0, 1.0, 1.0, 1.0]},
        "shape-mismatch",
        ["body", "var"],
    ),
    (
        "gaussian eps",
        "gaussian_nll",
        {"input": [1.0], "target": [1.0], "var": [1.0], "eps": 0},
        "invalid-request",
        ["body", "eps"],
    ),
    ("poisson eps", "poisson_nll", {"input": [1.0], "target": [1.0], "eps": -1e-8}, "invalid-request", ["body", "eps"]),
    ("huber delta", "huber", {"input": [1.0], "target": [1.0], "delta": 0}, "invalid-request", ["body", "delta"]),
    ("triplet margin", "triplet_margin", TRIPLET | {"margin": 0}, "invalid-request", ["body", "margin"]),
    ("triplet p", "triplet_margin", TRIPLET | {"p": -1}, "invalid-request", ["body", "p"]),
    ("triplet eps", "triplet_margin", TRIPLET | {"eps": -1e-6}, "invalid-request", ["body", "eps"]),
    ("triplet dims", "triplet_margin", TRIPLET | {"negative": [1.0, 2.0, 3.0]}, "shape-mismatch", ["body", "negative"]),
    (
        "triplet distance margin",
        "triplet_margin_with_distance",
        TRIPLET | {"margin": -1},
        "invalid-request",
        ["body", "margin"],
    ),
    (
        "triplet distance name",
        "triplet_margin_with_distance",
        TRIPLET | {"distance_function": "os.system"},
        "invalid-request",
        ["body", "distance_function"],
    ),
    ("kl_div broadcast", "kl_div", {"input": X, "target": [0.5, 0.5]}, "shape-mismatch", ["body", "target"]),
    (
        "kl_div reduction",
        "kl_div",
        {"input": X, "target": X, "reduction": "avg"},
        "invalid-request",
        ["body", "reduction"],
    ),
    (
        "linear_cross_entropy index",
        "linear_cross_entropy",
        {"input": X, "linear_weight": X, "target": [0, 2]},
        "value-out-of-range",
        ["body", "target", 1],
    ),
    (
        "linear_cross_entropy H",
        "linear_cross_entropy",
        {"input": X, "linear_weight": [[1.0, 2.0]], "target": [0, 0]},
        "shape-mismatch",
        ["body", "linear_weight"],
    ),
    (
        "linear_cross_entropy bias",
        "linear_cross_entropy",
        {"input": X, "linear_weight": X, "target": [0, 1], "linear_bias": [1.0]},
        "shape-mismatch",
        ["body", "linear_bias"],
    ),
    (
        "linear_cross_entropy weight",
        "linear_cross_entropy",
        {"input": X, "linear_weight": X, "target": [0, 1], "weight": [1.0]},
        "shape-mismatch",
        ["body", "weight"],
    ),
    (
        "linear_cross_entropy ignore_index with probabilities",
        "linear_cross_entropy",
        {"input": X, "linear_weight": X, "target": [[0.5, 0.5], [1, 0]], "ignore_index": 1},
        "invalid-request",
        ["body", "ignore_index"],
    ),
    (
        "sigmoid_focal shape",
        "sigmoid_focal",
        {"inputs": [1.0, 2.0], "targets": [1.0]},
        "shape-mismatch",
        ["body", "targets"],
    ),
    (
        "sigmoid_focal gamma",
        "sigmoid_focal",
        {"inputs": [1.0], "targets": [1.0], "gamma": -1},
        "invalid-request",
        ["body", "gamma"],
    ),
    (
        "gradient of class indices",
        "nll",
        {"input": X, "target": [0, 1], "return_grad": ["target"]},
        "invalid-request",
        ["body", "return_grad", 0],
    ),
    (
        "gradient of a non-differentiable argument",
        "nll",
        {"input": X, "target": [0, 1], "weight": [1.0, 1.0, 1.0], "return_grad": ["weight"]},
        "invalid-request",
        ["body", "return_grad", 0],
    ),
]


@pytest.mark.parametrize(("loss", "body", "slug", "loc"), [pytest.param(*r[1:], id=r[0]) for r in RULES])
def test_rule(client: TestClient, loss: str, body: dict[str, Any], slug: str, loc: list[Any]) -> None:
    response = client.post(f"/v1/losses/{loss}", json=body)
    if not slug:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == f"/problems/{slug}", problem
    assert loc in [e["loc"] for e in problem["errors"]], problem
