"""Test cases per registered loss: inputs, parameter variants, and an independent torch reference.

`CASES[name]` lists the variants of loss `name`; the parity suite crosses each with every reduction
the registry declares for it. The reference is computed in the test, straight from
`torch.nn.functional` (or the written-out focal formula), never through lossd's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Reference = Callable[[dict[str, Tensor], dict[str, Any]], Tensor]


@dataclass
class Case:
    id: str
    tensors: dict[str, Tensor]
    params: dict[str, Any] = field(default_factory=dict)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64)


def randint(high: int, *shape: int, seed: int = 0) -> Tensor:
    return torch.randint(0, high, shape, generator=_gen(seed))


def rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(shape, generator=_gen(seed), dtype=torch.float64)


def focal_reference(
    input: Tensor, target: Tensor, alpha: Tensor | None, gamma: float, ignore_index: int, reduction: str
) -> Tensor:
    """The textbook softmax focal loss, written independently of lossd's implementation."""
    single = input.ndim == 1
    logits = (input.unsqueeze(0) if single else input).movedim(1, -1)  # (N, d..., C)
    tgt = target.unsqueeze(0) if single else target
    valid = tgt != ignore_index
    idx = torch.where(valid, tgt, torch.zeros_like(tgt)).unsqueeze(-1)
    log_pt = logits.log_softmax(-1).gather(-1, idx).squeeze(-1)
    pt = logits.softmax(-1).gather(-1, idx).squeeze(-1)
    loss = -((1 - pt) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha if alpha.ndim == 0 else alpha[idx.squeeze(-1)])
    loss = loss * valid
    if single:
        loss = loss.squeeze(0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


WRITTEN_OUT = frozenset({"focal"})
"""Losses whose reference here is written another way than lossd writes them, so that the two round differently:
lossd's softmax focal loss takes 1 - p_t as -expm1(log p_t) (exact as p_t nears 1), `focal_reference` as
1 - softmax(input)[target]; measured apart by up to 2.4 ulps (8 on float64 gradients of about 1e-16, one ulp of
their scale). Bit for bit at gamma 0, where no 1 - p_t is taken. The sigmoid focal loss is written as torchvision
writes it, the same operations in the same order: bit for bit, so not here."""


def written_out_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """`assert_close`'s rtol and atol for a loss of WRITTEN_OUT in `dtype`: a few ulps (see WRITTEN_OUT)."""
    eps = torch.finfo(dtype).eps
    return {"rtol": 4 * eps, "atol": 2 * eps}


def _elementwise_cases(with_weight: bool) -> list[Case]:
    cases = [
        Case("same-shape", {"input": randn(3, 4, seed=1), "target": randn(3, 4, seed=2)}),
        Case("scalar", {"input": randn(seed=1), "target": randn(seed=2)}),
        Case("broadcast", {"input": randn(3, 4, seed=1), "target": randn(4, seed=2)}),
        Case("empty", {"input": randn(0, seed=1), "target": randn(0, seed=2)}),
    ]
    if with_weight:
        cases.append(
            Case("weight", {"input": randn(5, 2, seed=1), "target": randn(5, 2, seed=2), "weight": rand(5, 2)})
        )
    return cases


def signs(*shape: int, seed: int = 0) -> Tensor:
    return torch.where(rand(*shape, seed=seed) > 0.5, 1.0, -1.0).double()


def log_probs(*shape: int, dim: int, seed: int = 0) -> Tensor:
    return randn(*shape, seed=seed).log_softmax(dim)


CASES: dict[str, list[Case]] = {
    "l1": _elementwise_cases(with_weight=True),
    "mse": _elementwise_cases(with_weight=True),
    "smooth_l1": [
        *_elementwise_cases(with_weight=False),
        *(
            Case(f"beta={beta}", {"input": randn(4, 3, seed=3) * 2, "target": randn(4, 3, seed=4)}, {"beta": beta})
            for beta in (0.0, 0.5, 2.0)
        ),
    ],
    "huber": [
        *_elementwise_cases(with_weight=True),
        *(
            Case(f"delta={delta}", {"input": randn(4, 3, seed=3) * 2, "target": randn(4, 3, seed=4)}, {"delta": delta})
            for delta in (0.5, 2.0)
        ),
    ],
    "cross_entropy": [
        Case("indices", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}),
        Case("single-sample", {"input": randn(5, seed=1), "target": torch.tensor(3)}),
        Case("spatial", {"input": randn(2, 3, 4, 2, seed=1), "target": randint(3, 2, 4, 2)}),
        Case("weight", {"input": randn(6, 3, seed=1), "target": randint(3, 6), "weight": rand(3) + 0.1}),
        Case("ignore-index-hit", {"input": randn(5, 4, seed=1), "target": torch.tensor([1, -100, 3, 0, -100])}),
        Case(
            "custom-ignore-index",
            {"input": randn(4, 3, seed=1), "target": torch.tensor([2, 1, 2, 0])},
            {"ignore_index": 2},
        ),
        Case("label-smoothing", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}, {"label_smoothing": 0.1}),
        Case("label-smoothing=1", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}, {"label_smoothing": 1.0}),
        Case(
            "weight+smoothing+ignore",
            {"input": randn(5, 3, seed=2), "target": torch.tensor([0, 2, -100, 1, 2]), "weight": rand(3) + 0.5},
            {"label_smoothing": 0.2},
        ),
        Case("probabilities", {"input": randn(4, 5, seed=1), "target": randn(4, 5, seed=2).softmax(1)}),
        Case(
            "probabilities+smoothing+weight",
            {"input": randn(3, 4, seed=1), "target": randn(3, 4, seed=2).softmax(1), "weight": rand(4) + 0.1},
            {"label_smoothing": 0.3},
        ),
    ],
    "nll": [
        Case("indices", {"input": log_probs(4, 5, dim=1), "target": randint(5, 4)}),
        Case("single-sample", {"input": log_probs(5, dim=0), "target": torch.tensor(1)}),
        Case("spatial", {"input": log_probs(2, 3, 4, dim=1), "target": randint(3, 2, 4)}),
        Case(
            "weight+ignore",
            {"input": log_probs(5, 3, dim=1), "target": torch.tensor([0, -100, 2, 1, 2]), "weight": rand(3) + 0.1},
        ),
    ],
    "binary_cross_entropy": [
        Case("probabilities", {"input": rand(4, 3, seed=1) * 0.98 + 0.01, "target": rand(4, 3, seed=2)}),
        Case(
            "hard-edges",
            {
                "input": torch.tensor([0.0, 1.0, 0.5, 1.0]).double(),
                "target": torch.tensor([0.0, 1.0, 1.0, 0.0]).double(),
            },
        ),
        Case(
            "weight",
            {"input": rand(4, 3, seed=1) * 0.9 + 0.05, "target": rand(4, 3, seed=3).round(), "weight": rand(3) + 0.2},
        ),
    ],
    "binary_cross_entropy_with_logits": [
        Case("logits", {"input": randn(4, 3, seed=1) * 3, "target": rand(4, 3, seed=2)}),
        Case("weight", {"input": randn(4, 3, seed=1), "target": rand(4, 3, seed=3).round(), "weight": rand(3) + 0.2}),
        Case(
            "pos-weight",
            {"input": randn(4, 3, seed=1), "target": rand(4, 3, seed=3).round(), "pos_weight": rand(3) * 3},
        ),
        Case(
            "weight+pos-weight",
            {
                "input": randn(2, 3, seed=4),
                "target": rand(2, 3, seed=5),
                "weight": rand(2, 3) + 0.1,
                "pos_weight": rand(3) + 1,
            },
        ),
    ],
    "kl_div": [
        Case("probabilities", {"input": log_probs(3, 4, dim=1, seed=1), "target": randn(3, 4, seed=2).softmax(1)}),
        Case(
            "log-target",
            {"input": log_probs(3, 4, dim=1, seed=1), "target": log_probs(3, 4, dim=1, seed=2)},
            {"log_target": True},
        ),
    ],
    "poisson_nll": [
        Case("log-input", {"input": randn(5, seed=1), "target": randint(6, 5).double()}),
        Case("rates", {"input": rand(2, 3, seed=1) * 4, "target": randint(6, 2, 3).double()}, {"log_input": False}),
        Case("full", {"input": randn(5, seed=1), "target": randint(6, 5).double()}, {"full": True}),
        Case("eps", {"input": rand(5, seed=1), "target": randint(4, 5).double()}, {"log_input": False, "eps": 0.1}),
    ],
    "gaussian_nll": [
        Case("heteroscedastic", {"input": randn(4, 3, seed=1), "target": randn(4, 3, seed=2), "var": rand(4, 3) + 0.1}),
        Case("var-one-dim-short", {"input": randn(4, 3, seed=1), "target": randn(4, 3, seed=2), "var": rand(4) + 0.1}),
        Case("var-last-dim-1", {"input": randn(4, 3, seed=1), "target": randn(4, 3, seed=2), "var": rand(4, 1) + 0.1}),
        Case(
            "scalar-var",
            {"input": randn(4, 3, seed=1), "target": randn(4, 3, seed=2), "var": torch.tensor(0.7).double()},
        ),
        Case(
            "scalar-var-1d",
            {"input": randn(7, seed=1) * 10, "target": randn(7, seed=2), "var": torch.tensor(0.37).double()},
        ),
        Case(
            "full+tiny-var",
            {
                "input": randn(5, seed=1),
                "target": randn(5, seed=2),
                "var": torch.tensor([0.0, 1e-9, 0.5, 1.0, 2.0]).double(),
            },
            {"full": True, "eps": 1e-3},
        ),
    ],
    "ctc": [
        Case(
            "padded",
            {
                "log_probs": log_probs(6, 2, 5, dim=2),
                "targets": torch.tensor([[1, 2, 2], [3, 4, 0]]),
                "input_lengths": torch.tensor([6, 5]),
                "target_lengths": torch.tensor([3, 2]),
            },
        ),
        Case(
            "concatenated",
            {
                "log_probs": log_probs(6, 2, 5, dim=2),
                "targets": torch.tensor([1, 2, 3, 4, 4]),
                "input_lengths": torch.tensor([6, 6]),
                "target_lengths": torch.tensor([2, 3]),
            },
        ),
        Case(
            "unbatched",
            {
                "log_probs": log_probs(5, 4, dim=1),
                "targets": torch.tensor([1, 3]),
                "input_lengths": torch.tensor(5),
                "target_lengths": torch.tensor(2),
            },
        ),
        Case(
            "blank=4",
            {
                "log_probs": log_probs(6, 2, 5, dim=2),
                "targets": torch.tensor([[0, 1], [2, 3]]),
                "input_lengths": torch.tensor([6, 4]),
                "target_lengths": torch.tensor([2, 2]),
            },
            {"blank": 4},
        ),
        Case(
            "zero-infinity",
            {
                "log_probs": log_probs(3, 2, 4, dim=2),
                "targets": torch.tensor([[1, 1, 1], [2, 3, 0]]),
                "input_lengths": torch.tensor([3, 3]),
                "target_lengths": torch.tensor([3, 2]),
            },
            {"zero_infinity": True},
        ),
    ],
    "margin_ranking": [
        Case("pairs", {"input1": randn(6, seed=1), "input2": randn(6, seed=2), "target": signs(6)}),
        Case("margin", {"input1": randn(6, seed=1), "input2": randn(6, seed=2), "target": signs(6)}, {"margin": 0.5}),
    ],
    "hinge_embedding": [
        Case("distances", {"input": rand(6, seed=1) * 2, "target": signs(6)}),
        Case("margin", {"input": rand(2, 3, seed=1) * 2, "target": signs(2, 3)}, {"margin": 0.5}),
    ],
    "soft_margin": [Case("scores", {"input": randn(3, 4, seed=1), "target": signs(3, 4)})],
    "multilabel_margin": [
        Case(
            "padded",
            {"input": randn(3, 4, seed=1), "target": torch.tensor([[3, 0, -1, 1], [0, 1, 2, 3], [-1, 2, 2, 2]])},
        ),
        Case("single", {"input": randn(4, seed=1), "target": torch.tensor([2, 1, -1, 0])}),
    ],
    "multilabel_soft_margin": [
        Case("labels", {"input": randn(3, 4, seed=1), "target": rand(3, 4, seed=2).round()}),
        Case("weight", {"input": randn(3, 4, seed=1), "target": rand(3, 4, seed=2).round(), "weight": rand(4) + 0.1}),
    ],
    "multi_margin": [
        Case("indices", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}),
        Case("single", {"input": randn(5, seed=1), "target": torch.tensor(2)}),
        Case("p=2+margin", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}, {"p": 2, "margin": 0.5}),
        Case("weight", {"input": randn(4, 5, seed=1), "target": randint(5, 4), "weight": rand(5) + 0.1}),
    ],
    "cosine_embedding": [
        Case("pairs", {"input1": randn(4, 3, seed=1), "input2": randn(4, 3, seed=2), "target": signs(4)}),
        Case("single", {"input1": randn(3, seed=1), "input2": randn(3, seed=2), "target": torch.tensor(-1.0).double()}),
        Case(
            "margin",
            {"input1": randn(4, 3, seed=1), "input2": randn(4, 3, seed=2), "target": signs(4)},
            {"margin": -0.3},
        ),
    ],
    "triplet_margin": [
        Case(
            "triplets",
            {"anchor": randn(4, 3, seed=1), "positive": randn(4, 3, seed=2), "negative": randn(4, 3, seed=3)},
        ),
        Case(
            "p=1+swap+margin",
            {"anchor": randn(4, 3, seed=1), "positive": randn(4, 3, seed=2), "negative": randn(4, 3, seed=3)},
            {"p": 1.0, "swap": True, "margin": 0.5, "eps": 0.0},
        ),
        Case("single", {"anchor": randn(3, seed=1), "positive": randn(3, seed=2), "negative": randn(3, seed=3)}),
    ],
    "triplet_margin_with_distance": [
        Case(
            "default", {"anchor": randn(4, 3, seed=1), "positive": randn(4, 3, seed=2), "negative": randn(4, 3, seed=3)}
        ),
        Case(
            "cosine+swap",
            {"anchor": randn(4, 3, seed=1), "positive": randn(4, 3, seed=2), "negative": randn(4, 3, seed=3)},
            {"distance_function": "cosine", "swap": True, "margin": 0.5},
        ),
        Case(
            "pairwise-named",
            {"anchor": randn(4, 3, seed=1), "positive": randn(4, 3, seed=2), "negative": randn(4, 3, seed=3)},
            {"distance_function": "pairwise_distance", "margin": 2.0},
        ),
    ],
    "linear_cross_entropy": [
        Case("indices", {"input": randn(4, 3, seed=1), "linear_weight": randn(5, 3, seed=2), "target": randint(5, 4)}),
        Case(
            "bias+weight+ignore",
            {
                "input": randn(4, 3, seed=1),
                "linear_weight": randn(5, 3, seed=2),
                "target": torch.tensor([0, 4, 7, 2]),
                "linear_bias": randn(5, seed=3),
                "weight": rand(5) + 0.1,
            },
            {"ignore_index": 7},
        ),
        Case(
            "smoothing",
            {"input": randn(4, 3, seed=1), "linear_weight": randn(5, 3, seed=2), "target": randint(5, 4)},
            {"label_smoothing": 0.2},
        ),
        Case(
            "probabilities",
            {
                "input": randn(4, 3, seed=1),
                "linear_weight": randn(5, 3, seed=2),
                "target": randn(4, 5, seed=4).softmax(1),
            },
        ),
        Case("single", {"input": randn(3, seed=1), "linear_weight": randn(5, 3, seed=2), "target": torch.tensor(4)}),
        Case(
            "chunked",
            {"input": randn(8, 3, seed=1), "linear_weight": randn(5, 3, seed=2), "target": randint(5, 8)},
            {"options": {"batch_chunk_size": 3}},
        ),
    ],
    "focal": [
        Case("default-gamma", {"input": randn(6, 4, seed=1), "target": randint(4, 6)}),
        Case("gamma=0", {"input": randn(6, 4, seed=1), "target": randint(4, 6)}, {"gamma": 0.0}),
        Case("gamma=0.5", {"input": randn(6, 4, seed=1), "target": randint(4, 6)}, {"gamma": 0.5}),
        Case("alpha-scalar", {"input": randn(6, 4, seed=1), "target": randint(4, 6), "alpha": torch.tensor(0.25)}),
        Case("alpha-per-class", {"input": randn(6, 4, seed=1), "target": randint(4, 6), "alpha": rand(4)}),
        Case("ignore-index-hit", {"input": randn(4, 3, seed=1), "target": torch.tensor([0, -100, 2, -100])}),
        Case("spatial", {"input": randn(2, 3, 5, seed=1), "target": randint(3, 2, 5)}, {"gamma": 1.5}),
        Case("single-sample", {"input": randn(5, seed=1), "target": torch.tensor(2)}),
    ],
    "sigmoid_focal": [
        Case("defaults", {"inputs": randn(4, 3, seed=1) * 2, "targets": rand(4, 3, seed=2).round()}),
        Case("no-alpha", {"inputs": randn(4, 3, seed=1), "targets": rand(4, 3, seed=2).round()}, {"alpha": -1.0}),
        Case("gamma=0", {"inputs": randn(6, seed=1), "targets": rand(6, seed=2).round()}, {"gamma": 0.0, "alpha": 0.5}),
        Case("gamma=0.5", {"inputs": randn(6, seed=1), "targets": rand(6, seed=2).round()}, {"gamma": 0.5}),
    ],
}


def sigmoid_focal_reference(inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss, as torchvision writes it."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


FUNCTIONAL: dict[str, Callable[..., Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
    "huber": F.huber_loss,
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "binary_cross_entropy": F.binary_cross_entropy,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
    "kl_div": F.kl_div,
    "poisson_nll": F.poisson_nll_loss,
    "gaussian_nll": F.gaussian_nll_loss,
    "ctc": F.ctc_loss,
    "margin_ranking": F.margin_ranking_loss,
    "hinge_embedding": F.hinge_embedding_loss,
    "soft_margin": F.soft_margin_loss,
    "multilabel_margin": F.multilabel_margin_loss,
    "multilabel_soft_margin": F.multilabel_soft_margin_loss,
    "multi_margin": F.multi_margin_loss,
    "cosine_embedding": F.cosine_embedding_loss,
    "triplet_margin": F.triplet_margin_loss,
    "triplet_margin_with_distance": F.triplet_margin_with_distance_loss,
    # new in torch 2.13; getattr lets the suites run against an older torch on a GPU machine
    "linear_cross_entropy": getattr(F, "linear_cross_entropy", None),  # type: ignore[dict-item]
}
"""Each loss's torch function: the request's JSON keys are its keyword arguments."""


def reference(name: str, t: dict[str, Tensor], p: dict[str, Any]) -> Tensor:
    """torch's own answer for loss `name` (the focal losses: their published formulas)."""
    p = dict(p)
    if name == "focal":
        return focal_reference(
            t["input"], t["target"], t.get("alpha"), p.get("gamma", 2.0), p.get("ignore_index", -100), p["reduction"]
        )
    if name == "sigmoid_focal":
        return sigmoid_focal_reference(
            t["inputs"], t["targets"], p.get("alpha", 0.25), p.get("gamma", 2.0), p.get("reduction", "none")
        )
    if name == "gaussian_nll" and t["var"].ndim == 0 and t["input"].ndim > 1:  # torch's float var, var * ones
        # (torch takes a 0-d var tensor itself, one dimension short, only for an input of at most one dimension)
        t = t | {"var": t["var"] * torch.ones_like(t["input"])}
    if name == "triplet_margin_with_distance" and p.get("distance_function") == "cosine":
        p["distance_function"] = lambda x, y: 1.0 - F.cosine_similarity(x, y)
    elif name == "triplet_margin_with_distance" and "distance_function" in p:
        p["distance_function"] = F.pairwise_distance
    if name == "linear_cross_entropy" and "options" in p:
        p["options"] = torch.nn.LinearCrossEntropyOptions(**p["options"])
    return FUNCTIONAL[name](**t, **p)
