"""Service settings: one pydantic-settings object, read from `LOSSD_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import SettingError

MAX_DIMS = 64
"""The most dimensions `LOSSD_MAX_DIMS` may allow."""


class Settings(BaseSettings):
    """Everything an operator can tune. Each field is `LOSSD_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOSSD_", extra="ignore", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to bind (`0.0.0.0` in a container, where the image sets it)."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""

    grpc_port: int = Field(8001, ge=0, le=65535)
    """TCP port of the gRPC service (the Open Inference Protocol's `inference.GRPCInferenceService`, with health
    checks and reflection) on the same interface; 0 turns gRPC off. With several workers, they share the port."""

    grpc_max_message_bytes: int | None = Field(None, ge=1024)
    """Largest gRPC request message accepted (RESOURCE_EXHAUSTED beyond). Unset: `LOSSD_MAX_BODY_BYTES`, rather
    than gRPC's own default of 4 MiB."""

    grpc_max_concurrent_rpcs: int = Field(32, ge=1)
    """gRPC calls (a stream counts as one) served at once per worker, each counted from its start; more are refused
    with RESOURCE_EXHAUSTED, unless a call at the limit waits on its client: one whose request has not arrived, or
    else a stream that has waited over a second (between requests, or with an answer not taken), is ended for the
    new one. A unary call's request must arrive within `LOSSD_READ_TIMEOUT_S`. Health checks have 16 places of their
    own, reflection 4. gRPC receives each message whole before lossd sees it, so this (plus the 20) times
    `LOSSD_GRPC_MAX_MESSAGE_BYTES` bounds the memory gRPC requests can hold."""

    grpc_max_connection_age_s: float = Field(600.0, gt=0)
    """A gRPC connection is asked to close (GOAWAY) after about this long (gRPC adds 10% jitter), and closed the
    longer of `LOSSD_WRITE_TIMEOUT_S` and `LOSSD_REQUEST_TIMEOUT_S` later whatever it still does (a
    `ModelStreamInfer` stream too: open a new one). Clients reconnect on their own, to any replica (so that
    long-lived channels spread over new replicas too), and answers a client never takes, which gRPC's core holds
    outside lossd's bounds, are freed by then. While calls are open, the connection is pinged every
    `LOSSD_WRITE_TIMEOUT_S`: a client that does not answer within 20 s is disconnected."""

    grpc_stream_idle_s: float = Field(60.0, gt=0)
    """A `ModelStreamInfer` stream that sends no request for this long is ended (DEADLINE_EXCEEDED), so that idle
    streams do not hold the calls of `LOSSD_GRPC_MAX_CONCURRENT_RPCS` forever."""

    device: str = "auto"
    """Where losses run: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`; an unavailable CUDA
    device fails start-up."""

    workers: int = Field(1, ge=1)
    """Worker processes. Above 1 they run under gunicorn: `/metrics` then sums every worker (through
    prometheus-client's multiprocess files in a private temporary folder), every limit and queue counts per
    worker, in-process sessions need `LOSSD_REDIS_URL` (501 without), and each worker holds its own copy of torch
    (about 250 MB) and CUDA context. On SIGTERM every worker turns not ready and drains."""

    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    """Log level for the service and uvicorn: `critical`, `error`, `warning`, `info`, `debug` or `trace` (in any
    case)."""

    access_log: bool = True
    """One JSON line per request on stderr (at log level info and below), written in batches every 50 ms."""

    opentelemetry: bool = False
    """FastAPI's built-in OpenTelemetry instrumentation (request spans, metrics and logs sent to the globally
    configured OpenTelemetry providers; an OpenTelemetry SDK must be installed and configured). Off by default:
    lossd has its own Prometheus metrics and access log, and the check costs every request a few microseconds."""

    max_concurrency: int = Field(4, ge=1)
    """Requests decoded and computed at the same time per worker, in threads off the event loop (the rest wait
    their turn)."""

    max_queue: int = Field(32, ge=0)
    """Requests that may wait for a compute slot (a gradient request counts twice); beyond, 503 at once."""

    request_timeout_s: float = Field(60.0, gt=0)
    """Longest a request may wait and compute before a 504. A computation in a worker process is killed then; one
    in a thread finishes in the background, keeping its place in the queue count until it ends."""

    max_tensor_elements: int = Field(1 << 26, ge=1)
    """Elements in any one tensor, broadcast result or gradient (413 beyond)."""

    max_request_elements: int = Field(1 << 27, ge=1)
    """Elements in all the tensors of one request (413 beyond)."""

    max_dims: int = Field(32, ge=1, le=MAX_DIMS)
    """Dimensions of a tensor, which is also the deepest JSON nesting read (422 beyond)."""

    max_evaluate_entries: int = Field(64, ge=1)
    """Losses in one /v1/evaluate request, and in one session (413 beyond)."""

    api_keys: str | None = None
    """API keys that `Authorization: Bearer <key>` must match on every route but health: comma-separated,
    or the path of a file with one key per line. Unset: no authentication."""

    cors_origins: str = ""
    """Comma-separated origins allowed by CORS (`*` for any); empty: CORS off."""

    drain_timeout_s: int = Field(30, ge=0)
    """On SIGTERM: seconds to let in-flight requests finish before stopping anyway."""

    max_body_bytes: int = Field(64 * 2**20, ge=1024)
    """Largest request body accepted, in bytes, also after decompressing a gzip or deflate body (413 beyond)."""

    inline_max_bytes: int = Field(64 * 1024, ge=0)
    """Plain (uncompressed) bodies smaller than this are decoded and validated on the event loop, which is
    faster than a thread hop; larger ones are read in a worker thread. 0 reads every body in a thread."""

    inline_max_elements: int = Field(1 << 16, ge=0)
    """Requests decoded on the event loop are computed there too when the loss's cost model predicts at
    most this many tensor elements (after broadcasting, gradients included); the rest go to the worker
    threads, under admission and the timeout. 0 computes everything in threads."""

    max_work_bytes: int = Field(1 << 30, ge=1 << 20)
    """Memory one computation may build (its tensors, torch's intermediates, gradients), as the loss's cost
    model predicts it from the shapes before torch runs (413 beyond)."""

    max_response_bytes: int = Field(512 * 2**20, ge=1024)
    """Largest response body, predicted from the output's size and encoding before computing (413 beyond)."""

    max_inflight_bytes: int = Field(256 * 2**20, ge=1024)
    """Request body bytes being received and processed at once, over all requests (declared Content-Length,
    or counted as a chunked body arrives), and answers of 1 MiB or more not yet drained to their clients; a
    request that would pass it gets a 503 before its body is read."""

    isolate_work_bytes: int = Field(64 * 2**20, ge=0)
    """Computations predicted to build more than this run in a worker process, which is killed (and
    replaced) on timeout or when it passes `LOSSD_WORKER_MEMORY_BYTES`; smaller ones run in threads. 0 sends
    everything that leaves the event loop to the worker processes."""

    worker_memory_bytes: int = Field(0, ge=0)
    """Memory a worker process may use beyond what it held when idle; past it, the process is killed and
    the request answered 503. 0: twice `LOSSD_MAX_WORK_BYTES`."""

    max_connections: int = Field(1024, ge=1)
    """Open client connections per worker process. At the limit, a connection that has never sent a whole request,
    or else one that has waited over a second on its client, makes room (408); when none does, the new one gets a
    503 and is closed."""

    read_timeout_s: float = Field(30.0, gt=0)
    """Longest a client may take to send a request's head and body, from its first byte (408 beyond, or
    the connection is closed)."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Size of a request's line and headers together (431 beyond)."""

    keep_alive_s: float = Field(5.0, gt=0)
    """Seconds an idle keep-alive connection stays open."""

    write_timeout_s: float = Field(60.0, gt=0)
    """While a response waits for its client to read it, the client must read some of it every this many seconds,
    else the connection is closed and the response dropped (nginx's `send_timeout`); when a request is refused for
    want of room in `LOSSD_MAX_INFLIGHT_BYTES`, every 2 s while room is wanted. A client that is not reading also
    counts as waiting at the connection limit. Over gRPC, see `LOSSD_GRPC_MAX_CONNECTION_AGE_S`."""

    redis_url: str | None = None
    """Where sessions live: `redis://[:password@]host:port/db` (or `rediss://` for TLS) keeps them in Redis, shared
    by every replica; unset keeps them in this process (lost on restart)."""

    redis_prefix: str = "lossd:"
    """Prefix of every Redis key lossd writes, so several deployments can share one Redis."""

    sessions_max: int = Field(100, ge=1)
    """Sessions held at once (429 beyond); in Redis, over every replica."""

    session_max_batches: int = Field(100_000, ge=1)
    """Batches one session may take (413 beyond): its batch ids are kept, for exactly-once accumulation."""

    session_max_groups: int = Field(10_000, ge=1)
    """Group totals one session may hold: its distinct group labels times its losses (413 beyond)."""

    session_max_ttl_s: int = Field(7 * 86400, ge=1)
    """Longest `ttl_s` a session may ask for (422 beyond); each batch renews the TTL."""

    malloc_arenas: int = Field(2, ge=0)
    """glibc malloc arenas (mallopt M_ARENA_MAX); few arenas keep big bodies fast. 0 keeps glibc's default."""

    torch_threads: int = Field(0, ge=0)
    """Intra-op threads for torch on CPU; 0 keeps torch's default (one per core)."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda"):
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")

    @model_validator(mode="after")
    def _admits_requests(self) -> Settings:
        """Refuse settings under which some valid request could never be admitted."""
        if self.max_concurrency + self.max_queue < 2:
            raise ValueError(
                "LOSSD_MAX_CONCURRENCY + LOSSD_MAX_QUEUE must be at least 2: a request that asks for gradients "
                "counts twice, and could never be admitted"
            )
        if self.max_inflight_bytes < self.max_body_bytes:
            raise ValueError(
                f"LOSSD_MAX_INFLIGHT_BYTES ({self.max_inflight_bytes}) is below LOSSD_MAX_BODY_BYTES "
                f"({self.max_body_bytes}): a body of the largest accepted size could never be admitted"
            )
        if self.worker_memory_bytes and self.worker_memory_bytes < self.max_work_bytes:
            raise ValueError(
                f"LOSSD_WORKER_MEMORY_BYTES ({self.worker_memory_bytes}) is below LOSSD_MAX_WORK_BYTES "
                f"({self.max_work_bytes}): admitted work would be killed"
            )
        return self

    def read_api_keys(self) -> list[str]:
        """The configured API keys: a comma-separated list, or a file with one key per line (a path starting with
        `/` or `./`, as a mounted Secret provides: it must be there). Read at start-up."""
        value = (self.api_keys or "").strip()
        if not value:
            return []
        if value.startswith(("/", "./")):
            path = Path(value)
            try:
                text = path.read_text()
            except OSError as exc:
                raise SettingError("LOSSD_API_KEYS", f"{value} is not a readable file ({exc.strerror})") from None
        else:
            text = value.replace(",", "\n")
        keys = [key.strip() for key in text.splitlines() if key.strip()]
        if not keys:
            raise SettingError("LOSSD_API_KEYS", "set, but holds no key")
        return keys

    @property
    def grpc_message_limit(self) -> int:
        """The largest gRPC request message, in bytes."""
        return self.grpc_max_message_bytes or self.max_body_bytes

    @property
    def worker_memory_cap(self) -> int:
        """The memory cap of each worker process, in bytes beyond its idle size."""
        return self.worker_memory_bytes or 2 * self.max_work_bytes
