"""Sufficient statistics (`compute.compute(..., stats=True, groups=...)`) against torch.

For every registered loss, case and reduction: torch's mean is S / W and its sum is S, and `count` is the
number of terms that entered. Then, with hypothesis: statistics summed over random batches of a random
dataset give torch's loss over the whole dataset at once, and per group label torch's loss over that
label's samples. Every expected value is computed here, straight from `torch.nn.functional` (or the
written-out focal formulas of tests/cases.py), never through lossd's own code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from service import compute
from service.errors import LossdError, ShapeMismatch
from service.losses import REGISTRY
from service.losses.registry import LossSpec
from tests import wire
from tests.cases import CASES, FUNCTIONAL, WRITTEN_OUT, Case, reference, written_out_tolerance

STATS = {"rtol": 1e-14, "atol": 1e-14}
"""One batch, float64: S and S / W are float64 sums lossd makes of torch's per-element terms (and weights), in its
own order and grouping; torch reduces the same terms in another (cross_entropy's label smoothing:
(1 - e) * sum(nll) + e / C * sum(smooth), against the sum of the per-element mix). Measured: at most 2.5e-16
relative, 3.6e-15 absolute (sums of about 20)."""


def _f64(x: float) -> Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _dataset_value(reduction: str, s: float, w: float) -> Tensor:
    """S for a sum, S / W for a mean (0 / 0: NaN, as torch divides)."""
    return _f64(s if reduction == "sum" else s / w if w else math.nan)


def _skip_missing(name: str) -> None:
    if name in FUNCTIONAL and FUNCTIONAL[name] is None:
        pytest.skip(f"this torch ({torch.__version__}) has no {name}")


def _has_ignore_index(spec: LossSpec, t: dict[str, Tensor]) -> bool:
    target = t.get("target")
    return "ignore_index" in spec.params.model_fields and target is not None and not target.is_floating_point()


def _ignore_index(spec: LossSpec, p: dict[str, Any]) -> int:
    ignore = p.get("ignore_index", spec.params.model_fields["ignore_index"].default)
    return -100 if ignore is None else ignore  # linear_cross_entropy's None: -100 for class indices


def expected_count(spec: LossSpec, t: dict[str, Tensor], p: dict[str, Any]) -> int:
    """Terms that enter torch's reduction: targets not ignored, else every element of the 'none' result."""
    if _has_ignore_index(spec, t):
        return int((t["target"] != _ignore_index(spec, p)).sum())
    return reference(spec.name, t, {**p, "reduction": "none"}).numel()


def expected_weight(spec: LossSpec, t: dict[str, Tensor], p: dict[str, Any], count: int) -> float:
    """What torch's mean divides by, written out from torch's documentation of each loss."""
    if _has_ignore_index(spec, t) and spec.name != "focal" and t.get("weight") is not None:
        target = t["target"]
        return float(t["weight"].double()[target[target != _ignore_index(spec, p)]].sum())
    if spec.name in ("l1", "mse") and t.get("weight") is not None:
        return float(t["weight"].double().sum())
    if spec.name == "kl_div" and p["reduction"] == "batchmean" and t["input"].ndim:
        return float(t["input"].shape[0])
    return float(count)


def _cases() -> list[Any]:
    out = []
    for spec in REGISTRY:
        reductions = [r for r in spec.reductions if r != "none"]
        if spec.name not in CASES:  # a new loss without cases fails here, not silently
            out.append(pytest.param(spec.name, None, reductions[0], id=f"{spec.name}-NO-CASES"))
        for case in CASES.get(spec.name, []):
            out += [pytest.param(spec.name, case, r, id=f"{spec.name}-{case.id}-{r}") for r in reductions]
    return out


def test_every_loss_has_a_stats_rule_and_cases() -> None:
    for spec in REGISTRY:
        assert spec.stats.doc, spec.name
        assert [r for r in spec.reductions if r != "none"], spec.name
    assert sorted(CASES) == sorted(spec.name for spec in REGISTRY)


@pytest.mark.parametrize(("name", "case", "reduction"), _cases())
def test_one_batch_matches_torch(name: str, case: Case | None, reduction: str) -> None:
    assert case is not None, f"{name} has no cases in tests/cases.py: its stats are untested"
    _skip_missing(name)
    spec = REGISTRY.get(name)
    params = {**case.params, "reduction": reduction}
    result = compute.compute(spec, case.tensors, spec.params.model_validate(params), stats=True)
    assert result.stats is not None
    totals = result.stats.total
    assert result.stats.groups == {}

    expected = reference(name, case.tensors, params).double()
    count = expected_count(spec, case.tensors, params)
    assert totals.count == count
    # W: lossd's float64 sum of the weights of the terms (see STATS)
    assert totals.weight == pytest.approx(expected_weight(spec, case.tensors, params, count), rel=STATS["rtol"])
    if reduction == "sum":
        wire.assert_within(_f64(totals.sum), expected, "S", **STATS)
    else:
        got = _dataset_value(reduction, totals.sum, totals.weight)
        wire.assert_within(got, expected, "S / W", **STATS)
    # the dataset value of the totals is torch's, up to STATS; the loss the service returns is torch's own
    wire.assert_within(_f64(totals.loss(reduction)), expected, "the totals' loss", **STATS)
    if name in WRITTEN_OUT:
        wire.assert_within(result.loss, expected, "loss", **written_out_tolerance(torch.float64))
    else:
        wire.assert_exact(result.loss, expected, "loss")


LCE_DEFAULT_IGNORE = Case(
    "default-ignore-index",
    {
        "input": torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2),
        "linear_weight": torch.linspace(-2, 1, 6, dtype=torch.float64).reshape(3, 2),
        "target": torch.tensor([2, -100, 0, -100]),
        "weight": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
    },
)


@pytest.mark.parametrize(
    ("name", "case"),
    [
        *(
            pytest.param(name, case, id=f"{name}-{case.id}")
            for name in ("cross_entropy", "nll", "focal", "linear_cross_entropy")
            for case in CASES[name]
            if "ignore" in case.id
        ),
        pytest.param("linear_cross_entropy", LCE_DEFAULT_IGNORE, id="linear_cross_entropy-ignore_index-null"),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignored_targets_are_not_counted(name: str, case: Case, reduction: str) -> None:
    _skip_missing(name)
    spec = REGISTRY.get(name)
    ignore = _ignore_index(spec, case.params)
    target = case.tensors["target"]
    ignored = int((target == ignore).sum())
    assert ignored > 0  # the case does hit ignore_index
    params = {**case.params, "reduction": reduction}
    result = compute.compute(spec, case.tensors, spec.params.model_validate(params), stats=True)
    assert result.stats is not None
    totals = result.stats.total
    assert totals.count == target.numel() - ignored
    expected = reference(name, case.tensors, params).double()
    wire.assert_within(_dataset_value(reduction, totals.sum, totals.weight), expected, "S / W", **STATS)
    weight = case.tensors.get("weight")
    if weight is not None:
        assert totals.weight == pytest.approx(float(weight[target[target != ignore]].sum()), rel=STATS["rtol"])
    else:
        assert totals.weight == totals.count


# --- edge cases ---------------------------------------------------------------------------------------------


def _all_ignored(name: str) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64)
    tensors = {"input": logits.log_softmax(1) if name == "nll" else logits, "target": torch.full((3,), -100)}
    if name != "focal":
        tensors["weight"] = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    return tensors


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "focal"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_all_targets_ignored(name: str, with_weight: bool) -> None:
    spec = REGISTRY.get(name)
    tensors = _all_ignored(name)
    if not with_weight:
        tensors.pop("weight", None)
    for reduction in ("mean", "sum"):
        params = {"reduction": reduction}
        result = compute.compute(spec, tensors, spec.params.model_validate(params), stats=True)
        assert result.stats is not None
        totals = result.stats.total
        assert (totals.weight, totals.count) == (0.0, 0)
        assert totals.sum == 0.0
        expected = reference(name, tensors, params).double()
        if reduction == "mean":
            assert math.isnan(expected.item())  # torch: 0 / 0
            assert math.isnan(totals.loss("mean"))
        else:
            assert totals.loss("sum") == expected.item() == 0.0
        wire.assert_exact(result.loss, expected, "loss")  # 0 / 0 and an empty sum: no rounding, focal's too


def test_all_ignored_over_batches_is_nan_like_torch() -> None:
    spec = REGISTRY.get("cross_entropy")
    tensors = _all_ignored("cross_entropy")
    params = spec.params.model_validate({"label_smoothing": 0.1})
    s = w = 0.0
    n = 0
    for rows in (slice(0, 1), slice(1, 3)):
        part = {k: v[rows] if k != "weight" else v for k, v in tensors.items()}
        stats = compute.compute(spec, part, params, stats=True).stats
        assert stats is not None
        s, w, n = s + stats.total.sum, w + stats.total.weight, n + stats.total.count
    assert (s, w, n) == (0.0, 0.0, 0)
    assert math.isnan(F.cross_entropy(**tensors, label_smoothing=0.1).item())


def test_zero_class_weight_of_every_target_with_smoothing_is_nan_like_torch() -> None:
    spec = REGISTRY.get("cross_entropy")
    tensors = {
        "input": torch.linspace(-1, 2, 12, dtype=torch.float64).reshape(3, 4),
        "target": torch.tensor([1, 1, 1]),
        "weight": torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64),
    }
    expected = F.cross_entropy(**tensors, label_smoothing=0.2)
    assert math.isnan(expected.item())
    stats = compute.compute(spec, tensors, spec.params.model_validate({"label_smoothing": 0.2}), stats=True).stats
    assert stats is not None
    assert stats.total.weight == 0.0
    assert math.isnan(stats.total.loss("mean", spec.stats))


def _repeated(spec: LossSpec, tensors: dict[str, Tensor], times: int) -> dict[str, Tensor]:
    """The case's samples `times` over: every tensor that runs along the first argument's dim 0 repeated along
    its own dim 0 (per-class tensors, whose shape rule has a C and no N, stay as they are), the first argument's
    copy j scaled by 1 - j / 128 (the same signs and ranges, other values: other roundings)."""
    lead = spec.tensors[0].name
    first = tensors[lead]
    if first.ndim < 2 or times == 1:  # one sample: nothing to repeat
        return tensors
    per_class = {arg.name for arg in spec.tensors if "(C" in arg.shape and "N" not in arg.shape}
    out = {}
    for k, v in tensors.items():
        if v.ndim and v.shape[0] == first.shape[0] and k not in per_class:
            copies = [v * (1 - j / 128) if k == lead and v.is_floating_point() else v for j in range(times)]
            v = torch.cat(copies)
        out[k] = v
    return out


@pytest.mark.parametrize("times", [1, 40, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("name", "case", "reduction"), _cases())
def test_the_loss_with_stats_is_torchs_bit_for_bit(
    name: str, case: Case | None, reduction: str, dtype: Any, times: int
) -> None:
    """With stats, a loss whose rule says torch reduces its per-element result itself is answered from one
    call (`StatsRule.reduces_elements`): the value must be exactly the one torch's own call gives. The cases'
    samples also 40 and 300 times over: a kernel that sums in a loop of its own (multi_margin's,
    multilabel_margin's) parts from a vectorized sum only past dozens or hundreds of terms."""
    assert case is not None
    _skip_missing(name)
    spec = REGISTRY.get(name)
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _repeated(spec, case.tensors, times).items()}
    params = spec.params.model_validate({**case.params, "reduction": reduction})
    try:
        plain = compute.compute(spec, tensors, params)
    except LossdError:  # no kernel of this dtype on the CPU: the same refusal with stats
        with pytest.raises(LossdError):
            compute.compute(spec, tensors, params, stats=True)
        return
    with_stats = compute.compute(spec, tensors, params, stats=True)
    assert with_stats.loss.dtype == plain.loss.dtype
    assert torch.equal(with_stats.loss, plain.loss) or (plain.loss.isnan().all() and with_stats.loss.isnan().all())


def test_groups_of_the_wrong_shape_are_refused() -> None:
    spec = REGISTRY.get("mse")
    tensors = {"input": torch.zeros(4, 2, dtype=torch.float64), "target": torch.ones(4, 2, dtype=torch.float64)}
    params = spec.params.model_validate({})
    for groups in (torch.zeros(5, dtype=torch.int64), torch.zeros(4, 1, dtype=torch.int64), torch.tensor(0)):
        with pytest.raises(ShapeMismatch) as info:
            compute.compute(spec, tensors, params, stats=True, groups=groups)
        assert [d.loc for d in info.value.errors] == [("groups",)]
        assert "groups" in info.value.detail


@pytest.mark.parametrize(
    ("name", "case_id"),
    [("cross_entropy", "single-sample"), ("ctc", "unbatched"), ("mse", "scalar"), ("l1", "broadcast")],
)
def test_groups_need_a_batch_dimension(name: str, case_id: str) -> None:
    """A 0-dim per-element loss has no samples to label."""
    spec = REGISTRY.get(name)
    case = next(c for c in CASES[name] if c.id == case_id)
    # l1's broadcast case: input (3, 4), so a label per row works and (4,) labels do not
    groups = torch.zeros(4 if case_id == "broadcast" else 1, dtype=torch.int64)
    with pytest.raises(ShapeMismatch) as info:
        compute.compute(spec, case.tensors, spec.params.model_validate(case.params), stats=True, groups=groups)
    assert info.value.errors[0].loc == ("groups",)


def test_groups_cannot_split_a_weight_of_another_batch_size() -> None:
    """l1's weight has input's shape; input (1, 3) broadcast against target (4, 3) gives 4 rows of terms whose
    weight is one row: no label per sample can split it."""
    spec = REGISTRY.get("l1")
    tensors = {
        "input": torch.zeros(1, 3, dtype=torch.float64),
        "target": torch.ones(4, 3, dtype=torch.float64),
        "weight": torch.ones(1, 3, dtype=torch.float64),
    }
    with pytest.raises(ShapeMismatch) as info:
        compute.compute(
            spec, tensors, spec.params.model_validate({}), stats=True, groups=torch.zeros(4, dtype=torch.int64)
        )
    assert info.value.errors[0].loc == ("groups",)


# --- batches and groups, with hypothesis ---------------------------------------------------------------------


Make = Callable[[torch.Generator, int], dict[str, Tensor]]


@dataclass(frozen=True)
class Scenario:
    """A dataset of `n` samples for loss `name`: `dims` names each per-sample tensor's batch dimension (the
    others, class weights say, are shared by every batch)."""

    id: str
    name: str
    params: dict[str, Any]
    make: Make
    dims: dict[str, int] = field(default_factory=lambda: {"input": 0, "target": 0})


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _labels(g: torch.Generator, classes: int, *shape: int, ignore: int | None = -100) -> Tensor:
    target = torch.randint(0, classes, shape, generator=g)
    if ignore is not None:
        target[torch.rand(shape, generator=g) < 0.3] = ignore
    return target


def _ctc(g: torch.Generator, n: int) -> dict[str, Tensor]:
    steps, classes, longest = 8, 5, 3
    target_lengths = torch.randint(0, longest + 1, (n,), generator=g)
    targets = torch.randint(1, classes, (n, longest), generator=g)  # padded: what is past a length is ignored
    input_lengths = torch.randint(2 * longest + 1, steps + 1, (n,), generator=g)
    return {
        "log_probs": _randn(g, steps, n, classes).log_softmax(2),
        "targets": targets,
        "input_lengths": input_lengths,
        "target_lengths": target_lengths,
    }


CTC_DIMS = {"log_probs": 1, "targets": 0, "input_lengths": 0, "target_lengths": 0}

SCENARIOS = [
    Scenario(
        "cross_entropy-weight-ignore-smoothing",
        "cross_entropy",
        {"label_smoothing": 0.2},
        lambda g, n: {"input": _randn(g, n, 4), "target": _labels(g, 4, n), "weight": _rand(g, 4) + 0.1},
    ),
    Scenario(
        "cross_entropy-spatial-custom-ignore",
        "cross_entropy",
        {"ignore_index": 1, "label_smoothing": 0.05},
        lambda g, n: {"input": _randn(g, n, 3, 2), "target": _labels(g, 3, n, 2, ignore=None), "weight": _rand(g, 3)},
    ),
    Scenario(
        "nll-weight-ignore",
        "nll",
        {},
        lambda g, n: {
            "input": _randn(g, n, 5).log_softmax(1),
            "target": _labels(g, 5, n),
            "weight": _rand(g, 5) + 0.1,
        },
    ),
    Scenario(
        "kl_div-batchmean",
        "kl_div",
        {"reduction": "batchmean"},
        lambda g, n: {"input": _randn(g, n, 4).log_softmax(1), "target": _randn(g, n, 4).softmax(1)},
    ),
    Scenario(
        "kl_div-batchmean-log-target",
        "kl_div",
        {"reduction": "batchmean", "log_target": True},
        lambda g, n: {"input": _randn(g, n, 3, 2).log_softmax(1), "target": _randn(g, n, 3, 2).log_softmax(1)},
    ),
    Scenario("ctc-mean", "ctc", {}, _ctc, CTC_DIMS),
    Scenario("ctc-sum", "ctc", {"reduction": "sum", "zero_infinity": True}, _ctc, CTC_DIMS),
    Scenario(
        "huber-weight",
        "huber",
        {"delta": 0.7},
        lambda g, n: {"input": _randn(g, n, 3) * 2, "target": _randn(g, n, 3), "weight": _rand(g, n, 3)},
        {"input": 0, "target": 0, "weight": 0},
    ),
    Scenario(
        "l1-weight",
        "l1",
        {},
        lambda g, n: {"input": _randn(g, n, 3), "target": _randn(g, n, 3), "weight": _rand(g, n, 3) + 0.01},
        {"input": 0, "target": 0, "weight": 0},
    ),
    Scenario(
        "mse-weight",
        "mse",
        {},
        lambda g, n: {"input": _randn(g, n, 2), "target": _randn(g, n, 2), "weight": _rand(g, n, 2) + 0.01},
        {"input": 0, "target": 0, "weight": 0},
    ),
    Scenario(
        "bce_with_logits-weight-pos_weight",
        "binary_cross_entropy_with_logits",
        {},
        lambda g, n: {
            "input": _randn(g, n, 3) * 2,
            "target": _rand(g, n, 3).round(),
            "weight": _rand(g, n, 3) + 0.1,
            "pos_weight": _rand(g, 3) * 3,
        },
        {"input": 0, "target": 0, "weight": 0},
    ),
    Scenario(
        "focal-ignore-alpha",
        "focal",
        {"gamma": 1.5},
        lambda g, n: {"input": _randn(g, n, 4), "target": _labels(g, 4, n), "alpha": _rand(g, 4)},
    ),
    Scenario(
        "focal-spatial-sum",
        "focal",
        {"reduction": "sum"},
        lambda g, n: {"input": _randn(g, n, 3, 2), "target": _labels(g, 3, n, 2)},
    ),
    Scenario("mse", "mse", {}, lambda g, n: {"input": _randn(g, n, 2, 2), "target": _randn(g, n, 2, 2)}),
    Scenario(
        "smooth_l1-sum",
        "smooth_l1",
        {"beta": 0.5, "reduction": "sum"},
        lambda g, n: {"input": _randn(g, n, 3), "target": _randn(g, n, 3)},
    ),
    Scenario(
        "multi_margin-weight",
        "multi_margin",
        {"p": 2, "margin": 0.5},
        lambda g, n: {"input": _randn(g, n, 4), "target": _labels(g, 4, n, ignore=None), "weight": _rand(g, 4)},
    ),
]

DATASET = {
    torch.float64: {"rtol": 1e-13, "atol": 1e-13},
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
}
"""A dataset's value from the statistics of its batches against torch on the whole at once: lossd adds torch's
per-element terms up in float64, batch by batch (see STATS), where torch reduces them in the dtype, in one call.
Measured: float64 at most 6.3e-16 relative (3 ulps); float32 at most 2.1e-7 (1.8 ulps of float32: torch's own
float32 sum and its rounding of the result)."""

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)


def _take(tensors: dict[str, Tensor], dims: dict[str, int], rows: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(dims[k], rows) if k in dims else v for k, v in tensors.items()}


def _dataset(scenario: Scenario, seed: int, n: int, dtype: torch.dtype) -> dict[str, Tensor]:
    tensors = scenario.make(torch.Generator().manual_seed(seed), n)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def _batches(n: int, cuts: set[int]) -> list[Tensor]:
    edges = [0, *sorted(c for c in cuts if 0 < c < n), n]
    return [torch.arange(a, b) for a, b in itertools.pairwise(edges)]


def _reduction(scenario: Scenario) -> str:
    return scenario.params.get("reduction", "mean")


def _torch_value(scenario: Scenario, tensors: dict[str, Tensor]) -> Tensor:
    """torch on the whole (sub)dataset at once: tests.cases.reference, i.e. torch.nn.functional."""
    return reference(scenario.name, tensors, {**scenario.params, "reduction": _reduction(scenario)}).double()


DTYPES = {"float64": torch.float64, "float32": torch.float32}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), cuts=st.sets(st.integers(1, 8), max_size=8))
def test_batches_add_up_to_the_whole(scenario: Scenario, dtype: str, seed: int, n: int, cuts: set[int]) -> None:
    spec = REGISTRY.get(scenario.name)
    params = spec.params.model_validate(scenario.params)
    data = _dataset(scenario, seed, n, DTYPES[dtype])
    s = w = 0.0
    count = 0
    for rows in _batches(n, cuts):
        stats = compute.compute(spec, _take(data, scenario.dims, rows), params, stats=True).stats
        assert stats is not None
        s, w, count = s + stats.total.sum, w + stats.total.weight, count + stats.total.count
    expected = _torch_value(scenario, data)
    got = _dataset_value(_reduction(scenario), s, w)
    wire.assert_within(got, expected, "the batches' S / W", **DATASET[DTYPES[dtype]])
    assert count == expected_count(spec, data, {**scenario.params, "reduction": _reduction(scenario)})


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    cuts=st.sets(st.integers(1, 8), max_size=8),
    labels=st.lists(st.integers(-2, 3), min_size=9, max_size=9),
)
def test_groups_match_torch_on_each_labels_samples(
    scenario: Scenario, seed: int, n: int, cuts: set[int], labels: list[int]
) -> None:
    spec = REGISTRY.get(scenario.name)
    params = spec.params.model_validate(scenario.params)
    data = _dataset(scenario, seed, n, torch.float64)
    groups = torch.tensor(labels[:n])
    sums: dict[str, list[float]] = {}
    whole = [0.0, 0.0]
    for rows in _batches(n, cuts):
        part = _take(data, scenario.dims, rows)
        stats = compute.compute(spec, part, params, stats=True, groups=groups[rows]).stats
        assert stats is not None
        assert set(stats.groups) == {str(label) for label in groups[rows].tolist()}
        for label, t in stats.groups.items():
            into = sums.setdefault(label, [0.0, 0.0])
            into[0] += t.sum
            into[1] += t.weight
        whole[0] += stats.total.sum
        whole[1] += stats.total.weight
    reduction = _reduction(scenario)
    assert set(sums) == {str(label) for label in groups.tolist()}
    for label, (s, w) in sums.items():
        subset = _take(data, scenario.dims, torch.nonzero(groups == int(label)).flatten())
        got = _dataset_value(reduction, s, w)
        wire.assert_within(got, _torch_value(scenario, subset), f"group {label}", **DATASET[torch.float64])
    # the groups partition the dataset: their sums are the whole's, added in another order (float64 rounding)
    assert sum(s for s, _ in sums.values()) == pytest.approx(whole[0], rel=1e-12, abs=1e-12)
    assert sum(w for _, w in sums.values()) == pytest.approx(whole[1], rel=1e-12, abs=1e-12)
