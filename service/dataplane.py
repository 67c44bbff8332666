"""The request lifecycle without HTTP: decode the body, validate, predict the cost, compute, encode.

Each protocol hands a request body to one of these functions and gets back a `Job`: the request read
and validated, what computing it will cost (predicted from shapes by the loss's cost model, before any
torch call), and the computation that returns the response bytes. The API layer decides from the cost
where the job runs. Errors are domain exceptions. Keeping this free of HTTP lets every protocol share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from service import codec, compute, schemas
from service.errors import ErrorDetail, InvalidRequest, Loc, LossdError, MalformedBody, ShapeMismatch, UnknownLoss
from service.isolation import Task
from service.limits import Limits
from service.losses.registry import (
    LEGACY_REDUCTION_ARGS,
    LossParams,
    LossSpec,
    LossTotals,
    Registry,
    TensorKind,
    legacy_reduction,
)
from service.sessions.state import DIGEST_LENGTH, Merged, SessionLimits, merge, totals_json

T = TypeVar("T")
U = TypeVar("U")

Describe = Callable[[LossdError], dict[str, Any]]
"""Turns an error into the problem object that stands for one failed entry of /v1/evaluate."""


Execute = Callable[[Task], compute.LossResult]
"""Where a computation runs: in this process (`Task.run_here`), or in a worker process (`WorkerPool`)."""


@dataclass(slots=True)
class Job(Generic[T]):
    """A request read and validated: what computing it will cost (predicted, before any torch call), and
    the steps that answer it, given where its computations run."""

    cost: int
    """Tensor elements the computation will hold at its peak, or its operations if more (`registry.Cost.effort`)."""
    work_bytes: int
    """The same in bytes: the memory the computation will build at its peak (or, for a loss whose time grows
    faster than its memory, four bytes an operation: what sends long work to a worker process)."""
    output_bytes: int
    """The most bytes its response may take."""
    steps: Callable[[Execute], T]
    here: Execute
    """Runs a computation in this process: the default of `run`."""

    def run(self, execute: Execute | None = None) -> T:
        """Answer the request, computing with `execute` (in this process by default)."""
        return self.steps(execute or self.here)

    def then(self, fn: Callable[[T], U]) -> Job[U]:
        """The same work, its result passed on to `fn` (encoding it, say)."""
        steps = self.steps
        return Job(self.cost, self.work_bytes, self.output_bytes, lambda execute: fn(steps(execute)), self.here)


BYTES_PER_JSON_NUMBER = 25
"""The most characters a number takes in a JSON response (`-2.2250738585072014e-308,`)."""


def encoded_bytes(elements: int, encoding: str, itemsize: int) -> int:
    """The most bytes `elements` numbers of `itemsize` bytes take in a response: JSON text, base64, or raw
    (the Open Inference Protocol's binary data)."""
    if encoding == "base64":
        return (elements * itemsize + 2) // 3 * 4
    if encoding == "binary":
        return elements * itemsize
    return elements * BYTES_PER_JSON_NUMBER


@dataclass
class Batch:
    """One session batch computed: its id, the digest of its content, and each loss's value and statistics."""

    batch_id: str
    digest: str
    losses: list[float]
    stats: list[LossTotals]
    warnings: list[list[str]]
    """What torch would have printed for each loss (broadcasting, say)."""


@dataclass
class NewSession:
    """A `POST /v1/sessions` read: normalized loss definitions, TTL, and merged states' contents if any."""

    losses: list[dict[str, Any]]
    ttl_s: int
    merged: Merged | None


@dataclass
class DataPlane:
    """The registry, one request model per loss, the device losses run on, and the app's limits."""

    registry: Registry
    device: torch.device
    limits: Limits = field(default_factory=Limits)
    on_elements: Callable[[str, int], None] | None = None
    """Told how many tensor elements each computed loss took (for metrics)."""
    models: dict[str, type[LossParams]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models = {spec.name: schemas.request_model(spec) for spec in self.registry}

    def loss(self, spec: LossSpec, body: bytes) -> Job[bytes]:
        """Read one `POST /v1/losses/{name}` body; the job returns the JSON response body."""
        request = self.validate(self.models[spec.name], _json_object(body), spec)
        for arg in spec.tensors:
            if arg.required and getattr(request, arg.name) is None:
                raise InvalidRequest(f"{arg.name} is required and cannot be null", loc=(arg.name,))
        raw = {
            arg.name: codec.decode_tensor(value, arg.name, arg.kind, self.limits)
            for arg in spec.tensors
            if (value := getattr(request, arg.name)) is not None
        }
        encoding = request.output_encoding
        return self.plan(spec, request, raw).then(lambda result: codec.dumps(encode_result(result, encoding)))

    def evaluate(self, body: bytes, describe: Describe) -> Job[bytes]:
        """Read a `POST /v1/evaluate` body; the job answers every entry in order, each a result or its own
        problem (an entry that fails validation costs nothing and answers its problem)."""
        request = self.validate(schemas.EvaluateRequest, _json_object(body))
        assert isinstance(request, schemas.EvaluateRequest)
        self.limits.entries(len(request.losses))
        pool = _Pool(request.tensors, self.device, self.limits)
        pool.read_all()
        entries: list[tuple[str, Job[dict[str, Any]] | LossdError]] = []
        for i, entry in enumerate(request.losses):
            try:
                entries.append((entry.name, self._evaluate_entry(i, entry, request, pool)))
            except LossdError as exc:
                entries.append((entry.name, exc))

        def steps(execute: Execute) -> bytes:
            results: list[dict[str, Any]] = []
            for name, job in entries:
                try:
                    if isinstance(job, LossdError):
                        raise job
                    results.append(job.run(execute))
                except LossdError as exc:
                    results.append({"name": name, **describe(exc)})
            return codec.dumps({"results": results})

        jobs = [job for _, job in entries if isinstance(job, Job)]
        output = sum(job.output_bytes for job in jobs)
        self.limits.response(output)
        work = max((job.work_bytes for job in jobs), default=0)  # the entries compute one after the other
        return Job(sum(job.cost for job in jobs), work, output, steps, self.run_here)

    def run_here(self, task: Task) -> compute.LossResult:
        """Compute `task` in this process, on this plane's device."""
        return task.run_here(self.device)

    def ready(self) -> bool:
        """True when the registry is loaded and the device runs a tiny computation."""
        return len(self.registry) > 0 and float(torch.ones(2, device=self.device).sum().item()) == 2.0

    def _evaluate_entry(
        self, i: int, entry: schemas.LossEntry, request: schemas.EvaluateRequest, pool: _Pool
    ) -> Job[dict[str, Any]]:
        defaults = {
            "return_grad": request.return_grad,
            "output_encoding": request.output_encoding,
            "return_stats": request.return_stats,
        }
        spec, params, job = self._entry(i, entry, defaults, pool)
        return job.then(
            lambda result: {"name": spec.name, "status": 200, **encode_result(result, params.output_encoding)}
        )

    def _entry(
        self, i: int, entry: schemas.LossEntry, defaults: dict[str, Any], pool: _Pool, groups: Tensor | None = None
    ) -> tuple[LossSpec, Any, Job[compute.LossResult]]:
        """One loss entry over shared tensors: its spec, its validated request and its job, every error
        located in the request (`losses.i...`, or the shared tensor it is about)."""
        here: Loc = ("losses", i)
        spec = self._entry_spec(entry, here)
        renames = entry.tensors or {}
        args = {arg.name for arg in spec.tensors}
        extra = entry.model_extra or {}
        for name in args & set(extra):
            raise InvalidRequest(
                f"tensors go in the shared 'tensors' object, not in the entry: {name!r}", loc=(*here, name)
            )
        keys = {arg.name: renames.get(arg.name, arg.name) for arg in spec.tensors}
        for arg, key in renames.items():
            if key not in pool.values:
                names = list(pool.values)
                held = ", ".join(map(repr, names[:10])) + (", ..." if len(names) > 10 else "") or "none"
                raise InvalidRequest(
                    f"tensors.{arg} names {key!r}, which the request's tensors do not hold (they hold {held})",
                    loc=(*here, "tensors", arg),
                )
        given = {arg: key for arg, key in keys.items() if key in pool.values}
        where: dict[str, Loc] = {arg: ("tensors", key) for arg, key in given.items()}
        where |= {k: ("tensors", k) for k in given.values()} | {"groups": ("groups",)}

        def relocated(exc: LossdError) -> LossdError:
            exc.errors = [_relocate(d, where, here) for d in exc.errors]
            return exc

        try:
            payload = defaults | extra | dict.fromkeys(given, True)
            params = self.validate(self.models[spec.name], payload, spec, hide=args)
            raw = {arg.name: pool.raw(given[arg.name], arg.kind) for arg in spec.tensors if arg.name in given}
            job = self.plan(spec, params, raw, pool, groups=groups)
        except LossdError as exc:
            raise relocated(exc) from None
        steps = job.steps

        def located(execute: Execute) -> compute.LossResult:
            try:
                return steps(execute)
            except LossdError as exc:
                raise relocated(exc) from None

        return spec, params, Job(job.cost, job.work_bytes, job.output_bytes, located, job.here)

    def _entry_spec(self, entry: schemas.LossEntry, here: Loc) -> LossSpec:
        """The loss an entry (at `here`) names, whose tensor arguments its `tensors` renames."""
        try:
            spec = self.registry.get(entry.name)
        except UnknownLoss as exc:
            raise InvalidRequest(exc.detail, loc=(*here, "name")) from None
        args = {arg.name for arg in spec.tensors}
        for arg_name in entry.tensors or {}:
            if arg_name not in args:
                raise InvalidRequest(
                    f"{spec.name} has no tensor argument {arg_name!r}", loc=(*here, "tensors", arg_name)
                )
        return spec

    def new_session(self, body: bytes, max_ttl_s: int, limits: SessionLimits) -> Job[NewSession]:
        """Read a `POST /v1/sessions` body: its losses, validated and normalized, or the states it merges
        (whose losses must be definitions this server writes), within the session `limits`."""
        request = self.validate(schemas.SessionCreate, _json_object(body))
        assert isinstance(request, schemas.SessionCreate)
        if (request.losses is None) == (request.from_states is None):
            raise InvalidRequest("give either losses or from_states", loc=("losses",))
        if request.ttl_s > max_ttl_s:
            raise InvalidRequest(
                f"ttl_s may be at most {max_ttl_s} seconds (LOSSD_SESSION_MAX_TTL_S)",
                loc=("ttl_s",),
                limit=max_ttl_s,
                actual=request.ttl_s,
            )
        merged = None
        if request.from_states is not None:
            merged = merge(request.from_states, limits)
            try:
                losses = self.session_losses(merged.losses)
            except LossdError as exc:  # the definitions every state holds: state 0's
                exc.errors = [ErrorDetail(("from_states", 0, *d.loc), d.msg) for d in exc.errors]
                raise
            if losses != merged.losses:
                raise InvalidRequest(
                    "the states' losses are not in the form this server writes them (every parameter, defaults "
                    "filled in): written by hand, or by another version",
                    loc=("from_states", 0, "losses"),
                )
        else:
            # a null parameter is validated as sent (as in /v1/losses: null is no parameter's default); only an
            # absent `tensors` is left out
            dumped = [
                entry.model_dump(exclude={"tensors"} if entry.tensors is None else set())
                for entry in request.losses or []
            ]
            losses = self.session_losses(dumped)
        new = NewSession(losses, request.ttl_s, merged)
        return Job(len(body) // 64, 0, 0, lambda execute: new, self.run_here)

    def session_losses(self, entries: list[Any]) -> list[dict[str, Any]]:
        """The loss definitions of a new session, validated and normalized (canonical name, every parameter
        with its default filled in, `tensors`), so that equal definitions compare equal. A session
        accumulates a mean or a sum: `reduction: "none"` is refused."""
        if not isinstance(entries, list) or not entries:
            raise InvalidRequest("losses must be a non-empty list of loss entries", loc=("losses",))
        self.limits.entries(len(entries))
        out = []
        for i, value in enumerate(entries):
            here: Loc = ("losses", i)
            entry = self.validate(schemas.LossEntry, value) if isinstance(value, dict) else None
            if entry is None:
                raise InvalidRequest("a loss entry is an object with a name and parameters", loc=here)
            spec = self._entry_spec(entry, here)
            _refuse_legacy_none(spec, entry.model_extra or {}, here)
            try:
                params = self.validate(spec.params, entry.model_extra or {}, spec)
            except LossdError as exc:
                exc.errors = [ErrorDetail((*here, *d.loc), d.msg) for d in exc.errors]
                raise
            if params.reduction == "none":
                raise InvalidRequest(
                    "a session accumulates a mean or a sum: reduction 'none' has no dataset value",
                    loc=(*here, "reduction"),
                )
            out.append({"name": spec.name, **params.model_dump(mode="json"), "tensors": entry.tensors or {}})
        return out

    def batch(self, losses: list[dict[str, Any]], body: bytes) -> Job[Batch]:
        """Read one batch of a session of `losses` (normalized definitions): every loss is validated and
        planned before anything runs; the job computes them all, with their sufficient statistics (per
        group label when `groups` is given), or fails as a whole."""
        request = self.validate(schemas.BatchRequest, _json_object(body))
        assert isinstance(request, schemas.BatchRequest)
        pool = _Pool(request.tensors, self.device, self.limits)
        pool.read_all()
        groups = None
        if request.groups is not None:
            groups = codec.decode_tensor(request.groups, "groups", TensorKind.INDEX, self.limits)
        return self._batch(losses, request.batch_id, pool, groups)

    def decoded_batch(
        self, losses: list[dict[str, Any]], batch_id: str, tensors: dict[str, compute.RawTensor]
    ) -> Job[Batch]:
        """`batch` for tensors another protocol has decoded (gRPC): `groups`, when among them, holds the labels."""
        self.validate(schemas.BatchRequest, {"batch_id": batch_id, "tensors": {}})
        groups = tensors.pop("groups", None)
        return self._batch(losses, batch_id, _Pool(tensors, self.device, self.limits, decoded=True), groups)

    def _batch(
        self, losses: list[dict[str, Any]], batch_id: str, pool: _Pool, raw_groups: compute.RawTensor | None
    ) -> Job[Batch]:
        groups = None
        if raw_groups is not None:
            groups = compute.prepare_indices("groups", raw_groups)
            if groups.ndim != 1:
                raise ShapeMismatch(
                    f"groups must be a 1-D tensor of integer labels, got shape {list(groups.shape)}", loc=("groups",)
                )
        defaults = {"return_stats": True}
        jobs = []
        i = 0
        try:
            for i, definition in enumerate(losses):
                # definitions were validated when the session was made: no second validation per batch
                params = {k: v for k, v in definition.items() if k not in ("name", "tensors")}
                entry = schemas.LossEntry.model_construct(
                    name=definition["name"], tensors=definition["tensors"], **params
                )
                jobs.append(self._entry(i, entry, defaults, pool, groups)[2])
        except LossdError as exc:
            _naming_entry(exc, i, losses[i]["name"])
            raise
        digest = pool.digest(groups)

        def steps(execute: Execute) -> Batch:
            batch = Batch(batch_id, digest, [], [], [])
            try:
                for job in jobs:
                    result = job.run(execute)
                    assert result.stats is not None
                    batch.losses.append(float(result.loss))
                    batch.stats.append(result.stats)
                    batch.warnings.append(result.warnings)
            except LossdError as exc:  # the entry after those done refused the batch
                done = len(batch.losses)
                _naming_entry(exc, done, losses[done]["name"])
                raise
            return batch

        work = max(job.work_bytes for job in jobs)
        return Job(sum(job.cost for job in jobs), work, 0, steps, self.run_here)

    def plan(
        self,
        spec: LossSpec,
        request: LossParams,
        raw: Mapping[str, compute.RawTensor],
        pool: _Pool | None = None,
        output_encoding: str | None = None,
        groups: Tensor | None = None,
    ) -> Job[compute.LossResult]:
        """The shared core of every protocol: dtypes by kind, the limits on elements, memory and response size
        (all from the cost model's prediction, before torch runs); the job runs the checks, the loss and its
        gradients (and its sufficient statistics when the request asks, per label of `groups` when given).
        `output_encoding` (json, base64 or binary) defaults to the request's."""
        assert isinstance(request, schemas.RequestOptions)
        elements = self.check_elements(raw)
        tensors = compute.prepare(spec, raw, pool.cast if pool else compute.host_cast(self.device))
        grad_wrt = _grad_wrt(spec, request.return_grad, tensors)
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        cost = spec.cost(shapes, request, len(grad_wrt))
        held = cost.elements
        if request.return_stats:  # the loss once more with reduction "none", and its terms in float64
            per_element = spec.cost(shapes, compute.with_reduction(request, "none"), 0)
            held += per_element.elements + 2 * per_element.output
        limits = self.limits
        limits.elements(cost.largest_name, cost.largest, cost.largest_loc)
        # the models count index tensors twice over; half precision still computes in float32 on some kernels
        float_size = max((t.element_size() for t in tensors.values() if t.is_floating_point()), default=4)
        work = held * max(float_size, 4)
        if work > limits.max_work_bytes:
            limits.work(f"{spec.name} would build {cost.largest_name} and more", work, cost.largest_loc)
        output = encoded_bytes(cost.output, output_encoding or request.output_encoding, float_size)
        limits.response(output)
        task = Task(spec, tensors, request, grad_wrt, pool.place if pool else None, request.return_stats, groups)
        on_elements = self.on_elements

        def steps(execute: Execute) -> compute.LossResult:
            result = execute(task)
            if on_elements is not None:
                on_elements(spec.name, elements)
            return result

        return Job(max(cost.effort, held), max(work, cost.operations * 4), output, steps, self.run_here)

    def check_elements(self, raw: Mapping[str, compute.RawTensor]) -> int:
        """Every decoded tensor, and all of them together, within the element limits; returns the total."""
        for name, r in raw.items():
            self.limits.tensor(name, r.tensor.shape)
        return self.limits.request([r.tensor.numel() for r in raw.values()])

    @staticmethod
    def validate(
        model: type[BaseModel], payload: dict[str, Any], spec: LossSpec | None = None, hide: Collection[str] = ()
    ) -> Any:
        """`payload` validated by `model` (the request or parameters of loss `spec`, when given); a failure is an
        InvalidRequest naming each field, an unknown one with the close names of `model`'s fields but `hide`,
        torch's deprecated `size_average` and `reduce` with the reduction they stand for."""
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            legacy = payload if spec is not None and spec.legacy_reduction else None
            raise schemas.invalid_request(exc, model, legacy=legacy, hide=hide) from None


def _refuse_legacy_none(spec: LossSpec, entry: dict[str, Any], here: Loc) -> None:
    """A session's loss whose torch's deprecated `size_average`/`reduce` stand for reduction "none" is told that a
    session cannot take that (rather than, as elsewhere, to send "none" instead)."""
    legacy = [entry.get(name) for name in LEGACY_REDUCTION_ARGS]
    if not spec.legacy_reduction or not all(v is None or isinstance(v, bool) for v in legacy):
        return
    if any(v is not None for v in legacy) and legacy_reduction(legacy[0], legacy[1]) == "none":
        raise InvalidRequest(
            'size_average and reduce are deprecated in torch, and "reduce": false stands for reduction "none", which '
            'a session cannot accumulate (it has no dataset value): send "reduction": "mean" or "sum" instead',
            loc=(*here, "reduce"),
        )


class _Pool:
    """The shared tensors of one /v1/evaluate request: each decoded, converted and placed once."""

    def __init__(self, values: dict[str, Any], device: torch.device, limits: Limits, decoded: bool = False):
        """`values` as the request gives them, or already `decoded` (`RawTensor`s, by a protocol other than JSON)."""
        self.values = values
        self.device = device
        self.limits = limits
        self._raw: dict[tuple[str, TensorKind | None], compute.RawTensor] = {}
        if decoded:
            self._raw = {(key, None): raw for key, raw in values.items()}
        self._cast: dict[tuple[int, torch.dtype], Tensor] = {}
        self._placed: dict[int, Tensor] = {}
        self._keep: list[Tensor] = []  # keeps every cached tensor alive, so ids stay unique
        self._host_cast = compute.host_cast(device)

    def read_all(self) -> None:
        """Decode every shared tensor now: a malformed one fails the whole request, naming its key.

        (A base64 tensor without a dtype waits for the loss that uses it, whose argument gives the dtype.)
        """
        try:
            for key, value in self.values.items():
                if not (isinstance(value, dict) and "b64" in value and "dtype" not in value):
                    self.raw(key, TensorKind.FLOAT)
        except LossdError as exc:
            exc.errors = [ErrorDetail(("tensors", *d.loc), d.msg) for d in exc.errors]
            raise

    def raw(self, key: str, kind: TensorKind) -> compute.RawTensor:
        value = self.values[key]
        # The kind matters only to a base64 payload without a dtype (it picks the default dtype).
        variant = kind if isinstance(value, dict) and "b64" in value and "dtype" not in value else None
        if (key, variant) not in self._raw:
            self._raw[key, variant] = codec.decode_tensor(value, key, kind, self.limits)
        return self._raw[key, variant]

    def digest(self, groups: Tensor | None) -> str:
        """A digest of the tensors' content (names, shapes, values) and the group labels: equal for a batch
        sent again, whatever the JSON spelling, wire form or declared dtype of its numbers."""
        h = hashlib.sha256()
        for key in sorted(self.values):
            value = self.values[key]
            if isinstance(value, dict) and "b64" in value and "dtype" not in value:  # its dtype is the loss's choice
                h.update(f"{key}\0b64\0{value.get('shape')}\0{value['b64']}".encode())
                continue
            # the numbers, whatever their spelling (1 or 1.0), wire form or declared dtype (int32 or int64 labels)
            t = self.raw(key, TensorKind.FLOAT).tensor
            _hash_tensor(h, key, t if t.dtype == torch.float64 else t.to(torch.float64))
        if groups is not None:
            _hash_tensor(h, "\0groups", groups)
        return h.hexdigest()[:DIGEST_LENGTH]

    def cast(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        if (id(t), dtype) not in self._cast:
            self._cast[id(t), dtype] = converted = self._host_cast(t, dtype)
            self._keep += [t, converted]
        return self._cast[id(t), dtype]

    def place(self, t: Tensor) -> Tensor:
        if id(t) not in self._placed:
            self._placed[id(t)] = placed = compute.to_device(t, self.device)
            self._keep += [t, placed]
        return self._placed[id(t)]


def _naming_entry(exc: LossdError, i: int, name: str) -> None:
    """Make a session batch's error name the loss entry (`i`, `name`) that refused the batch: in its detail, and as
    the first of its `errors` (the others still point into the tensors)."""
    where: Loc = ("losses", i)
    if not exc.errors or exc.errors[0].loc[:2] != where:
        exc.errors.insert(0, ErrorDetail(where, f"the loss {name} refused this batch"))
    exc.detail = f"losses[{i}] ({name}): {exc.detail}"
    exc.args = (exc.detail,)


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    if t.numel():
        h.update(t.contiguous().numpy().data.cast("B"))  # the bytes in place, not a copy


def _relocate(detail: ErrorDetail, tensors: Mapping[str, Loc], entry: Loc) -> ErrorDetail:
    """A detail's loc inside an evaluate request: shared tensors by their key, the rest in the entry."""
    head, *rest = detail.loc or ("",)
    if isinstance(head, str) and head in tensors:
        return ErrorDetail((*tensors[head], *rest), detail.msg)
    return ErrorDetail((*entry, *detail.loc), detail.msg)


def _json_object(body: bytes) -> dict[str, Any]:
    payload = codec.loads(body)
    if not isinstance(payload, dict):
        raise MalformedBody(f"the request body must be a JSON object, got {type(payload).__name__}")
    return payload


def _grad_wrt(spec: LossSpec, return_grad: bool | list[str], tensors: Mapping[str, Tensor]) -> list[str]:
    """Names to differentiate: every differentiable floating tensor given, or the listed ones."""
    if return_grad is True:
        return [name for name in spec.differentiable if name in tensors and tensors[name].is_floating_point()]
    if return_grad is False:
        return []
    for i, name in enumerate(return_grad):
        if name not in tensors:
            raise InvalidRequest(f"return_grad names {name!r}, which the request does not give", loc=("return_grad", i))
        if not tensors[name].is_floating_point():
            raise InvalidRequest(
                f"return_grad names {name!r}, which holds class indices: integers have no gradient",
                loc=("return_grad", i),
            )
    return list(dict.fromkeys(return_grad))


def encode_result(result: compute.LossResult, encoding: codec.Encoding) -> dict[str, Any]:
    """The v1 response body: loss, shape, dtype, grad (when asked), device, warnings (when any)."""
    body: dict[str, Any] = {
        "loss": codec.encode_tensor(result.loss, encoding),
        "shape": list(result.loss.shape),
        "dtype": codec.dtype_name(result.loss),
    }
    if result.grads:
        body["grad"] = {name: codec.encode_tensor(g, encoding) for name, g in result.grads.items()}
    body["device"] = result.device
    if result.stats is not None:
        body["stats"] = totals_json(result.stats.total)
    if result.warnings:
        body["warnings"] = result.warnings
    return body
