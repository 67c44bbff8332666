"""Service settings: one pydantic-settings object, read from `LOSSD_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can tune. Each field is `LOSSD_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOSSD_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface to bind. Use 0.0.0.0 inside a container."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""

    device: str = "auto"
    """Where losses run: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""

    workers: int = Field(1, ge=1)
    """Worker processes; above 1 they run under gunicorn (metrics summed over all workers). Each holds its own
    copy of torch (and CUDA context)."""

    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    """Log level for the service and uvicorn."""

    access_log: bool = True
    """One JSON line per request on stderr (at log level info and below), written in batches every 50 ms."""

    opentelemetry: bool = False
    """FastAPI's built-in OpenTelemetry instrumentation (request spans, metrics and logs sent to the globally
    configured OpenTelemetry providers; an OpenTelemetry SDK must be installed and configured). Off by default:
    lossd has its own Prometheus metrics and access log, and the check costs every request a few microseconds."""

    max_concurrency: int = Field(4, ge=1)
    """Requests decoded and computed at the same time per worker, in threads (the rest wait their turn)."""

    max_queue: int = Field(32, ge=0)
    """Requests that may wait for a compute slot (a gradient request counts twice); beyond, 503 at once."""

    request_timeout_s: float = Field(60.0, gt=0)
    """Longest a request may wait and compute before a 504 (its slot is freed then)."""

    max_tensor_elements: int = Field(1 << 26, ge=1)
    """Elements in any one tensor, broadcast result or gradient (413 beyond)."""

    max_request_elements: int = Field(1 << 27, ge=1)
    """Elements in all the tensors of one request (413 beyond)."""

    max_dims: int = Field(32, ge=1, le=64)
    """Dimensions of a tensor, which is also the deepest JSON nesting read (422 beyond)."""

    max_evaluate_entries: int = Field(64, ge=1)
    """Losses in one /v1/evaluate request (413 beyond)."""

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

    malloc_arenas: int = Field(2, ge=0)
    """glibc malloc arenas (mallopt M_ARENA_MAX); few arenas keep big bodies fast. 0 keeps glibc's default."""

    torch_threads: int = Field(0, ge=0)
    """Intra-op threads for torch on CPU; 0 keeps torch's default (one per core)."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda"):
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
