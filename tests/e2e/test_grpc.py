"""gRPC against the running service (`python -m service` with `LOSSD_GRPC_PORT`), through stubs generated from the
proto the server uses: every loss with typed and raw inputs and its gradients, parameters, the stream and its
sessions, health, reflection, API keys, metrics and the access log, hostile input and SIGTERM.

Every number is compared with `torch.nn.functional` computed here (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from torch import Tensor

from service.losses import REGISTRY
from service.rpc import grpc_service_pb2 as pb
from service.rpc import grpc_service_pb2_grpc as pb_grpc
from tests import wire
from tests.cases import CASES, FUNCTIONAL, WRITTEN_OUT, Case, randint, randn, reference, written_out_tolerance
from tests.e2e.conftest import free_port, start_server, stop_server
from tests.e2e.metrics import computing
from tests.wait import wait_until

LIMIT = 16 * 2**20
"""The module server's LOSSD_GRPC_MAX_MESSAGE_BYTES."""
DATATYPES = {torch.float32: "FP32", torch.float64: "FP64", torch.int64: "INT64", torch.int32: "INT32"}
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
"""The test's own channels send and receive any size: the limits under test are the server's."""
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}


class Server:
    """A running lossd with gRPC: its HTTP base URL, gRPC address, process and a stub over one channel."""

    def __init__(self, output: IO[bytes] | None = None, **env: str):
        self.port = free_port()
        self.url, self.proc = start_server(output, LOSSD_GRPC_PORT=str(self.port), **env)
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=UNLIMITED)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        stop_server(self.proc)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server(LOSSD_GRPC_MAX_MESSAGE_BYTES=str(LIMIT))
    try:
        yield s
    finally:
        s.close()


def _param(value: Any) -> Any:
    p = pb.InferParameter()
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value
    return p


def request(
    model: str,
    tensors: dict[str, Tensor],
    *,
    raw: bool = True,
    outputs: list[str] | None = None,
    request_id: str = "",
    **params: Any,
) -> Any:
    """A ModelInferRequest: inputs in `raw_input_contents` or as typed contents, loss parameters."""
    message = pb.ModelInferRequest(model_name=model, id=request_id)
    for key, value in params.items():
        message.parameters[key].CopyFrom(_param(value))
    for name, t in tensors.items():
        datatype = DATATYPES[t.dtype]
        item = message.inputs.add(name=name, datatype=datatype, shape=list(t.shape))
        if raw:
            message.raw_input_contents.append(t.contiguous().numpy().tobytes())
        elif datatype == "FP32":
            item.contents.fp32_contents.extend(t.reshape(-1).tolist())
        elif datatype == "FP64":
            item.contents.fp64_contents.extend(t.reshape(-1).tolist())
        elif datatype == "INT64":
            item.contents.int64_contents.extend(t.reshape(-1).tolist())
        else:
            item.contents.int_contents.extend(t.reshape(-1).tolist())
    for name in outputs or []:
        message.outputs.add(name=name)
    return message


def outputs(response: Any) -> dict[str, Tensor]:
    """The response's tensors, from `raw_output_contents` (aligned with `outputs`), as Triton sends them."""
    assert len(response.raw_output_contents) == len(response.outputs)
    found = {}
    for meta, blob in zip(response.outputs, response.raw_output_contents, strict=True):
        array = np.frombuffer(blob, dtype=NUMPY[meta.datatype]).reshape(list(meta.shape))
        found[meta.name] = torch.from_numpy(array.copy())
    return found


def same(got: Tensor, expected: Tensor) -> None:
    """Bit for bit on the CPU (NaN equal to NaN), within the dtype's tolerance on CUDA."""
    if wire.DEVICE == "cpu":
        assert got.dtype == expected.dtype, (got, expected)
        assert got.shape == expected.shape, (got, expected)
        assert torch.equal(got.isnan(), expected.isnan()), (got, expected)
        assert torch.equal(got.nan_to_num(), expected.detach().nan_to_num()), (got, expected)
    else:
        torch.testing.assert_close(got, expected.detach(), equal_nan=True)


def code_of(call: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code(), error.details()


def _scalar_params(case: Case) -> bool:
    return all(isinstance(v, bool | int | float | str) for v in case.params.values())


PARITY = [
    pytest.param(spec.name, case, reduction, raw, id=f"{spec.name}-{case.id}-{reduction}-{'raw' if raw else 'typed'}")
    for spec in REGISTRY
    for case in CASES[spec.name]
    if _scalar_params(case)  # InferParameter holds a bool, number or string: not linear_cross_entropy's options
    for reduction in spec.reductions
    for raw in (True, False)
]


@pytest.mark.parametrize(("name", "case", "reduction", "raw"), PARITY)
def test_every_loss_matches_torch(server: Server, name: str, case: Case, reduction: str, raw: bool) -> None:
    """Every loss, case and reduction, in float32, with the gradient of every differentiable input."""
    if FUNCTIONAL.get(name, reference) is None:
        pytest.skip(f"this torch ({torch.__version__}) has no {name}")
    spec = REGISTRY.get(name)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in case.tensors.items()}
    params = {**case.params, "reduction": reduction}
    leaves = {
        k: v.clone().requires_grad_(True)
        for k, v in tensors.items()
        if k in spec.differentiable and v.is_floating_point()
    }
    grads = [f"grad_{k}" for k in leaves]
    message = request(name, tensors, raw=raw, outputs=["loss", *grads], request_id=case.id, **params)
    refusal = None
    try:
        expected = reference(name, tensors | leaves, params)
    except (RuntimeError, NotImplementedError) as exc:  # torch refuses these inputs: so does lossd
        refusal = str(exc).splitlines()[0]
    if refusal is not None:
        code, detail = code_of(lambda: server.stub.ModelInfer(message, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert refusal in detail
        return
    wanted = torch.autograd.grad(expected, list(leaves.values()), torch.ones_like(expected), allow_unused=True)
    response = server.stub.ModelInfer(message, timeout=30)
    assert (response.model_name, response.model_version, response.id) == (name, "1", case.id)
    got = outputs(response)
    assert list(got) == ["loss", *grads]
    for key, want in zip(["loss", *grads], [expected, *wanted], strict=True):
        want = torch.zeros_like(leaves[key.removeprefix("grad_")]) if want is None else want
        if name in WRITTEN_OUT and wire.DEVICE == "cpu":  # written another way than the reference: a few ulps
            wire.assert_within(got[key], want, key, **written_out_tolerance(torch.float32))
        else:
            same(got[key], want)


def test_parameters_of_every_type(server: Server) -> None:
    """int64, double, bool and string parameters reach the loss as its own parameters."""
    x, t = randn(6, 4, seed=1).float(), randint(4, 6, seed=2)
    t[0] = 3
    message = request("cross_entropy", {"input": x, "target": t}, ignore_index=3, label_smoothing=0.25)
    same(outputs(server.stub.ModelInfer(message))["loss"], F.cross_entropy(x, t, ignore_index=3, label_smoothing=0.25))
    a, b = randn(5, seed=3).float(), randn(5, seed=4).float()
    message = request("huber", {"input": a, "target": b}, delta=0.5, reduction="sum")
    same(outputs(server.stub.ModelInfer(message))["loss"], F.huber_loss(a, b, delta=0.5, reduction="sum"))
    lam = randn(5, seed=5).float()
    message = request("poisson_nll", {"input": lam, "target": b.abs()}, log_input=False, full=True)
    expected = F.poisson_nll_loss(lam, b.abs(), log_input=False, full=True)
    same(outputs(server.stub.ModelInfer(message))["loss"], expected)
    message.parameters["full"].CopyFrom(pb.InferParameter(uint64_param=1))  # not a bool: refused, as in JSON
    code, detail = code_of(lambda: server.stub.ModelInfer(message))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "full" in detail
    message = request("mse", {"input": a, "target": b}, weight=2.0)  # an input as a parameter: refused, not ignored
    code, detail = code_of(lambda: server.stub.ModelInfer(message))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == "weight is an input of model mse: send it among the inputs, not the parameters"


def test_metadata_and_readiness_match_http(server: Server) -> None:
    stub = server.stub
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    http = httpx.get(f"{server.url}/v2").json()
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (meta.name, meta.version, list(meta.extensions)) == (http["name"], http["version"], http["extensions"])
    for name in ("ctc", "cross_entropy", "CrossEntropyLoss"):
        http = httpx.get(f"{server.url}/v2/models/{name}").json()
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        assert (meta.name, list(meta.versions), meta.platform) == (http["name"], http["versions"], http["platform"])
        for side in ("inputs", "outputs"):
            got = [(t.name, t.datatype, list(t.shape)) for t in getattr(meta, side)]
            assert got == [(t["name"], t["datatype"], t["shape"]) for t in http[side]]
        assert stub.ModelReady(pb.ModelReadyRequest(name=name, version="1")).ready
    for call in (
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="no_such_loss")),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="mse", version="2")),
    ):
        assert code_of(call)[0] == grpc.StatusCode.NOT_FOUND


def test_errors_have_the_http_wording(server: Server) -> None:
    """A bad class index, an unknown model, a raw blob that disagrees with its shape, inputs given twice, an integer
    its datatype cannot hold: each has its status code and the very message HTTP gives (the element's place, where
    the message leads with it, at gRPC's field), and the next call works."""
    x, t = randn(2, 3, seed=1).float(), torch.tensor([0, 7])
    body = {"input": x.tolist(), "target": t.tolist()}
    http = httpx.post(f"{server.url}/v1/losses/cross_entropy", json=body).json()
    code, detail = code_of(lambda: server.stub.ModelInfer(request("cross_entropy", {"input": x, "target": t})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == http["detail"]

    http = httpx.post(f"{server.url}/v1/losses/mse_loss2", json={}).json()
    code, detail = code_of(lambda: server.stub.ModelInfer(pb.ModelInferRequest(model_name="mse_loss2")))
    assert (code, detail) == (grpc.StatusCode.NOT_FOUND, http["detail"])

    short = request("mse", {"input": randn(4, seed=2).float(), "target": randn(4, seed=3).float()})
    short.raw_input_contents[1] = short.raw_input_contents[1][:-4]
    code, detail = code_of(lambda: server.stub.ModelInfer(short))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == "target.raw_input_contents: shape [4] of float32 needs 16 bytes, got 12"

    fewer = request("mse", {"input": randn(4, seed=2).float(), "target": randn(4, seed=3).float()})
    del fewer.raw_input_contents[1]
    assert code_of(lambda: server.stub.ModelInfer(fewer))[0] == grpc.StatusCode.INVALID_ARGUMENT

    twice = request("mse", {"input": randn(4, seed=2).float()}, raw=False)
    twice.inputs.append(twice.inputs[0])
    code, detail = code_of(lambda: server.stub.ModelInfer(twice))
    assert (code, detail) == (grpc.StatusCode.INVALID_ARGUMENT, "input 'input' is given twice")

    half = request("mse", {"input": randn(4, seed=2).float(), "target": randn(4, seed=3).float()}, raw=False)
    half.inputs[0].datatype = "FP16"
    code, detail = code_of(lambda: server.stub.ModelInfer(half))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in detail

    wide = request("cross_entropy", {"input": x, "target": torch.tensor([0, 300], dtype=torch.int32)}, raw=False)
    wide.inputs[1].datatype = "INT8"
    code, detail = code_of(lambda: server.stub.ModelInfer(wide))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail == "target.contents[1]: value 300 does not fit int8 (integers -128 to 127)"
    inputs = [
        {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()},
        {"name": "target", "shape": [2], "datatype": "INT8", "data": [0, 300]},
    ]
    http = httpx.post(f"{server.url}/v2/models/cross_entropy/infer", json={"inputs": inputs}).json()
    assert http == {"error": detail.replace("target.contents[", "target.data[")}
    _still_works(server)


def _still_works(server: Server) -> None:
    x, y = randn(3, seed=7).float(), randn(3, seed=8).float()
    same(outputs(server.stub.ModelInfer(request("l1", {"input": x, "target": y})))["loss"], F.l1_loss(x, y))


def test_message_over_the_limit(server: Server) -> None:
    """gRPC's own limit is LOSSD_GRPC_MAX_MESSAGE_BYTES, not its 4 MiB default: 12 MiB pass, more than the limit
    is RESOURCE_EXHAUSTED."""
    n = 3 * 2**19  # 6 MiB per float32 input
    x = torch.ones(n)
    same(
        outputs(server.stub.ModelInfer(request("l1", {"input": x, "target": x}), timeout=60))["loss"], torch.tensor(0.0)
    )
    big = torch.zeros(LIMIT // 4 + 1)
    code, _ = code_of(lambda: server.stub.ModelInfer(request("l1", {"input": big, "target": big}), timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _still_works(server)


def test_a_deadline_of_one_millisecond(server: Server) -> None:
    x, t = randn(4096, 512, seed=1).float(), randint(512, 4096, seed=2)
    message = request("cross_entropy", {"input": x, "target": t}, outputs=["loss", "grad_input"])
    code, _ = code_of(lambda: server.stub.ModelInfer(message, timeout=0.001))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    _still_works(server)


def test_request_ids_come_back(server: Server) -> None:
    x = randn(3, seed=1).float()
    message = request("l1", {"input": x, "target": x})
    _, call = server.stub.ModelInfer.with_call(message, metadata=[("x-request-id", "client-id-1")])
    assert ("x-request-id", "client-id-1") in [(m.key, m.value) for m in call.trailing_metadata()]
    with pytest.raises(grpc.RpcError) as info:
        server.stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), metadata=[("x-request-id", "client-id-2")])
    error: Any = info.value
    assert ("x-request-id", "client-id-2") in [(m.key, m.value) for m in error.trailing_metadata()]


def test_stream_answers_in_order(server: Server) -> None:
    x, y = randn(5, seed=1).float(), randn(5, seed=2).float()
    logits, bad = randn(2, 3, seed=3).float(), torch.tensor([0, 9])
    messages = [
        request("mse", {"input": x, "target": y}, request_id="a"),
        request("cross_entropy", {"input": logits, "target": bad}, request_id="b"),
        request("l1", {"input": x, "target": y}, raw=False, request_id="c", reduction="sum"),
        pb.ModelInferRequest(model_name="unknown_loss", id="d"),
    ]
    answers = list(server.stub.ModelStreamInfer(iter(messages), timeout=30))
    assert [a.infer_response.id for a in answers] == ["a", "b", "c", "d"]
    same(outputs(answers[0].infer_response)["loss"], F.mse_loss(x, y))
    assert "class index 9" in answers[1].error_message
    same(outputs(answers[2].infer_response)["loss"], F.l1_loss(x, y, reduction="sum"))
    assert "unknown_loss" in answers[3].error_message
    assert answers[0].error_message == answers[2].error_message == ""


def test_stream_feeds_a_session(server: Server) -> None:
    """A stream of batches into a session (`sequence_id`), each request's id its batch id: the dataset values over
    HTTP equal torch on the concatenation; a batch sent again (over either protocol) counts once; the same id with
    other content is refused and the stream goes on."""
    definitions = [{"name": "mse", "tensors": {"target": "scores"}}, {"name": "cross_entropy", "label_smoothing": 0.1}]
    created = httpx.post(f"{server.url}/v1/sessions", json={"losses": definitions})
    assert created.status_code == 201, created.text
    session = created.json()["id"]
    parts = [(randn(n, 4, seed=n).float(), randint(4, n, seed=n + 1)) for n in (3, 5, 2)]

    def tensors(i: int) -> dict[str, Tensor]:
        logits, labels = parts[i]
        return {"input": logits, "target": labels, "scores": logits.sin(), "groups": labels % 2}

    def batch(i: int, batch_id: str, model: str = "cross_entropy") -> Any:
        return request(model, tensors(i), request_id=batch_id, sequence_id=session)

    # the model named by its alias as well
    messages = [batch(0, "b0"), batch(1, "b1"), batch(0, "b0"), batch(1, "b0"), batch(2, "b2", "CrossEntropyLoss")]
    answers = list(server.stub.ModelStreamInfer(iter(messages), timeout=30))
    assert [a.infer_response.id for a in answers] == ["b0", "b1", "b0", "b0", "b2"]
    assert [a.error_message for a in answers[:3]] == ["", "", ""]
    assert "b0" in answers[3].error_message
    assert answers[4].error_message == ""
    duplicate = [a.infer_response.parameters["duplicate"].bool_param for a in answers if not a.error_message]
    assert duplicate == [False, False, True, False]
    for i, answer in zip((0, 1, 2), (answers[0], answers[1], answers[4]), strict=True):
        logits, labels = parts[i]
        got = outputs(answer.infer_response)
        expected = [F.mse_loss(logits, logits.sin()), F.cross_entropy(logits, labels, label_smoothing=0.1)]
        same(got["loss"], torch.stack(expected).double())
        assert got["stats"].shape == (2, 3)
        assert got["stats"][:, 2].tolist() == [logits.numel(), len(labels)]  # terms counted, per loss

    again = httpx.post(  # the same batch over HTTP: a duplicate, whatever the protocol
        f"{server.url}/v1/sessions/{session}/batches",
        json={"batch_id": "b1", "tensors": {k: v.tolist() for k, v in tensors(1).items() if k != "groups"}}
        | {"groups": tensors(1)["groups"].tolist()},
    )
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True

    view = httpx.get(f"{server.url}/v1/sessions/{session}").json()
    assert view["batches"] == 3
    mse, ce = view["results"]
    # the dataset's means: torch's float32 terms of each batch, added up in float64 (wire.SUMMED)
    mse_terms = torch.cat([F.mse_loss(x, x.sin(), reduction="none") for x, _ in parts])
    ce_terms = torch.cat([F.cross_entropy(x, y, label_smoothing=0.1, reduction="none") for x, y in parts])
    for result, terms in zip((mse, ce), (mse_terms, ce_terms), strict=True):
        got = torch.tensor(result["loss"], dtype=torch.float64)
        wire.assert_within(got, terms.double().mean(), result["name"], **wire.SUMMED)
    assert sorted(ce["groups"]) == ["0", "1"]

    unknown = request("mse", {"input": parts[0][0]}, request_id="x", sequence_id="no-such-session")
    anonymous = batch(2, "")
    other = batch(2, "b3", "l1")
    answers = list(server.stub.ModelStreamInfer(iter([unknown, anonymous, other]), timeout=30))
    assert "no session 'no-such-session'" in answers[0].error_message
    assert "batch id" in answers[1].error_message
    assert "computes mse, cross_entropy: model_name must name one of them" in answers[2].error_message
    code, detail = code_of(lambda: server.stub.ModelInfer(pb.ModelInferRequest()))
    assert (code, detail) == (grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty: name a loss (its name or alias)")


def test_health_and_reflection(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    code, _ = code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.Such")))
    assert code == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    services = set(ProtoReflectionDescriptorDatabase(server.channel).get_services())
    assert {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    database = ProtoReflectionDescriptorDatabase(server.channel)
    service = database.FindFileContainingSymbol("inference.GRPCInferenceService").service[0]
    assert "ModelStreamInfer" in [method.name for method in service.method]


def test_metrics_count_grpc_calls(server: Server) -> None:
    x = randn(3, seed=1).float()
    server.stub.ModelInfer(request("smooth_l1", {"input": x, "target": x}))
    code_of(lambda: server.stub.ModelInfer(pb.ModelInferRequest(model_name="smooth_l1")))
    text = httpx.get(f"{server.url}/metrics").text
    route = 'route="/inference.GRPCInferenceService/ModelInfer"'
    assert any(route in line and 'loss="smooth_l1"' in line and 'status="OK"' in line for line in text.splitlines())
    assert any(route in line and 'status="INVALID_ARGUMENT"' in line for line in text.splitlines())


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server with API keys, logging each request at info (its stderr in a file)."""
    log = tmp_path_factory.mktemp("grpc") / "stderr.log"
    with log.open("wb") as sink:
        s = Server(sink, LOSSD_LOG_LEVEL="info", LOSSD_API_KEYS="key-one,key-two", LOSSD_DRAIN_TIMEOUT_S="20")
    try:
        yield s, log
    finally:
        s.close()


KEY = [("authorization", "Bearer key-two")]


def test_api_keys_and_the_access_log(keyed: tuple[Server, Path]) -> None:
    server, log = keyed
    x = randn(3, seed=1).float()
    message = request("l1", {"input": x, "target": x * 2})
    with pytest.raises(grpc.RpcError) as denied:
        server.stub.ModelInfer(message)
    error: Any = denied.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in error.details()
    assert "x-request-id" in [m.key for m in error.trailing_metadata()]
    code, _ = code_of(lambda: server.stub.ModelInfer(message, metadata=[("authorization", "Bearer wrong")]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: list(server.stub.ModelStreamInfer(iter([message]))))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: server.stub.ServerMetadata(pb.ServerMetadataRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # reflection describes the service, as /openapi.json does: public
    assert "inference.GRPCInferenceService" in list(ProtoReflectionDescriptorDatabase(server.channel).get_services())

    same(
        outputs(server.stub.ModelInfer(message, metadata=[*KEY, ("x-request-id", "logged-1")]))["loss"],
        F.l1_loss(x, x * 2),
    )
    (answer,) = server.stub.ModelStreamInfer(iter([message]), metadata=KEY)
    same(outputs(answer.infer_response)["loss"], F.l1_loss(x, x * 2))
    health = health_pb2_grpc.HealthStub(server.channel)  # public: probes send no key
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING

    # the access log is written in batches
    wait_until(lambda: '"request_id":"logged-1"' in log.read_text(), 5, "the access log line of logged-1")
    line = next(line for line in log.read_text().splitlines() if '"request_id":"logged-1"' in line)
    assert '"route":"/inference.GRPCInferenceService/ModelInfer"' in line
    assert '"status":"OK"' in line
    assert '"loss":"l1"' in line


def test_sigterm_drains_grpc(keyed: tuple[Server, Path]) -> None:
    """SIGTERM: a call in flight finishes, new calls are refused, not ready, and the process exits 0. (Runs last
    of the keyed server's tests: it stops that server.)"""
    server, _ = keyed
    x, t = randn(8192, 1000, seed=1).float(), randint(1000, 8192, seed=2)
    slow = request("cross_entropy", {"input": x, "target": t}, outputs=["loss", "grad_input"])
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["answer"] = server.stub.ModelInfer(slow, metadata=KEY, timeout=60)
        except grpc.RpcError as exc:
            result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    # (or, on a fast machine, answered already)
    wait_until(lambda: result or computing(server.url, dict(KEY)) == 1, 30, "the call computing")
    server.proc.send_signal(signal.SIGTERM)
    caller.join(60)
    assert "answer" in result, result
    leaf = x.clone().requires_grad_(True)
    expected = F.cross_entropy(leaf, t)
    (grad,) = torch.autograd.grad(expected, [leaf])
    got = outputs(result["answer"])
    same(got["loss"], expected)
    same(got["grad_input"], grad)
    try:
        server.stub.ModelInfer(request("l1", {"input": x[0], "target": x[0]}), metadata=KEY, timeout=5)
        refused = None
    except grpc.RpcError as exc:
        refused = exc.code()
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert server.proc.wait(timeout=30) == 0


def test_limits_are_resource_exhausted() -> None:
    """The compute queue and the calls served at once: each a RESOURCE_EXHAUSTED (the queue's with `retry-after`),
    and the next call works."""
    server = Server(
        LOSSD_MAX_CONCURRENCY="1",
        LOSSD_MAX_QUEUE="1",
        LOSSD_INLINE_MAX_ELEMENTS="0",
        LOSSD_GRPC_MAX_CONCURRENT_RPCS="4",
    )
    try:
        x, t = randn(4096, 512, seed=1).float(), randint(512, 4096, seed=2)
        slow = request("cross_entropy", {"input": x, "target": t}, outputs=["loss", "grad_input"])
        errors: list[Any] = []

        def call() -> None:
            try:
                server.stub.ModelInfer(slow, timeout=60)
            except grpc.RpcError as exc:
                errors.append(exc)

        callers = [threading.Thread(target=call) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
        # one computing and one waiting (a gradient request counts twice: the first alone fills the queue's 2)
        assert errors, "the queue admitted every call"
        for error in errors:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("retry-after", "1") in [(m.key, m.value) for m in error.trailing_metadata()]
        _still_works(server)

    finally:
        server.close()


def test_calls_at_the_limit() -> None:
    """LOSSD_GRPC_MAX_CONCURRENT_RPCS calls computing: one more is RESOURCE_EXHAUSTED, while health checks, which
    have places of their own, answer. Calls at the limit that wait on their clients (streams between requests)
    make room: the one that waited longest is ended (DEADLINE_EXCEEDED) for a new call."""
    server = Server(LOSSD_GRPC_MAX_CONCURRENT_RPCS="2", LOSSD_INLINE_MAX_ELEMENTS="0", LOSSD_MAX_CONCURRENCY="2")
    try:
        x, t = randn(4096, 512, seed=1).float(), randint(512, 4096, seed=2)
        slow = request("cross_entropy", {"input": x, "target": t}, outputs=["loss", "grad_input"])
        tiny = request("l1", {"input": x[0, :3], "target": x[0, :3]})
        health = health_pb2_grpc.HealthStub(server.channel)
        busy = [server.stub.ModelInfer.future(slow, timeout=60) for _ in range(2)]
        wait_until(lambda: computing(server.url) == 2 or all(b.done() for b in busy), 30, "two calls computing")
        if computing(server.url) == 2:  # (on a fast machine they may be done already: nothing to assert then)
            code, detail = code_of(lambda: server.stub.ModelInfer(tiny, timeout=10))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "LOSSD_GRPC_MAX_CONCURRENT_RPCS" in detail
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        for call in busy:
            same(outputs(call.result())["loss"], F.cross_entropy(x, t))

        ended: list[Any] = []
        answered = [threading.Event() for _ in range(2)]
        gate = threading.Event()

        def open_stream(ready: threading.Event) -> None:
            def messages() -> Iterator[Any]:
                yield tiny
                gate.wait(30)

            try:
                for _ in server.stub.ModelStreamInfer(messages(), timeout=30):
                    ready.set()
            except grpc.RpcError as exc:
                ended.append(exc)

        openers = [threading.Thread(target=open_stream, args=(ready,)) for ready in answered]
        for opener in openers:
            opener.start()
        for ready in answered:
            assert ready.wait(30)
        wait_until(lambda: _admitted(lambda: _still_works(server)), 10, "a call at the limit, a stream idle")
        wait_until(lambda: len(ended) == 1, 10, "the stream that made room ended")
        error = ended[0]
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "needed its place" in error.details()
        gate.set()
        for opener in openers:
            opener.join(30)
        _still_works(server)
    finally:
        server.close()


def _admitted(call: Callable[[], Any]) -> bool:
    """Whether `call` got a place (False: RESOURCE_EXHAUSTED, the limit's answer while no call may make room);
    a call admitted must succeed: it returns True, or raises."""
    try:
        return call() is not False
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
            raise
        return False


class RawHttp2:
    """A hand-written HTTP/2 client over one connection: it starts gRPC calls and sends their messages in part,
    as a hostile client may (no gRPC library lets a call stall mid-message)."""

    def __init__(self, port: int, window: int | None = None):
        """`window`: the initial window it gives the server's streams (None: HTTP/2's 65,535 bytes); it never
        gives more."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        settings = b"" if window is None else (4).to_bytes(2, "big") + window.to_bytes(4, "big")
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(4, 0, 0, settings))  # preface, SETTINGS
        self.ended: dict[int, bytes] = {}
        """Stream id -> how it ended: its trailers' block (HEADERS with END_STREAM) or RST_STREAM's code."""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @staticmethod
    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    @staticmethod
    def _literal(name: str, value: str) -> bytes:  # HPACK: a literal without indexing, short strings only
        return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

    def stall(self, stream: int, path: str) -> None:
        """Start a call and send 1 byte of a message that declares 100."""
        block = self._headers(path)
        self.sock.sendall(
            self.frame(1, 4, stream, block) + self.frame(0, 0, stream, b"\x00" + (100).to_bytes(4, "big") + b"\x0a")
        )

    def call(self, stream: int, path: str, message: bytes, end: bool = True) -> None:
        """Start a call and send its whole message (in frames of 16 KiB, the size every HTTP/2 peer takes), ending
        the client's side of the stream with it unless `end` is False."""
        self.sock.sendall(self.frame(1, 4, stream, self._headers(path)))
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        for at in range(0, len(data), 16384):
            last = end and at + 16384 >= len(data)
            self.sock.sendall(self.frame(0, 1 if last else 0, stream, data[at : at + 16384]))

    def _headers(self, path: str) -> bytes:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "lossd")]
        headers += [("content-type", "application/grpc"), ("te", "trailers")]
        return b"".join(self._literal(n, v) for n, v in headers)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                size = int.from_bytes(buffer[:3], "big")
                kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9 : 9 + size], buffer[9 + size :]
                if kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                    self.sock.sendall(self.frame(4, 1, 0))
                elif kind == 6 and not flags & 1:  # PING: answer
                    self.sock.sendall(self.frame(6, 1, 0, payload))
                elif (kind == 1 and flags & 1) or kind == 3:  # trailers, or RST_STREAM
                    self.ended.setdefault(stream, payload)  # trailers come before the RST_STREAM after them

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the reader blocked in recv, so that the close is sent at once
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def test_an_answer_its_client_does_not_take_goes_with_the_connections_age() -> None:
    """gRPC's core takes an answer into its buffers and ends the call: one its client never takes (it gives no HTTP/2
    window) stays there, outside lossd's bounds, until the connection closes. LOSSD_GRPC_MAX_CONNECTION_AGE_S
    bounds that: the connection is sent a GOAWAY at its age, and closed the longer of LOSSD_WRITE_TIMEOUT_S and
    LOSSD_REQUEST_TIMEOUT_S later."""
    server = Server(LOSSD_GRPC_MAX_CONNECTION_AGE_S="2", LOSSD_WRITE_TIMEOUT_S="1", LOSSD_REQUEST_TIMEOUT_S="1")
    raw = RawHttp2(server.port)
    try:
        big = request(
            "mse", {"input": torch.full((2048, 1), 0.5), "target": torch.full((1, 2048), 0.25)}, reduction="none"
        )
        start = time.monotonic()
        raw.call(1, "/inference.GRPCInferenceService/ModelInfer", big.SerializeToString())  # a 16 MB answer
        wait_until(lambda: not raw.reader.is_alive(), 30, "the connection closed by the server")
        assert time.monotonic() - start < 2 * 1.1 + 1 + 10  # its age (with gRPC's jitter), the grace, and slack
        _still_works(server)
    finally:
        raw.close()
        server.close()


def test_streams_whose_client_takes_no_answer_make_room() -> None:
    """Streams whose client gives their answers no HTTP/2 window hold their places only until a new call needs one:
    the stream that has waited longest on its client, for its next request or to take its answer,
    makes room. (Which of the two a stream is doing when the new call comes is gRPC's timing; an outside attack
    found the second one locking every place, `_Sending` in service/rpc/server.py.)"""
    server = Server(LOSSD_GRPC_MAX_CONCURRENT_RPCS="4")
    raw = RawHttp2(server.port, window=0)
    try:
        x = randn(3, seed=1).float()
        message = request("l1", {"input": x, "target": x}).SerializeToString()
        streams = [1, 3, 5, 7]
        for stream in streams:
            raw.call(stream, "/inference.GRPCInferenceService/ModelStreamInfer", message, end=False)
        wait_until(lambda: _admitted(lambda: _still_works(server)), 10, "a call at the limit, a stream waiting")
        # and the next: the place of the stream that made room is given back once (or another stream makes room)
        wait_until(lambda: _admitted(lambda: _still_works(server)), 10, "the next call")
    finally:
        raw.close()
        server.close()


def test_calls_that_never_send_their_request_lock_nobody_out() -> None:
    """Calls that start and send part of their message, never the rest, more than every limit (those of health
    checks too): inference calls and health checks still answer (stalled calls make room at the limit), and every
    stalled call is ended when LOSSD_READ_TIMEOUT_S has passed."""
    server = Server(LOSSD_GRPC_MAX_CONCURRENT_RPCS="4", LOSSD_READ_TIMEOUT_S="3")
    raw = RawHttp2(server.port)
    try:
        inference = "/inference.GRPCInferenceService/ModelInfer"
        check = "/grpc.health.v1.Health/Check"
        streams = [1 + 2 * i for i in range(40)]
        for stream in streams:
            raw.stall(stream, inference if stream % 4 == 1 else check)
        health = health_pb2_grpc.HealthStub(server.channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(
            lambda: _admitted(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving),
            10,
            "a health check answered, a stalled one ended for it",
        )
        wait_until(lambda: _admitted(lambda: _still_works(server)), 10, "a call answered")
        wait_until(lambda: len(raw.ended) == len(streams), 20, "every stalled call ended")
        trailers = [block for block in raw.ended.values() if len(block) > 4]  # not an RST_STREAM code
        assert trailers, "no stalled call was ended with a status"
        _still_works(server)
    finally:
        raw.close()
        server.close()


def test_stalled_calls_opened_anew_lock_nobody_out() -> None:
    """Stalled calls opened anew for every place, several times a second (an outside attack renewed them each
    second, when a call had to wait a second before it could be ended for a new one): each new call and health
    check is served at once. With API keys, reflection's calls (which need no key) take
    places of their own, not the inference calls'."""
    inference = "/inference.GRPCInferenceService/ModelInfer"
    check = "/grpc.health.v1.Health/Check"
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    serving = health_pb2.HealthCheckResponse.SERVING
    x, y = randn(3, seed=7).float(), randn(3, seed=8).float()
    for keys, stalled in (("", {inference: 4, check: 16}), ("key-one", {check: 16, reflection: 8})):
        server = Server(LOSSD_GRPC_MAX_CONCURRENT_RPCS="4", LOSSD_API_KEYS=keys)
        raw = RawHttp2(server.port)
        health = health_pb2_grpc.HealthStub(server.channel)
        metadata = [("authorization", f"Bearer {keys}")] if keys else None
        try:
            stream = 1
            for _ in range(3):  # the places filled anew, each time with calls a fraction of a second old
                for path, count in stalled.items():
                    for _ in range(count):
                        raw.stall(stream, path)
                        stream += 2
                time.sleep(0.3)  # not a wait: the stalled calls reach the server first (else nothing is tested)
                answer = server.stub.ModelInfer(request("l1", {"input": x, "target": y}), metadata=metadata)
                same(outputs(answer)["loss"], F.l1_loss(x, y))
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        finally:
            raw.close()
            server.close()


def test_a_stream_between_requests_keeps_its_place_against_stalled_calls() -> None:
    """Calls whose request never arrives make room for one another, however young, not a stream between two of
    its requests (for a second): an attack that opened stalled calls every 25 ms cut such a stream off when any
    call waiting a tenth of a second could be ended."""
    server = Server(LOSSD_GRPC_MAX_CONCURRENT_RPCS="2")
    raw = RawHttp2(server.port)
    pending: queue.Queue[Any] = queue.Queue()

    def messages() -> Iterator[Any]:
        while (message := pending.get()) is not None:
            yield message

    try:
        x, y = randn(3, seed=7).float(), randn(3, seed=8).float()
        pending.put(request("l1", {"input": x, "target": y}))
        answers = server.stub.ModelStreamInfer(messages(), timeout=60)
        assert next(answers).error_message == ""
        stream = 1
        for _ in range(3):
            time.sleep(0.3)  # not a wait: the stream idles between two requests (the point)
            for _ in range(4):  # more than the places: each new one takes the place of a stalled one
                raw.stall(stream, "/inference.GRPCInferenceService/ModelInfer")
                stream += 2
            time.sleep(0.3)  # not a wait: the stalled calls reach the server before the stream's next request
            pending.put(request("l1", {"input": x, "target": y}))
            answer = next(answers)
            assert answer.error_message == ""
            same(outputs(answer.infer_response)["loss"], F.l1_loss(x, y))
        pending.put(None)
    finally:
        pending.put(None)
        raw.close()
        server.close()


def test_typed_contents_are_held_at_what_parsing_them_builds() -> None:
    """Packed integers take a byte each on the wire and 24 once parsed: a request's typed contents are held in
    LOSSD_MAX_INFLIGHT_BYTES at that cost before they are parsed (an outside attack grew the server by 364 MB with
    one 15 MiB message). Past the bound, RESOURCE_EXHAUSTED says what to send instead."""
    server = Server(LOSSD_MAX_INFLIGHT_BYTES=str(8 * 2**20), LOSSD_MAX_BODY_BYTES=str(4 * 2**20))
    try:
        message = pb.ModelInferRequest(model_name="cross_entropy")
        scores = message.inputs.add(name="input", datatype="FP32", shape=[400_000, 1])
        scores.contents.fp32_contents.extend([0.0] * 400_000)
        labels = message.inputs.add(name="target", datatype="INT64", shape=[400_000])
        labels.contents.int64_contents.extend([0] * 400_000)  # 0.4 MB on the wire, 9.6 MB parsed
        code, detail = code_of(lambda: server.stub.ModelInfer(message, timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "what parsing it builds" in detail
        assert "raw_input_contents" in detail
        _still_works(server)
    finally:
        server.close()


def test_what_an_outside_attack_found(server: Server) -> None:
    """UINT8 class indices in typed contents; a unary call with a sequence_id feeds its session (tritonclient's
    `infer(sequence_id=...)`); bytes that are no message are INVALID_ARGUMENT on every method; a very long name is
    quoted short; health Watch streams are bounded."""
    logits, labels = randn(4, 3, seed=1).float(), torch.tensor([0, 2, 1, 2], dtype=torch.uint8)
    message = request("cross_entropy", {"input": logits}, raw=False)
    message.inputs.add(name="target", datatype="UINT8", shape=[4]).contents.uint_contents.extend(labels.tolist())
    same(outputs(server.stub.ModelInfer(message))["loss"], F.cross_entropy(logits, labels.long()))

    session = httpx.post(f"{server.url}/v1/sessions", json={"losses": [{"name": "l1"}]}).json()["id"]
    x, y = randn(5, seed=2).float(), randn(5, seed=3).float()
    answer = server.stub.ModelInfer(request("l1", {"input": x, "target": y}, request_id="u1", sequence_id=session))
    same(outputs(answer)["loss"], F.l1_loss(x, y).double().reshape(1))
    assert httpx.get(f"{server.url}/v1/sessions/{session}").json()["batches"] == 1

    for method in ("ServerMetadata", "ModelMetadata", "ModelReady", "ModelInfer"):
        call = server.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        code, detail = code_of(lambda call=call: call(b"\xff\xff\xff garbage", timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, detail)
        assert detail == f"the message is not a {method}Request"

    code, detail = code_of(lambda: server.stub.ModelInfer(pb.ModelInferRequest(model_name="x" * 20000)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(detail) <= 2000

    health = health_pb2_grpc.HealthStub(server.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(4)]
    for watch in watches:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    code, _ = code_of(lambda: next(health.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    for watch in watches:
        watch.cancel()
    _still_works(server)


def test_v1_options_are_refused_in_every_kind_of_request(server: Server) -> None:
    """return_grad, output_encoding and return_stats are the v1 API's: over gRPC a model's inference and a session's
    batch refuse them alike, saying what the protocol does instead."""
    x, y = randn(3, seed=1).float(), randn(3, seed=2).float()
    session = httpx.post(f"{server.url}/v1/sessions", json={"losses": [{"name": "l1"}]}).json()["id"]
    for extra in ({}, {"request_id": "b1", "sequence_id": session}):
        code, detail = code_of(
            lambda extra=extra: server.stub.ModelInfer(
                request("l1", {"input": x, "target": y}, return_grad=True, **extra)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            detail
            == "return_grad is not a parameter of the inference protocol: ask for gradients as outputs (grad_<input>)"
        )
    assert httpx.get(f"{server.url}/v1/sessions/{session}").json()["batches"] == 0
    _still_works(server)


def test_an_idle_stream_is_ended() -> None:
    """A stream that sends nothing for LOSSD_GRPC_STREAM_IDLE_S is ended, giving its call back."""
    server = Server(LOSSD_GRPC_STREAM_IDLE_S="1")
    try:
        x = randn(3, seed=1).float()
        tiny = request("l1", {"input": x, "target": x})
        answers: list[Any] = []

        def messages() -> Iterator[Any]:
            yield tiny
            time.sleep(3)  # not a wait: the stream idles past its limit (1 s), which is the point
            yield tiny

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            answers.extend(server.stub.ModelStreamInfer(messages(), timeout=30))  # keeps those before the error
        error: Any = ended.value
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "LOSSD_GRPC_STREAM_IDLE_S" in error.details()
        assert len(answers) == 1
        assert time.monotonic() - started < 3
        _still_works(server)
    finally:
        server.close()
