"""Domain errors: what went wrong, where (`loc`), and what was expected. No HTTP here.

Every error a client can cause is a `LossdError` subclass with a stable `slug` (its problem type) and
a `title`. The API layer maps each class to an HTTP status in one table (`service.api.errors`).
A `loc` is a path into the request, starting at the argument name: `("target", 3)` is the fourth
element of `target`, `("beta",)` the parameter `beta`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

Loc = tuple[str | int, ...]


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to `word` (a misspelt loss or field name), best first: difflib's, cutoff 0.6."""
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)


def did_you_mean(suggestions: Sequence[str]) -> str:
    """`; did you mean 'a', 'b'?` to end a message with close matches, or nothing when there are none."""
    return f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""


def quoted(name: str, limit: int = 100) -> str:
    """A name from the request, quoted: whole up to `limit` characters, else its start and its length."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


def dotted(loc: Loc) -> str:
    """A place in the request as a message leads with it: `("input", "data", 3)` is `input.data[3]`,
    `("target", 0, 1)` is `target[0][1]`, `("beta",)` is `beta`. Over the v2 protocol and gRPC, where a client
    sees only the message, it is the only word of where."""
    head, *rest = loc
    return str(head) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


class SettingError(ValueError):
    """A setting the service cannot start with (a CUDA device that is not there, a key file that is missing),
    found at start-up: `python -m service` prints it as one line naming the variable."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


@dataclass(frozen=True)
class ErrorDetail:
    """One thing wrong with a request: where it is and what was wrong with it."""

    loc: Loc
    msg: str


class LossdError(Exception):
    """Base of every error a client can cause. `detail` is one sentence for humans."""

    slug: ClassVar[str] = "error"
    title: ClassVar[str] = "Error"

    def __init__(
        self,
        detail: str,
        loc: Loc = (),
        errors: Sequence[ErrorDetail] | None = None,
        *,
        limit: int | None = None,
        actual: int | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.errors: list[ErrorDetail] = list(errors) if errors is not None else [ErrorDetail(loc, detail)]
        self.limit = limit
        """For errors about a configured limit: the limit, and what the request asked for."""
        self.actual = actual

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (a worker process raises, the server answers): every attribute travels."""
        return _rebuild, (type(self), self.detail, dict(self.__dict__))


E = TypeVar("E", bound=BaseException)


def without_frames(exc: E) -> E:
    """`exc`, and the exceptions it was raised from, without their tracebacks: the frames they keep hold a
    request's data (its body, its tensors), and a reference cycle through them (gRPC's call state holds its abort,
    which holds the error it was raised in) would keep that memory until the garbage collector's next full pass.
    For errors a client caused, whose tracebacks nothing reads."""
    seen: set[int] = set()
    links: list[BaseException | None] = [exc]
    while links:
        link = links.pop()
        if link is not None and id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            links += [link.__cause__, link.__context__]
    return exc


def _rebuild(cls: type[LossdError], detail: str, attributes: dict[str, Any]) -> LossdError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, detail)
    exc.__dict__.update(attributes)
    return exc


class MalformedBody(LossdError):
    """The body could not be parsed as JSON (or is not a JSON object)."""

    slug = "malformed-body"
    title = "Malformed request body"


class UnsupportedMediaType(LossdError):
    """The request declared a content type this endpoint does not read."""

    slug = "unsupported-media-type"
    title = "Unsupported media type"


class NotFound(LossdError):
    """The path names something that does not exist (a model version, ...)."""

    slug = "not-found"
    title = "Not found"


class UnknownLoss(NotFound):
    """No loss of that name is registered; `suggestions` holds close matches."""

    slug = "unknown-loss"
    title = "Unknown loss"

    def __init__(self, name: str, suggestions: Sequence[str]):
        super().__init__(f"no loss named {quoted(name)}{did_you_mean(suggestions)}", loc=("name",))
        self.name = name
        self.suggestions = list(suggestions)


class InvalidRequest(LossdError):
    """The request's fields do not match their schema: unknown, missing or out-of-range fields."""

    slug = "invalid-request"
    title = "Invalid request"


class InvalidTensor(LossdError):
    """A tensor payload cannot be read: ragged, not numbers, bad base64, data/shape disagree..."""

    slug = "invalid-tensor"
    title = "Invalid tensor"


class DtypeMismatch(LossdError):
    """A tensor has a dtype the argument does not take (floats where class indices belong, ...)."""

    slug = "wrong-dtype"
    title = "Wrong tensor dtype"


class ShapeMismatch(LossdError):
    """A tensor's shape breaks the loss's shape rule."""

    slug = "shape-mismatch"
    title = "Tensor shape mismatch"


class ValueOutOfRange(LossdError):
    """A tensor holds a value outside the range the loss accepts (a class index >= C, ...)."""

    slug = "value-out-of-range"
    title = "Tensor value out of range"


class TorchRejected(LossdError):
    """Torch itself refused the inputs after lossd's own checks passed; `detail` is torch's message."""

    slug = "rejected-by-torch"
    title = "Rejected by torch"


class PayloadTooLarge(LossdError):
    """The body, a tensor or a request is larger than the server accepts (`limit`, `actual`)."""

    slug = "payload-too-large"
    title = "Payload too large"


class Unauthorized(LossdError):
    """The request carries no valid API key (`Authorization: Bearer <key>`)."""

    slug = "unauthorized"
    title = "Unauthorized"


class Overloaded(LossdError):
    """More requests wait for compute than the queue holds; retry after `retry_after` seconds."""

    slug = "overloaded"
    title = "Server overloaded"
    retry_after = 1


class RequestTimeout(LossdError):
    """The client did not send its whole request (head and body) within the read deadline."""

    slug = "request-timeout"
    title = "Request timeout"


class HeadersTooLarge(LossdError):
    """The request line and headers (or a chunked body's trailers) exceed the configured size."""

    slug = "headers-too-large"
    title = "Request header fields too large"


class ComputeTimeout(LossdError):
    """The computation took longer than the configured timeout."""

    slug = "timeout"
    title = "Computation timed out"


class DeviceFailure(LossdError):
    """The compute device failed (a CUDA error); this process stops and its orchestrator restarts it."""

    slug = "device-failure"
    title = "Device failure"


class ResourceExhausted(LossdError):
    """The server ran out of memory for this request; a smaller request or a later retry may succeed."""

    slug = "resource-exhausted"
    title = "Insufficient resources"


class SessionNotFound(NotFound):
    """No session of that id: never created, deleted, or expired."""

    slug = "unknown-session"
    title = "Unknown session"


class Conflict(LossdError):
    """The request contradicts what the server holds: a batch id applied with other content, or session
    states with different loss definitions."""

    slug = "conflict"
    title = "Conflict"


class SessionFull(LossdError):
    """A session holds as many batches or groups as it may (`limit`, `actual`)."""

    slug = "session-full"
    title = "Session full"


class TooManySessions(LossdError):
    """The server holds as many sessions as it may; delete finished ones or retry after some expire."""

    slug = "too-many-sessions"
    title = "Too many sessions"


class StoreUnavailable(LossdError):
    """The session store (Redis) cannot be reached. A batch may or may not have been applied: retry it with the
    same batch id after `retry_after` seconds, and it counts once."""

    slug = "store-unavailable"
    title = "Session store unavailable"
    retry_after = 1


class NotConfigured(LossdError):
    """The server is not configured for this request (sessions with several workers need Redis)."""

    slug = "not-configured"
    title = "Not configured"


ALL_ERRORS: tuple[type[LossdError], ...] = (
    MalformedBody,
    UnsupportedMediaType,
    NotFound,
    UnknownLoss,
    InvalidRequest,
    InvalidTensor,
    DtypeMismatch,
    ShapeMismatch,
    ValueOutOfRange,
    TorchRejected,
    PayloadTooLarge,
    ResourceExhausted,
    Unauthorized,
    Overloaded,
    RequestTimeout,
    HeadersTooLarge,
    ComputeTimeout,
    DeviceFailure,
    SessionNotFound,
    Conflict,
    SessionFull,
    TooManySessions,
    StoreUnavailable,
    NotConfigured,
)
"""Every concrete error class, for the problem table and the problem-type documentation route."""
