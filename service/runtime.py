"""Process-level tuning done once at start-up: torch's thread count, glibc's malloc arenas, and which
of torch's warnings reach the process log. Nothing here happens on import."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import warnings

import torch

log = logging.getLogger("lossd")

M_ARENA_MAX = -8
"""mallopt parameter number of glibc's arena limit (malloc.h)."""


def tune_process(torch_threads: int, malloc_arenas: int) -> None:
    """Apply the thread, allocator and warning settings; harmless where they do not apply.

    Large request bodies are allocated by the event loop's thread and their tensors by worker threads.
    With glibc's default of one malloc arena per thread, each worker's arena grows and is trimmed back
    to the system on every large request, and the page faults that follow cost more than the loss
    itself (measured: 16 ms instead of 6 ms per 8 MB request). A small fixed number of arenas keeps
    that memory in use.
    """
    # Torch warns (once per call site) when a target's shape differs from input's, of kl_div's "mean", and when
    # linear_cross_entropy cannot take the chunked path its options ask for. lossd's checks find each of these
    # themselves and return torch's words to the client with the result, so the process log need not repeat them.
    warnings.filterwarnings("ignore", message="Using a target size", category=UserWarning)
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss", category=UserWarning)
    warnings.filterwarnings("ignore", message="linear_cross_entropy: ``options`` ignored", category=UserWarning)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if malloc_arenas:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            ok = bool(libc and libc.mallopt(M_ARENA_MAX, malloc_arenas))
        except (OSError, AttributeError):
            ok = False
        if not ok:
            log.debug("mallopt is not available (not glibc): malloc arenas left as they are")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields of the record."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in self._STANDARD}
        if record.exc_info:
            entry["trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """lossd's own loggers write JSON lines to stderr at `level` (uvicorn's `trace` is DEBUG here)."""
    logger = logging.getLogger("lossd")
    logger.setLevel("DEBUG" if level == "trace" else level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
