"""Wire models derived from the registry: per-loss request models, the catalog entry, response shapes.

Each loss gets its own request model, built from its declaration: the loss's parameter model (torch's
keyword arguments) plus one field per tensor argument, `return_grad` and `output_encoding`. Tensor
fields are documented with the `Tensor` schema but pass through unvalidated: the codec reads the
numbers in one C call instead of pydantic validating them one by one.
"""

from __future__ import annotations

import types
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, create_model

from service.codec import DTYPES
from service.errors import ErrorDetail, InvalidRequest, close_matches, did_you_mean, quoted
from service.losses.registry import (
    LEGACY_REDUCTION_ARGS,
    LossParams,
    LossSpec,
    Reduction,
    TensorKind,
    legacy_reduction,
)
from service.sessions.state import MAX_BATCH_ID

GRAD_NOTE = (
    "Gradients of reduction 'none' are taken with an upstream gradient of ones "
    "(they are the gradients of the sum of the per-element losses)."
)

STATS_NOTE = (
    'true: the response adds "stats": {"sum": S, "weight": W, "count": n}, the loss\'s sufficient statistics in '
    "float64: the loss is S / W for its mean reduction and S for sum, and sums of S and of W over batches give "
    "torch's loss over all of them at once. The catalog's `stats` says how each loss decomposes."
)

TENSOR_SCHEMA: dict[str, Any] = {
    "title": "Tensor",
    "description": (
        "A tensor: a number, a nested array of numbers (row-major, rectangular), "
        '{"data": [flat numbers], "shape": [...], "dtype": ...} or '
        '{"b64": "<base64 of little-endian row-major bytes>", "shape": [...], "dtype": ...}. '
        'Non-finite values are the strings "NaN", "Infinity" and "-Infinity".'
    ),
    "oneOf": [
        {"$ref": "#/components/schemas/Number"},
        {"type": "array", "items": {}},
        {
            "type": "object",
            "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Number"}},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "dtype": {"type": "string", "enum": list(DTYPES)},
            },
            "required": ["data"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "b64": {"type": "string", "contentEncoding": "base64"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "dtype": {"type": "string", "enum": list(DTYPES)},
            },
            "required": ["b64"],
            "additionalProperties": False,
        },
    ],
}
NUMBER_SCHEMA: dict[str, Any] = {
    "title": "Number",
    "description": 'A JSON number, "NaN", "Infinity" or "-Infinity"; booleans read as 1 and 0.',
    "anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}],
}
EXTRA_SCHEMAS = {"Tensor": TENSOR_SCHEMA, "Number": NUMBER_SCHEMA}
"""Component schemas referenced by the generated models, added to the OpenAPI document."""

_TENSOR_MARK = "lossd:tensor"
_NUMBER_MARK = "lossd:number"
NumberField = Annotated[float | str, WithJsonSchema({"$comment": _NUMBER_MARK})]
"""A float64 in a response: a JSON number, or "NaN", "Infinity", "-Infinity" (the `Number` schema in OpenAPI)."""
TensorField = Annotated[Any, WithJsonSchema({"$comment": _TENSOR_MARK})]
"""A tensor argument: any JSON value for pydantic (the codec reads it), the `Tensor` schema in OpenAPI."""


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema for the OpenAPI components, tensor fields pointing at the `Tensor` schema."""
    schema: dict[str, Any] = _point_at_marked(model.model_json_schema(ref_template="#/components/schemas/{model}"))
    return schema


_MARKED = {_TENSOR_MARK: "#/components/schemas/Tensor", _NUMBER_MARK: "#/components/schemas/Number"}


def _point_at_marked(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("$comment") in _MARKED:
            node = {k: v for k, v in node.items() if k != "$comment"} | {"$ref": _MARKED[node["$comment"]]}
        return {k: _point_at_marked(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_point_at_marked(v) for v in node]
    return node


class RequestOptions(BaseModel):
    """The fields every loss request has besides the loss's own tensors and parameters."""

    model_config = ConfigDict(strict=True)

    return_grad: bool | list[str] = Field(
        False, description=f"true: gradients of every differentiable tensor given; or a list of names. {GRAD_NOTE}"
    )
    output_encoding: Literal["json", "base64"] = Field(
        "json", description="How response tensors are written: nested JSON arrays, or base64 objects."
    )
    return_stats: bool = Field(False, description=STATS_NOTE)


def request_model(spec: LossSpec) -> type[LossParams]:
    """The request body model of one loss: its parameters, tensors, `return_grad`, `output_encoding`."""
    fields: dict[str, Any] = {}
    for arg in spec.tensors:
        description = f"{arg.doc} Shape: {arg.shape}. {_KIND_WORDS[arg.kind]}"
        default = ... if arg.required else None
        fields[arg.name] = (TensorField, Field(default, description=description))
    if spec.differentiable:  # narrow return_grad's names to this loss's differentiable arguments
        field = RequestOptions.model_fields["return_grad"]
        names: Any = Literal[spec.differentiable]  # built at run time from the declaration
        fields["return_grad"] = (bool | list[names], Field(False, description=field.description))
    name = "".join(part.capitalize() for part in spec.name.split("_")) + "Request"
    bases: Any = (spec.params, RequestOptions)
    return create_model(name, __base__=bases, __doc__=spec.summary, **fields)  # type: ignore[no-any-return]


_KIND_WORDS = {
    TensorKind.FLOAT: "Floating point (float32 unless a dtype is given).",
    TensorKind.INDEX: "Integer class indices (int64; int32 and uint8 are converted).",
    TensorKind.INDEX_OR_PROBABILITY: (
        "Integer class indices, or floating class probabilities; untyped numbers with input's shape are probabilities."
    ),
}


class Stats(BaseModel):
    """A loss's sufficient statistics: the loss is sum / weight for its mean reduction, sum for `sum`."""

    sum: NumberField = Field(
        description='S: the sum of the loss terms (float64; "NaN", "Infinity"... when not finite).'
    )
    weight: NumberField = Field(description="W: the weight the mean divides by (float64).")
    count: int = Field(description="n: the number of loss terms that entered (ignored targets left out).")


class LossEntry(BaseModel):
    """One loss of a /v1/evaluate request: its name, then its parameters as in its own request."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"additionalProperties": True})

    name: str = Field(description="A loss name or alias from the catalog.")
    tensors: dict[str, str] | None = Field(
        None,
        description="Which shared tensor each argument takes, when not the one of its own name: "
        '{"inputs": "input"} feeds the shared `input` to sigmoid_focal\'s `inputs`.',
    )


class EvaluateRequest(BaseModel):
    """Many losses over one set of tensors, sent and decoded once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tensors: dict[str, TensorField] = Field(description="Tensors by name; each loss takes its arguments from here.")
    losses: list[LossEntry] = Field(min_length=1, description="The losses to compute, in order.")
    return_grad: bool | list[str] = Field(False, description="Default of every entry's return_grad.")
    output_encoding: Literal["json", "base64"] = Field("json", description="Default of every entry's output_encoding.")
    return_stats: bool = Field(False, description="Default of every entry's return_stats.")


class SessionCreate(BaseModel):
    """A new session: its losses (entries as in /v1/evaluate, without `reduction: "none"`), or exported
    states to merge."""

    model_config = ConfigDict(extra="forbid", strict=True)

    losses: list[LossEntry] | None = Field(
        None, description="The losses to accumulate, as /v1/evaluate's entries (name, parameters, tensors)."
    )
    from_states: list[dict[str, Any]] | None = Field(
        None,
        description="Instead of losses: states from GET /v1/sessions/{id}/state, merged (identical losses, "
        "no batch id in two states).",
    )
    ttl_s: int = Field(86400, ge=1, description="Seconds the session lives after its last batch.")


class BatchRequest(BaseModel):
    """One batch of a session: shared tensors as in /v1/evaluate, its id, and optional group labels."""

    model_config = ConfigDict(extra="forbid", strict=True)

    batch_id: str = Field(
        min_length=1,
        max_length=MAX_BATCH_ID,
        description="The batch's id: a batch id applied before is not applied again.",
    )
    tensors: dict[str, TensorField] = Field(description="Tensors by name; each loss takes its arguments from here.")
    groups: TensorField | None = Field(
        None, description="One integer label per sample (along dim 0 of each per-element loss): per-group values."
    )


class SessionResult(BaseModel):
    """One loss of a session: its dataset value (float64), stats, and per group when groups were sent."""

    name: str
    reduction: str
    loss: NumberField = Field(description='S / W for a mean, S for a sum ("NaN" when W is 0, as torch).')
    stats: Stats
    groups: dict[str, Any] | None = Field(None, description='Per group label: {"loss", "stats"}.')
    warnings: list[str] | None = Field(None, description="A batch's warnings torch would have printed (broadcasting).")


class SessionCreated(BaseModel):
    """A session created."""

    id: str
    losses: list[dict[str, Any]] = Field(description="The loss definitions, normalized.")
    expires_at: str = Field(description="When the session expires without another batch (RFC 3339, UTC).")


class SessionView(BaseModel):
    """A session's dataset values."""

    id: str
    batches: int = Field(description="Batches applied.")
    expires_at: str
    results: list[SessionResult]


class BatchResponse(BaseModel):
    """One batch applied (or recognised as already applied)."""

    batch_id: str
    duplicate: bool = Field(description="true: this batch id was applied before with the same content; not again.")
    results: list[SessionResult] = Field(description="This batch's own loss values and stats.")


def invalid_request(
    exc: ValidationError,
    model: type[BaseModel] | None = None,
    *,
    legacy: Mapping[str, Any] | None = None,
    hide: Collection[str] = (),
) -> InvalidRequest:
    """A pydantic validation failure of `model` as a domain error, one detail per failing field.

    An unknown field is named, with the close names of the fields `model` has at its place (but `hide`, top-level
    fields that are no parameters where the payload comes from); `legacy` is the payload of a loss whose torch
    function takes the deprecated `size_average` and `reduce`: sending either says what `reduction` to send.
    """
    errors = exc.errors(include_url=False)
    found = [_field_loc(e["loc"]) for e in errors]
    # A union (return_grad: bool | list) fails once per member; keep the deepest, most specific failure (in time
    # linear in the errors: a body of 100,000 unknown fields is 100,000 errors, of which only the kept are worded).
    shallower = {loc[:k] for loc in found for k in range(len(loc))}
    kept = [(loc, error) for loc, error in zip(found, errors, strict=True) if loc not in shallower]
    details = [ErrorDetail(loc, _message(error, loc, model, legacy, hide)) for loc, error in kept[:MAX_ERRORS]]
    summary = "; ".join(f"{'.'.join(map(str, d.loc)) or 'body'}: {d.msg}" for d in details[:5])
    if len(kept) > MAX_ERRORS:
        summary += f" (and {len(kept) - 5} more; the first {MAX_ERRORS} are in `errors`)"
    return InvalidRequest(f"the request does not match its schema: {summary}", errors=details)


MAX_ERRORS = 100
"""The most field errors one problem lists."""


def _field_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A pydantic loc without its union-member tags (`bool`, `list[...]`), which name no request field."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p)))


_UNION_TAGS = {"bool", "int", "float", "str", "list", "dict"}


def _message(
    error: Any,
    loc: tuple[int | str, ...],
    model: type[BaseModel] | None,
    legacy: Mapping[str, Any] | None,
    hide: Collection[str],
) -> str:
    if error["type"] != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return str(error["msg"])
    name = loc[-1]
    if legacy is not None and loc == (name,) and name in LEGACY_REDUCTION_ARGS:
        return _legacy_message(legacy, model)
    fields = [f for f in _fields_at(model, loc[:-1]) if not (len(loc) == 1 and f in hide)]
    suggestions = close_matches(name, fields, n=3) if len(name) <= 100 else []
    if suggestions:
        return f"unknown field {quoted(name)}{did_you_mean(suggestions)}"
    if model is not None and len(loc) == 1 and issubclass(model, LossParams):
        return f"unknown field {quoted(name)} (not an argument or parameter of this loss)"
    return f"unknown field {quoted(name)}"


def _legacy_message(payload: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    """What to send instead of torch's deprecated `size_average` and `reduce`: the reduction torch computes from
    them (`registry.legacy_reduction`), when both are booleans or null."""
    head = "size_average and reduce are deprecated in torch"
    values = [payload.get(name) for name in LEGACY_REDUCTION_ARGS]
    field = model.model_fields.get("reduction") if model is not None else None
    reductions = get_args(field.annotation) if field is not None else get_args(Reduction)
    if not all(v is None or isinstance(v, bool) for v in values):
        choices = ", ".join(f'"{r}"' for r in reductions[:-1]) + f' or "{reductions[-1]}"'
        return f'{head} (true, false or null); send "reduction" ({choices}) instead'
    given = payload.get("reduction", "mean")
    reduction = legacy_reduction(values[0], values[1], given if given in reductions else "mean")
    return f'{head}; send "reduction": "{reduction}" instead'


def _fields_at(model: type[BaseModel] | None, path: tuple[int | str, ...]) -> list[str]:
    """The field names of the model at `path` inside `model` (through fields, list items and dict values), or []
    where no model is there."""
    node: Any = model
    for part in path:
        node = next((step for arg in _members(node) if (step := _step(arg, part)) is not None), None)
        if node is None:
            return []
    found = [arg for arg in _members(node) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return list(found[0].model_fields) if found else []


def _members(annotation: Any) -> list[Any]:
    """The types a value of `annotation` may have: the members of a union, `Annotated` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _step(annotation: Any, part: int | str) -> Any:
    """The annotation of what `part` selects in a value of `annotation`, or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(part, int) and origin is list and args:
        return args[0]
    if isinstance(part, str) and origin is dict and len(args) == 2:
        return args[1]
    return None


class LossResponse(BaseModel):
    """A loss result. Every tensor is a number/nested array, or a base64 object with output_encoding=base64."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"loss": 0.345, "shape": [], "dtype": "float32", "device": "cpu"}}
    )

    loss: Any = Field(description="The loss: a number (reduced) or a nested array (reduction 'none').")
    shape: list[int] = Field(description="Shape of the loss tensor; [] for a reduced loss.")
    dtype: str = Field(description="dtype of the loss tensor.")
    grad: dict[str, Any] | None = Field(None, description="Gradients by argument name, when asked for.")
    device: str = Field(description="Where the loss was computed: cpu, cuda:0, ...")
    warnings: list[str] | None = Field(None, description="Warnings torch would have printed (e.g. broadcasting).")
    stats: Stats | None = Field(None, description="The loss's sufficient statistics, with return_stats.")


class EvaluateResult(BaseModel):
    """One entry of a /v1/evaluate response: a result (status 200), or a problem (type, title, status, ...)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="The loss's canonical name.")
    status: int = Field(description="200 for a result; the problem's status otherwise.")
    loss: Any = Field(None, description="The loss, for a result.")
    shape: list[int] | None = Field(None, description="Shape of the loss, for a result.")
    dtype: str | None = Field(None, description="dtype of the loss, for a result.")
    device: str | None = Field(None, description="Where it was computed, for a result.")
    grad: dict[str, Any] | None = Field(None, description="Gradients by argument name, when asked for.")
    warnings: list[str] | None = Field(None, description="Warnings torch would have printed.")
    stats: Stats | None = Field(None, description="The loss's sufficient statistics, with return_stats.")


class EvaluateResponse(BaseModel):
    """The results of /v1/evaluate, in request order."""

    results: list[EvaluateResult]


class ProblemDetail(BaseModel):
    """One offending field: `loc` is its path in the request."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemDetail] = []


def catalog_entry(spec: LossSpec) -> dict[str, Any]:
    """The public description of one loss, as `GET /v1/losses/{name}` returns it."""
    params = spec.params.model_json_schema()
    params.pop("title", None)
    params.pop("description", None)
    return {
        "name": spec.name,
        "summary": spec.summary,
        "description": spec.description,
        "torch": spec.torch_ref,
        "aliases": list(spec.aliases),
        "tensors": [
            {
                "name": a.name,
                "kind": a.kind.value,
                "shape": a.shape,
                "differentiable": a.grad,
                "required": a.required,
                "description": a.doc,
            }
            for a in spec.tensors
        ],
        "parameters": params,
        "reductions": list(spec.reductions),
        "default_reduction": spec.params.model_fields["reduction"].default,
        "gradients": GRAD_NOTE,
        "stats": spec.stats.doc,
    }
