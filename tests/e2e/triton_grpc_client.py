"""Calls lossd through NVIDIA's tritonclient[grpc], unchanged, and prints what it got as JSON.

Run by tests/e2e/test_tritonclient_grpc.py in a process of its own: tritonclient's generated proto module and
lossd's define the same `inference.*` messages, and one process's protobuf registry holds only one of them.
Reads `{"address", "session", "tensors": {name: [values, shape, datatype]}}` on stdin.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NUMPY = {"FP32": np.float32, "INT64": np.int64}


def main() -> None:
    job = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(job["address"])
    arrays = {name: np.array(v, dtype=NUMPY[t]).reshape(s) for name, (v, s, t) in job["tensors"].items()}
    datatypes = {name: t for name, (_, _, t) in job["tensors"].items()}

    def raw(name: str, key: str | None = None) -> grpcclient.InferInput:
        tensor = grpcclient.InferInput(name, list(arrays[key or name].shape), datatypes[key or name])
        tensor.set_data_from_numpy(arrays[key or name])  # raw_input_contents
        return tensor

    def typed(name: str, key: str) -> grpcclient.InferInput:
        """An input with typed contents: tritonclient has no setter for them, so its message is filled in."""
        tensor = grpcclient.InferInput(name, list(arrays[key].shape), datatypes[key])
        contents = tensor._get_tensor().contents
        field = contents.fp32_contents if datatypes[key] == "FP32" else contents.int64_contents
        field.extend(arrays[key].reshape(-1).tolist())
        return tensor

    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("cross_entropy"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "ctc_metadata": client.get_model_metadata("ctc", as_json=True),
    }
    result = client.infer(
        "cross_entropy",
        [raw("input", "logits"), raw("target", "labels")],
        outputs=[grpcclient.InferRequestedOutput("loss"), grpcclient.InferRequestedOutput("grad_input")],
        parameters={"label_smoothing": 0.2},
        request_id="ce-1",
    )
    out["cross_entropy"] = {
        "id": result.get_response().id,
        "loss": result.as_numpy("loss").tolist(),
        "grad_input": result.as_numpy("grad_input").tolist(),
    }
    result = client.infer("mse", [typed("input", "x"), typed("target", "y")], parameters={"reduction": "sum"})
    out["mse_typed"] = result.as_numpy("loss").tolist()
    result = client.infer(
        "smooth_l1", [raw("input", "x"), raw("target", "y")], parameters={"beta": 0.5, "reduction": "none"}
    )
    out["smooth_l1_raw"] = result.as_numpy("loss").tolist()
    try:
        client.infer("cross_entropy", [raw("input", "logits"), raw("target", "bad_labels")])
    except InferenceServerException as exc:
        out["bad_index"] = {"status": exc.status(), "message": exc.message()}
    try:
        client.infer("no_such_loss", [raw("input", "x")])
    except InferenceServerException as exc:
        out["unknown"] = {"status": exc.status(), "message": exc.message()}

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("mse", [raw("input", "x"), raw("target", "y")], request_id="s1")
    client.async_stream_infer("cross_entropy", [raw("input", "logits"), raw("target", "bad_labels")], request_id="s2")
    client.async_stream_infer("l1", [raw("input", "x"), raw("target", "y")], request_id="s3")
    for i, labels in enumerate(("labels", "labels_2")):  # a dataset session, fed batch by batch
        client.async_stream_infer(
            "cross_entropy",
            [raw("input", "logits" if i == 0 else "logits_2"), raw("target", labels)],
            request_id=f"batch-{i}",
            sequence_id=job["session"],
        )
    stream = []
    for _ in range(5):
        result, error = answers.get(timeout=30)
        if error is not None:
            stream.append({"error": error.message()})
        else:
            response = result.get_response()
            stream.append({"id": response.id, "loss": result.as_numpy("loss").tolist()})
    client.stop_stream()
    out["stream"] = stream
    print(json.dumps(out))


if __name__ == "__main__":
    main()
