"""Graceful shutdown: on SIGTERM the server finishes the request in flight, then exits with status 0."""

from __future__ import annotations

import signal
import threading

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.metrics import in_flight
from tests.wait import wait_until


def test_sigterm_drains_in_flight_requests() -> None:
    url, proc = start_server(LOSSD_DRAIN_TIMEOUT_S="20")
    try:
        x = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
        body = orjson.dumps(
            {"input": x.astype(np.float64), "target": np.zeros_like(x, dtype=np.float64)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{url}/v1/losses/mse", content=body, headers={"content-type": "application/json"}, timeout=60
                )
            )
        )
        sender.start()
        # in flight: its body on its way, or computing (or, on a fast machine, answered already)
        wait_until(lambda: answers or in_flight(url) == 1, 30, "the request in flight")
        proc.send_signal(signal.SIGTERM)
        sender.join(timeout=60)
        assert answers, "the request in flight got no answer"
        assert answers[0].status_code == 200
        wire.assert_same(answers[0].json()["loss"], F.mse_loss(torch.from_numpy(x), torch.zeros(len(x))))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            stop_server(proc)
