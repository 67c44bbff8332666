"""The gRPC server: `inference.GRPCInferenceService`, health and reflection, in the process and on the event loop
that serve HTTP.

A thin adapter, like the HTTP routes: it turns messages into the data plane's inputs (`service.oip.plan` for a
model's inference, `DataPlane.decoded_batch` for a session's batch), schedules them as HTTP requests are
(`AppState.schedule`: inline when small, else in a thread under the concurrency, queue and time limits, with the
client's deadline as the timeout when it is shorter), and renders errors from the one error table
(`service.api.errors.grpc_code`) with the same wording as HTTP. Each call is counted in the metrics and written
to the access log with its request id (`x-request-id` metadata, or a generated one, returned in the trailing
metadata). API keys are checked on every method but health and reflection, as `authorization: Bearer <key>`
metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import codec, oip
from service.api.deps import AppState
from service.api.edge import HELD_ANSWER_BYTES, REQUEST_ID, InflightShare, RequestIds, record, valid_key
from service.api.errors import grpc_code
from service.compute import LossResult, RawTensor
from service.dataplane import Batch, DataPlane, Job
from service.errors import InvalidRequest, LossdError, RequestTimeout, Unauthorized, UnknownLoss, without_frames
from service.losses.registry import LossSpec
from service.rpc import grpc_service_pb2 as pb
from service.rpc import wire
from service.sessions.store import feed

log = logging.getLogger("lossd")
T = TypeVar("T")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""`inference.GRPCInferenceService`."""
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION = f"/{reflection.SERVICE_NAME}/"
"""Reflection describes the service, as /openapi.json does over HTTP: it needs no API key (it counts as a call)."""
STREAM = f"/{SERVICE}/ModelStreamInfer"


def _param(value: Any) -> Any:
    """An `InferParameter`'s value (bool, int, str or float), or None when it holds none."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _inputs(
    plane: DataPlane, request: Any, blobs: list[memoryview], check: Callable[[dict[str, RawTensor], str, int], None]
) -> dict[str, RawTensor]:
    """Each input from its `raw_input_contents` (`blobs`, views of the message's bytes, without a per-element
    loop) or from its typed `contents`; `check` refuses a name before it is read."""
    if blobs and len(blobs) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents holds {len(blobs)} tensors for {len(request.inputs)} inputs: give one per input, "
            "in the order of inputs",
            loc=("raw_input_contents",),
        )
    raw: dict[str, RawTensor] = {}
    for i, item in enumerate(request.inputs):
        check(raw, item.name, i)
        shape = list(item.shape)
        if blobs:
            if item.HasField("contents"):
                raise InvalidRequest(
                    f"{item.name}: give its values in raw_input_contents or in contents, not both",
                    loc=("inputs", i, "contents"),
                )
            tensor = codec.decode_v2(
                item.name, item.datatype, shape, None, blobs[i], plane.limits, "raw_input_contents"
            )
        else:
            tensor = codec.decode_v2_contents(item.name, item.datatype, shape, item.contents, plane.limits)
        raw[item.name] = tensor
    return raw


def _outputs(response: Any, outputs: list[oip.RawOutput], info: dict[str, Any]) -> None:
    """Add `outputs` to `response` as Triton does: their metadata in `outputs`, their bytes in
    `raw_output_contents`."""
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.data)
        info["bytes_out"] += len(output.data)


def _infer_response(
    spec: LossSpec, request_id: str, outputs: list[str], info: dict[str, Any], result: LossResult
) -> Any:
    response = pb.ModelInferResponse(model_name=spec.name, model_version=oip.VERSION, id=request_id)
    if result.warnings:
        response.parameters["warnings"].string_param = " ".join(result.warnings)
    _outputs(response, oip.raw_outputs(oip.output_tensors(result), outputs), info)
    return response


def _batch_response(request: Any, session_id: str, batch: Batch, applied: bool, info: dict[str, Any]) -> Any:
    """A session batch's answer: its outputs (`oip.batch_tensors`) and whether it was a duplicate."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=oip.VERSION, id=batch.batch_id)
    response.parameters["sequence_id"].string_param = session_id
    response.parameters["duplicate"].bool_param = not applied
    warnings = [w for ws in batch.warnings for w in ws]
    if warnings:
        response.parameters["warnings"].string_param = " ".join(warnings)
    _outputs(response, oip.raw_outputs(oip.batch_tensors(batch), ["loss", "stats"]), info)
    return response


class InferenceService:
    """`inference.GRPCInferenceService` over one app's state (its data plane, limits, metrics and sessions).

    `ModelInferRequest`s arrive as the bytes of the message (see `_add_to`): their size is known without
    serializing them again, and a large one is parsed in a worker thread, not on the event loop."""

    def __init__(self, state: AppState):
        self.state = state
        self.plane = state.plane
        self.ids = RequestIds()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return await self._call(context, "ServerLive", lambda info: _ready(pb.ServerLiveResponse(live=True)))

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def ready(info: dict[str, Any]) -> Any:
            return pb.ServerReadyResponse(ready=await self.state.not_ready() is None)

        return await self._call(context, "ServerReady", ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        def ready(info: dict[str, Any]) -> Awaitable[Any]:
            oip.model(self.plane.registry, request.name, request.version, "name")
            return _ready(pb.ModelReadyResponse(ready=True))

        return await self._call(context, "ModelReady", ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return await self._call(
            context, "ServerMetadata", lambda info: _ready(pb.ServerMetadataResponse(**oip.server_metadata()))
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        def metadata(info: dict[str, Any]) -> Awaitable[Any]:
            document = oip.model_metadata(oip.model(self.plane.registry, request.name, request.version, "name"))
            for side in ("inputs", "outputs"):  # `optional` is the HTTP document's alone
                document[side] = [{k: v for k, v in t.items() if k != "optional"} for t in document[side]]
            return _ready(pb.ModelMetadataResponse(**document))

        return await self._call(context, "ModelMetadata", metadata)

    async def ModelInfer(self, data: bytes, context: Any) -> Any:
        async def infer(info: dict[str, Any]) -> Any:
            with self._holding(data, info) as share:
                return await self._answer(*await self._parse(data, share), context, info)

        return await self._call(context, "ModelInfer", infer)

    async def ModelStreamInfer(self, messages: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        """Each request answered in order; an error answers that request (`error_message`) and the stream goes
        on. A request with a `sequence_id` parameter feeds that session, its `id` as the batch id."""
        stream_id = self._request_id(context)
        context.set_trailing_metadata((("x-request-id", stream_id),))
        idle = self.state.settings.grpc_stream_idle_s
        incoming = aiter(messages)
        n = 0
        while True:
            try:
                data = await asyncio.wait_for(anext(incoming), idle)
            except StopAsyncIteration:
                return
            except TimeoutError:
                detail = f"the stream sent no request for {idle:g} s (LOSSD_GRPC_STREAM_IDLE_S)"
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, detail, (("x-request-id", stream_id),))
            n += 1
            info = self._info(f"{stream_id}:{n}")
            start = time.perf_counter()
            request = pb.ModelInferRequest()
            try:
                with self._holding(data, info) as share:
                    request, blobs = await self._parse(data, share)
                    response = await self._answer(request, blobs, context, info)
                info["status"] = "OK"
                answer = pb.ModelStreamInferResponse(infer_response=response)
            except LossdError as exc:
                info["status"] = grpc_code(exc)
                answer = _stream_error(request, _message(exc), info["status"], getattr(exc, "retry_after", None))
            except Exception as exc:
                info["status"] = "INTERNAL"
                log.error(
                    "unexpected error in gRPC ModelStreamInfer", exc_info=exc, extra={"request_id": info["request_id"]}
                )
                answer = _stream_error(request, _internal(info), "INTERNAL")
            except asyncio.CancelledError:  # the client left, or its deadline passed
                info["status"] = _cancelled(context)
                self._record(STREAM, info, time.perf_counter() - start)
                raise
            self._record(STREAM, info, time.perf_counter() - start)
            yield answer

    async def _answer(self, request: Any, blobs: list[memoryview], context: Any, info: dict[str, Any]) -> Any:
        """A model's inference, or with a `sequence_id` parameter a batch of that session (tritonclient's
        `infer(sequence_id=...)` sends it unary, its `async_stream_infer` on the stream)."""
        oip.check_parameters(request.parameters)
        if "sequence_id" in request.parameters:
            return await self._batch(request, blobs, context, info)
        return await self._infer(request, blobs, context, info)

    async def _infer(self, request: Any, blobs: list[memoryview], context: Any, info: dict[str, Any]) -> Any:
        spec = oip.model(self.plane.registry, request.model_name, request.model_version)
        info["loss"] = spec.name
        parameters = {key: _param(value) for key, value in request.parameters.items()}
        outputs = [output.name for output in request.outputs] or ["loss"]
        plane = self.plane

        def read() -> Job[Any]:
            raw = _inputs(plane, request, blobs, partial(oip.check_input, spec))
            job = oip.plan(plane, spec, parameters, raw, outputs, "binary")
            return job.then(partial(_infer_response, spec, request.id, outputs, info))

        weight = 2 if any(name.startswith("grad_") for name in outputs) else 1
        return await self._schedule(read, context, info, weight)

    async def _batch(self, request: Any, blobs: list[memoryview], context: Any, info: dict[str, Any]) -> Any:
        session_id = str(_param(request.parameters["sequence_id"]))
        if not request.id:
            raise InvalidRequest("a request with a sequence_id is a batch of that session: set its id, the batch id")
        plane = self.plane

        async def compute(losses: list[dict[str, Any]]) -> Batch:
            names = [definition["name"] for definition in losses]
            try:  # a loss's name or alias
                named = plane.registry.get(request.model_name).name
            except UnknownLoss:
                named = None
            if named not in names:
                raise InvalidRequest(
                    f"session {session_id} computes {', '.join(names)}: model_name must name one of them",
                    loc=("model_name",),
                )
            info["loss"] = named

            def read() -> Job[Batch]:
                return plane.decoded_batch(losses, request.id, _inputs(plane, request, blobs, oip.check_distinct))

            return await self._schedule(read, context, info)

        _, batch, applied = await feed(self.state.sessions, session_id, compute)
        return _batch_response(request, session_id, batch, applied, info)

    @contextlib.contextmanager
    def _holding(self, data: bytes, info: dict[str, Any]) -> Iterator[InflightShare]:
        """The message's bytes held against the in-flight bound while it is read and computed (its share, to which
        reading it adds what parsing builds)."""
        info["bytes_in"] = len(data)
        share = self.state.inflight.share()
        try:
            refusal = share.admit(len(data))
            if refusal is not None:
                raise refusal
            yield share
        finally:
            share.close()

    async def _schedule(self, read: Callable[[], Job[T]], context: Any, info: dict[str, Any], weight: int = 1) -> T:
        """Read and compute a message (held: `_holding`) as HTTP bodies are, within the client's deadline."""
        return await self.state.schedule(read, info["bytes_in"], weight, context.time_remaining())

    async def _call(self, context: Any, method: str, work: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        """Run one unary call: its request id, its error as a status code, its metrics and access log line."""
        info = self._info(self._request_id(context))
        trailers: list[tuple[str, str]] = [("x-request-id", info["request_id"])]
        start = time.perf_counter()
        try:
            result = await work(info)
            info["status"] = "OK"
            context.set_trailing_metadata(tuple(trailers))
            self._hold_answer(info["bytes_out"], context)
            return result
        except LossdError as exc:
            info["status"] = code = grpc_code(exc)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                trailers.append(("retry-after", str(retry_after)))
            await context.abort(grpc.StatusCode[code], _message(without_frames(exc)), tuple(trailers))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            info["status"] = "INTERNAL"
            log.error("unexpected error in gRPC %s", method, exc_info=exc, extra={"request_id": info["request_id"]})
            await context.abort(grpc.StatusCode.INTERNAL, _internal(info), tuple(trailers))
        except asyncio.CancelledError:  # the client left, or its deadline passed
            info["status"] = _cancelled(context)
            raise
        finally:
            self._record(f"/{SERVICE}/{method}", info, time.perf_counter() - start)
        raise AssertionError("unreachable: abort raises")

    def _hold_answer(self, nbytes: int, context: Any) -> None:
        """A large answer counts in the in-flight bound until its call is over, which is when gRPC's core has taken
        it into its buffers (not when the client has: a client that gives it no HTTP/2 window leaves it there, outside
        the bound, until its connection closes or reaches `LOSSD_GRPC_MAX_CONNECTION_AGE_S`)."""
        if nbytes >= HELD_ANSWER_BYTES:
            share = self.state.inflight.share()
            share.hold(nbytes)
            context.add_done_callback(lambda _: share.close())

    async def _parse(self, data: bytes, share: InflightShare) -> tuple[Any, list[memoryview]]:
        """A `ModelInferRequest` from its bytes, its raw contents as views of them (`wire.parse`), what parsing its
        typed contents builds taken from `share` first: right here when small, else in a worker thread."""
        if len(data) < self.state.settings.inline_max_bytes:
            return wire.parse(data, share.take)
        return await anyio.to_thread.run_sync(wire.parse, data, share.take, limiter=self.state.threads)

    def _request_id(self, context: Any) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str) and REQUEST_ID.fullmatch(value):
                return value
        return self.ids.next()

    @staticmethod
    def _info(request_id: str) -> dict[str, Any]:
        return {"request_id": request_id, "status": "CANCELLED", "loss": "", "bytes_in": 0, "bytes_out": 0}

    def _record(self, route: str, info: dict[str, Any], seconds: float) -> None:
        """The call in the metrics (`status` is the gRPC code's name) and the access log, as HTTP requests are."""
        record(self.state.metrics, self.state.access_log, info, "gRPC", route, route, info["status"], seconds)


MESSAGE_CHARS = 2000
"""The longest error message sent: it travels in a trailer, and gRPC refuses trailers past 8 KiB (the request's
own strings, which messages quote, may be longer)."""


def _message(exc: LossdError) -> str:
    detail = exc.detail
    return detail if len(detail) <= MESSAGE_CHARS else detail[: MESSAGE_CHARS - 1] + "…"


def _stream_error(request: Any, message: str, code: str, retry_after: int | None = None) -> Any:
    """A stream's answer to a request that failed: the message, the request's model and id, and in its
    parameters the `status` (the code a unary call would end with) and `retry_after` for retryable ones."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.parameters["status"].string_param = code
    if retry_after is not None:
        response.parameters["retry_after"].int64_param = retry_after
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


def _cancelled(context: Any) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _internal(info: dict[str, Any]) -> str:
    return f"the server failed to handle this request; quote request id {info['request_id']}"


async def _ready(value: T) -> T:
    return value


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The standard health service, mirroring readiness (`/readyz`): SERVING when ready, NOT_SERVING while not
    (the device failed, the session store is unreachable, the server drains). It knows the server ("") and
    `inference.GRPCInferenceService`."""

    WATCH_INTERVAL_S = 1.0
    WATCHERS = 4
    """Watch streams at once (health is public: without a bound, idle watchers would take gRPC's calls)."""

    def __init__(self, state: AppState):
        self.state = state
        self.watching = 0

    async def _status(self, service: str) -> Any:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        ready = await self.state.not_ready() is None
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        status = await self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The status now, then each change (checked every second), until the client leaves; at most `WATCHERS`
        watch at once (RESOURCE_EXHAUSTED beyond: `Check` is what probes use)."""
        if self.watching >= self.WATCHERS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.watching} clients watch already; use Check")
        self.watching += 1
        try:
            last = None
            while True:
                status = await self._status(request.service)
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
                await asyncio.sleep(self.WATCH_INTERVAL_S)
        finally:
            self.watching -= 1


EVICT_AFTER_S = 1.0
"""At its limit, a call that has had a request and has waited this long on its client may be ended for a new one
(as HTTP connections); one whose first request has not arrived may be at once."""


class _Evicted(RequestTimeout):
    """The call waited longest on its client when a new call needed its place."""


class _Pool:
    """Calls served at once, at most `limit`, each counted from its start (its headers), whatever its messages
    do; those waiting on their client (for a message, or to take an answer), for eviction."""

    def __init__(self, limit: int, name: str, setting: str, on_evict: Callable[[], None]):
        self.limit = limit
        self.name = name
        self.setting = setting
        self.on_evict = on_evict
        self.active = 0
        self.waiting: set[_Arrivals | _Sending] = set()

    def evict(self) -> bool:
        """End a call that waits on its client: first one whose first request has not arrived, however young (the
        oldest), else the one that has waited longest, over `EVICT_AFTER_S`: a stream between requests or with an
        answer its client has not taken. False when none qualifies. So calls opened anew and never sent lock
        nobody out, however often they are opened, and cannot take the places of streams between two requests."""
        oldest = asyncio.get_running_loop().time() - EVICT_AFTER_S
        victim, best = None, (True, oldest)
        for waiting in self.waiting:
            key = (isinstance(waiting, _Sending) or waiting.received > 0, waiting.since)
            if not waiting.evicted and (not key[0] or key[1] <= oldest) and key <= best:
                victim, best = waiting, key
        if victim is None:
            return False
        victim.evict(self)
        self.on_evict()
        return True


class _Arrivals:
    """A call's request messages as its handler reads them, noting since when it has waited for the next."""

    def __init__(self, messages: AsyncIterator[Any], pool: _Pool):
        self.messages = messages
        self.pool = pool
        self.since = 0.0
        self.evicted = False
        self.received = 0
        """Messages that have arrived."""
        self._task: asyncio.Task[Any] | None = None

    def __aiter__(self) -> _Arrivals:
        return self

    async def __anext__(self) -> Any:
        self._task = asyncio.current_task()
        self.since = asyncio.get_running_loop().time()
        self.pool.waiting.add(self)
        try:
            message = await anext(self.messages)
            self.received += 1
            return message
        except asyncio.CancelledError:
            if not self.evicted:
                raise
            if self._task is not None:
                self._task.uncancel()
            detail = (
                f"the call waited longest on its client's next message when the server, at its limit of "
                f"{self.pool.limit} {self.pool.name} ({self.pool.setting}), needed its place"
            )
            raise _Evicted(detail, loc=("request",)) from None
        finally:
            self.pool.waiting.discard(self)

    def evict(self, pool: _Pool) -> None:
        self.evicted = True
        pool.waiting.discard(self)
        if self._task is not None:
            self._task.cancel()


class _Sending:
    """A streaming call's answer that its client has not taken yet (gRPC sends it as HTTP/2 flow control allows):
    the call waits on its client meanwhile. Evicting it gives its place back and cancels the call (an async
    generator paused at `yield` cannot be made to raise)."""

    def __init__(self, task: asyncio.Task[Any], release: Callable[[], None]):
        self.task = task
        self.release = release
        self.since = 0.0
        self.evicted = False

    def evict(self, pool: _Pool) -> None:
        self.evicted = True
        pool.waiting.discard(self)
        self.release()
        self.task.cancel()


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """What every call passes: an API key (`authorization: Bearer <key>` metadata) when keys are set (health and
    reflection need none), and a place among the calls served at once: `LOSSD_GRPC_MAX_CONCURRENT_RPCS`, and
    `HEALTH_CALLS` more for health checks alone, so that probes answer when the others are all taken, and
    `REFLECTION_CALLS` for reflection (RESOURCE_EXHAUSTED beyond).

    A call takes its place when it starts, before its request arrives: every method reads its request messages
    here, as a stream (a unary request is read with `LOSSD_READ_TIMEOUT_S` to arrive whole, else
    DEADLINE_EXCEEDED). At the limit, a call that waits on its client is ended for the new one (`_Pool.evict`: one
    whose request has not arrived, at once; a stream idle between requests, DEADLINE_EXCEEDED, or whose answer its
    client has not taken, cancelled, after `EVICT_AFTER_S`): calls that start and never send, or never read,
    cannot lock out other clients, or the probes, however often they are opened anew. A unary request that does not
    parse is INVALID_ARGUMENT."""

    HEALTH_CALLS = 16
    REFLECTION_CALLS = 4
    """Reflection needs no API key: its calls have places of their own, so that they cannot take the others'."""

    def __init__(self, state: AppState):
        self.keys = [key.encode() for key in state.api_keys]
        self.state = state
        self.read_timeout_s = state.settings.read_timeout_s
        evicted = state.metrics.rejections.labels(reason=RequestTimeout.slug).inc
        self.calls = _Pool(state.settings.grpc_max_concurrent_rpcs, "calls", "LOSSD_GRPC_MAX_CONCURRENT_RPCS", evicted)
        self.health = _Pool(self.HEALTH_CALLS, "health checks", "the health checks' own limit", evicted)
        self.reflection = _Pool(self.REFLECTION_CALLS, "reflection calls", "reflection's own limit", evicted)
        self.ids = RequestIds()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(f"/{HEALTH}/"):
            return self._counted(handler, self.health)
        if details.method.startswith(REFLECTION):
            return self._counted(handler, self.reflection)
        if self.keys and not any(
            key == "authorization" and valid_key(self.keys, str(value).encode("latin-1", "replace"))
            for key, value in details.invocation_metadata or ()
        ):
            self.state.metrics.rejections.labels(reason=Unauthorized.slug).inc()
            message = "a valid API key is required: send `authorization: Bearer <key>` metadata"
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, message, self.ids.next())
        return self._counted(handler, self.calls)

    def _counted(self, handler: Any, pool: _Pool) -> Any:
        """`handler` as a request-streaming handler that holds a place in `pool` from the call's start, reads its
        request messages through `_Arrivals`, and ends the call with a status when they do not come."""
        response_streaming = handler.response_streaming
        if handler.request_streaming:
            behavior = handler.stream_stream if response_streaming else handler.stream_unary

            def read(messages: AsyncIterator[Any], context: Any) -> Awaitable[Any]:
                return _ready(_Arrivals(messages, pool))

            deserializer = handler.request_deserializer
        else:
            behavior = handler.unary_stream if response_streaming else handler.unary_unary
            read, deserializer = partial(self._one_message, pool, handler.request_deserializer), None

        async def unary(messages: AsyncIterator[Any], context: Any) -> Any:
            await self._enter(pool, context)
            try:
                return await behavior(await read(messages, context), context)
            except _Evicted as exc:
                await self._evicted(exc, context)
            except grpc.aio.AbortError as exc:
                # gRPC's call state keeps the abort, in a reference cycle: not with the frames under here (the request)
                without_frames(exc)
                raise
            finally:
                pool.active -= 1

        async def streaming(messages: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            await self._enter(pool, context)
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    pool.active -= 1

            task = asyncio.current_task()
            sending = _Sending(task, release) if task is not None else None
            try:
                async for response in behavior(await read(messages, context), context):
                    if sending is not None:  # until gRPC asks for the next: the client has taken this one
                        sending.since = asyncio.get_running_loop().time()
                        pool.waiting.add(sending)
                    try:
                        yield response
                    finally:
                        pool.waiting.discard(sending)
            except _Evicted as exc:
                await self._evicted(exc, context)
            finally:
                release()

        kind = (True, response_streaming)
        return HANDLERS[kind](
            streaming if response_streaming else unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _one_message(
        self, pool: _Pool, deserializer: Callable[[bytes], Any] | None, messages: AsyncIterator[Any], context: Any
    ) -> Any:
        """A unary call's request, which must arrive whole within `LOSSD_READ_TIMEOUT_S` of the call's start."""
        arrivals = _Arrivals(messages, pool)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                data = await anext(arrivals)
                more = await anext(arrivals, None)  # the end of the client's stream, sent with its message
        except TimeoutError:
            self.state.metrics.rejections.labels(reason=RequestTimeout.slug).inc()
            detail = f"the request did not arrive within {self.read_timeout_s:g} s of the call (LOSSD_READ_TIMEOUT_S)"
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, detail)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        if more is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a unary call takes one request message")
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except DecodeError:  # INVALID_ARGUMENT, not the UNKNOWN gRPC would answer
            message = getattr(getattr(deserializer, "__self__", None), "__name__", "request message")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the message is not a {message}")

    @staticmethod
    async def _evicted(exc: _Evicted, context: Any) -> None:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, without_frames(exc).detail)

    async def _enter(self, pool: _Pool, context: Any) -> None:
        if pool.active >= pool.limit and not pool.evict():
            self.state.metrics.rejections.labels(reason="overloaded").inc()
            detail = f"{pool.active} gRPC {pool.name} are being served, the most {pool.setting} allows"
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{detail}; retry shortly", (("retry-after", "1"),))
        pool.active += 1


def _refusing(handler: Any, code: grpc.StatusCode, message: str, request_id: str) -> Any:
    """A handler of the same kind as `handler` that answers `code` with `message` (and the request id)."""
    trailers = (("x-request-id", request_id),)

    async def deny(request: Any, context: Any) -> None:
        await context.abort(code, message, trailers)

    async def deny_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(code, message, trailers)
        yield  # pragma: no cover  (abort raises)

    kind = (handler.request_streaming, handler.response_streaming)
    return HANDLERS[kind](
        deny_stream if kind[1] else deny,
        request_deserializer=None,  # the request is never read: a message that does not parse is refused alike
        response_serializer=handler.response_serializer,
    )


HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""The handler of each kind of method, by (request streaming, response streaming)."""


def _add_to(server: grpc.aio.Server, servicer: InferenceService) -> None:
    """Register every method of the service, from the proto's descriptor. `ModelInferRequest`s arrive as bytes,
    parsed by the servicer (their size known, a large one in a worker thread); the gate parses the others."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = HANDLERS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=None if request is pb.ModelInferRequest else request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def options(state: AppState) -> list[tuple[str, Any]]:
    """The server's channel options: lossd's message limits instead of gRPC's 4 MiB, and the port shared by the
    worker processes when there are several (else taking a port in use fails instead of sharing it)."""
    settings = state.settings
    return [
        ("grpc.max_receive_message_length", settings.grpc_message_limit),
        ("grpc.max_send_message_length", -1),  # the response is bounded by LOSSD_MAX_RESPONSE_BYTES before compute
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # a connection's life is bounded: answers its client never takes stay in gRPC's core until it closes
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(max(settings.write_timeout_s, settings.request_timeout_s) * 1000)),
        ("grpc.keepalive_time_ms", int(settings.write_timeout_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        # a large message in large frames rather than 16 KiB ones (the flow-control window stays gRPC's: a larger
        # read-ahead per stream, which sped 8 MB messages up, would let each stream hold that much before lossd
        # admits the call)
        ("grpc.http2.max_frame_size", 2**24 - 1),
    ]


async def start(state: AppState) -> grpc.aio.Server:
    """Serve gRPC for `state`'s app on `LOSSD_HOST:LOSSD_GRPC_PORT` on the running event loop."""
    settings = state.settings
    server = grpc.aio.server(
        interceptors=[Gate(state)],
        options=options(state),
    )
    _add_to(server, InferenceService(state))
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(state), server)
    reflection.enable_server_reflection([SERVICE, HEALTH, reflection.SERVICE_NAME], server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(
            f"cannot serve gRPC on {address} (is the port in use?); LOSSD_GRPC_PORT=0 turns gRPC off"
        ) from exc
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService, health, reflection) on %s", address)
    return server
