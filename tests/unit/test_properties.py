"""Property tests: whatever JSON lands in a tensor field, the answer is a 200 or a 4xx problem, never a
5xx; and whatever the codec accepts, it reads exactly as numpy reads the same numbers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import codec
from service.errors import LossdError

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "x", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["data", "shape", "dtype", "b64", "z"]), inner, max_size=3),
    ),
    max_leaves=20,
)
rectangular = st.integers(1, 3).flatmap(
    lambda ndim: st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim).flatmap(
        lambda shape: st.lists(
            st.floats(width=32, allow_nan=False, allow_infinity=False),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        ).map(lambda flat: np.array(flat, dtype=np.float64).reshape(shape).tolist())
    )
)

FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(value=json_values)
def test_codec_accepts_or_refuses_cleanly(value: Any) -> None:
    try:
        decoded = codec.decode_tensor(value, "input")
    except LossdError:
        return
    assert isinstance(decoded.tensor, torch.Tensor)


@FAST
@given(value=rectangular)
def test_decoded_tensors_equal_numpys_reading(value: Any) -> None:
    decoded = codec.decode_tensor(value, "input").tensor
    expected = np.array(value, dtype=np.float64)
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded.double().numpy(), expected)
    flat = codec.decode_tensor({"data": expected.reshape(-1).tolist(), "shape": list(expected.shape)}, "input").tensor
    assert torch.equal(flat.double(), decoded.double())


@FAST
@given(
    loss=st.sampled_from(["mse", "cross_entropy", "focal", "ctc", "triplet_margin", "binary_cross_entropy", "kl_div"]),
    fields=st.dictionaries(
        st.sampled_from(["input", "target", "weight", "log_probs", "targets", "anchor", "reduction", "beta", "zzz"]),
        json_values,
        max_size=4,
    ),
)
def test_any_json_is_answered_without_a_5xx(client: TestClient, loss: str, fields: dict[str, Any]) -> None:
    body = json.dumps(fields).encode()  # the stdlib writes integers of any size
    response = client.post(f"/v1/losses/{loss}", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
