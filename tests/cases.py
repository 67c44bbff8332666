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
    "cross_entropy": [
        Case("indices", {"input": randn(4, 5, seed=1), "target": randint(5, 4)}),
        Case("single-sample", {"input": randn(5, seed=1), "target": torch.tensor(3)}),
        Case("spatial", {"input": randn(2, 3, 4, 2, seed=1), "target": randint(3, 2, 4, 2)}),
        Case("weight", {"input": randn(6, 3, seed=1), "target": randint(3, 6), "weight": rand(3) + 0.1}),
        Case(
            "ignore-index-hit",
            {"input": randn(5, 4, seed=1), "target": torch.tensor([1, -100, 3, 0, -100])},
        ),
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
}


def reference(name: str, t: dict[str, Tensor], p: dict[str, Any]) -> Tensor:
    """torch's own answer for loss `name` (focal: the formula above)."""
    r = p.get("reduction", "mean")
    if name == "l1":
        return F.l1_loss(t["input"], t["target"], reduction=r, weight=t.get("weight"))
    if name == "mse":
        return F.mse_loss(t["input"], t["target"], reduction=r, weight=t.get("weight"))
    if name == "smooth_l1":
        return F.smooth_l1_loss(t["input"], t["target"], reduction=r, beta=p.get("beta", 1.0))
    if name == "cross_entropy":
        return F.cross_entropy(
            t["input"],
            t["target"],
            weight=t.get("weight"),
            ignore_index=p.get("ignore_index", -100),
            reduction=r,
            label_smoothing=p.get("label_smoothing", 0.0),
        )
    if name == "focal":
        return focal_reference(
            t["input"], t["target"], t.get("alpha"), p.get("gamma", 2.0), p.get("ignore_index", -100), r
        )
    raise KeyError(f"no reference for {name}: add one with its cases")
