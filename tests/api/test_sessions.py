"""Dataset sessions (/v1/sessions) and `return_stats`, in process, against torch.

A dataset of 12 samples is sent in three batches, each in another tensor wire form; every value the
service answers (each batch's own, the dataset's, each group's, merged states') is compared with
`torch.nn.functional` computed here on the same numbers, batch by batch or on their concatenation.
"""

from __future__ import annotations

import base64
import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import Tensor

from service.losses import REGISTRY
from tests import wire

Client = Callable[..., TestClient]
N = 12
BATCHES = {"b1": slice(0, 3), "b2": slice(3, 7), "b3": slice(7, 12)}
FORMS = {"b1": "flat", "b2": "b64", "b3": "nested"}


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(2024)
    labels = torch.randint(0, 4, (N,), generator=g)
    labels[[1, 5, 6]] = -100  # ignored targets
    return {
        "logits": torch.randn(N, 4, generator=g, dtype=torch.float64),
        "labels": labels,
        "class_weight": torch.rand(4, generator=g, dtype=torch.float64) + 0.2,
        "pred": torch.randn(N, 3, generator=g, dtype=torch.float64),
        "y": torch.randint(-3, 4, (N, 3), generator=g).double(),  # whole numbers: sent as 2 or 2.0
        "logq": torch.randn(N, 5, generator=g, dtype=torch.float64).log_softmax(1),
        "p": torch.randn(N, 5, generator=g, dtype=torch.float64).softmax(1),
    }


DATA = _data()
GROUPS = torch.tensor([0, 7, 1, 0, 0, 7, 1, 1, 7, 0, 1, 7])
PER_SAMPLE = ("logits", "labels", "pred", "y", "logq", "p")

LOSSES: list[dict[str, Any]] = [
    {
        "name": "CrossEntropyLoss",
        "label_smoothing": 0.1,
        "tensors": {"input": "logits", "target": "labels", "weight": "class_weight"},
    },
    {"name": "mse", "reduction": "sum", "tensors": {"input": "pred", "target": "y"}},
    {"name": "kl_div", "reduction": "batchmean", "tensors": {"input": "logq", "target": "p"}},
]
NORMALIZED = [
    {
        "name": "cross_entropy",
        "reduction": "mean",
        "ignore_index": -100,
        "label_smoothing": 0.1,
        "tensors": {"input": "logits", "target": "labels", "weight": "class_weight"},
    },
    {"name": "mse", "reduction": "sum", "tensors": {"input": "pred", "target": "y"}},
    {"name": "kl_div", "reduction": "batchmean", "log_target": False, "tensors": {"input": "logq", "target": "p"}},
]


def torch_values(t: dict[str, Tensor]) -> list[Tensor]:
    """torch.nn.functional on `t`: the session's three losses."""
    return [
        F.cross_entropy(t["logits"], t["labels"], weight=t["class_weight"], label_smoothing=0.1),
        F.mse_loss(t["pred"], t["y"], reduction="sum"),
        F.kl_div(t["logq"], t["p"], reduction="batchmean"),
    ]


def torch_counts(t: dict[str, Tensor]) -> list[int]:
    return [int((t["labels"] != -100).sum()), t["y"].numel(), t["p"].numel()]


def take(rows: slice | Tensor) -> dict[str, Tensor]:
    return {k: v[rows] if k in PER_SAMPLE else v for k, v in DATA.items()}


def encode(t: Tensor, form: str, typed: bool) -> Any:
    if form == "b64":
        return wire.b64(t)
    if form == "flat" and t.is_floating_point():
        return wire.flat(t)
    if form == "nested" and typed:  # one typed float argument per loss gives the nested ones their dtype
        return wire.flat(t)
    return t.tolist()


def batch_body(batch_id: str, rows: slice, form: str, groups: bool = True) -> dict[str, Any]:
    typed = {"logits", "pred", "p"}
    tensors = {k: encode(v, form, k in typed) for k, v in take(rows).items()}
    body: dict[str, Any] = {"batch_id": batch_id, "tensors": tensors}
    if groups:
        body["groups"] = encode(GROUPS[rows], form, False)
    return body


def number(value: Any) -> float:
    return wire.TOKENS[value] if isinstance(value, str) else float(value)


def close(got: Any, expected: Tensor) -> None:
    """A value lossd adds up from sufficient statistics (dataset and group values, S and W), not torch's own: up
    to the order of float64 additions (wire.SUMMED; cross_entropy's label smoothing: torch takes
    (1 - e) * sum(nll) + e / C * sum(smooth), lossd the sum of the per-element mix)."""
    wire.assert_within(torch.tensor(number(got), dtype=torch.float64), expected.double(), "statistic", **wire.SUMMED)


def create(client: TestClient, losses: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    response = client.post("/v1/sessions", json={"losses": LOSSES if losses is None else losses, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send(client: TestClient, session: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/v1/sessions/{session}/batches", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def view(client: TestClient, session: str) -> dict[str, Any]:
    response = client.get(f"/v1/sessions/{session}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def filled(client: TestClient, batches: tuple[str, ...] = tuple(BATCHES)) -> str:
    session = create(client)
    for batch_id in batches:
        send(client, session, batch_body(batch_id, BATCHES[batch_id], FORMS[batch_id]))
    return session


def check_results(results: list[dict[str, Any]], t: dict[str, Tensor], groups: Tensor | None) -> None:
    """Each loss's value and stats equal torch on `t` (and per group label, on that label's samples)."""
    assert [(r["name"], r["reduction"]) for r in results] == [(d["name"], d["reduction"]) for d in NORMALIZED]
    for r, expected, count in zip(results, torch_values(t), torch_counts(t), strict=True):
        close(r["loss"], expected)
        assert r["stats"]["count"] == count
        s, w = r["stats"]["sum"], r["stats"]["weight"]
        close(s if r["reduction"] == "sum" else s / w, expected)
    if groups is None:
        return
    labels = sorted(set(groups.tolist()))
    for i, r in enumerate(results):
        assert list(r["groups"]) == [str(label) for label in labels]
        for label in labels:
            subset = {k: v[groups == label] if k in PER_SAMPLE else v for k, v in t.items()}
            got = r["groups"][str(label)]
            close(got["loss"], torch_values(subset)[i])
            assert got["stats"]["count"] == torch_counts(subset)[i]


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    return body


# --- the whole flow -----------------------------------------------------------------------------------------


def test_create_normalizes_the_losses(client: TestClient) -> None:
    response = client.post("/v1/sessions", json={"losses": LOSSES, "ttl_s": 600})
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/sessions/{body['id']}"
    assert body["losses"] == NORMALIZED
    assert body["expires_at"].endswith("Z")
    fresh = view(client, body["id"])
    assert fresh["batches"] == 0
    for r in fresh["results"]:  # nothing yet: S = W = n = 0; a mean is 0 / 0
        assert r["stats"] == {"sum": 0.0, "weight": 0.0, "count": 0}
        assert r["loss"] == ("NaN" if r["reduction"] != "sum" else 0.0)


def test_batches_in_every_wire_form_add_up_to_torch_on_the_whole(client: TestClient) -> None:
    session = create(client)
    for batch_id, rows in BATCHES.items():
        out = send(client, session, batch_body(batch_id, rows, FORMS[batch_id]))
        assert (out["batch_id"], out["duplicate"]) == (batch_id, False)
        for r, expected in zip(out["results"], torch_values(take(rows)), strict=True):
            wire.assert_same(r["loss"], expected)  # each batch's own value: torch's on the batch
        check_results(out["results"], take(rows), GROUPS[rows])
    whole = view(client, session)
    assert whole["batches"] == 3
    assert whole["id"] == session
    check_results(whole["results"], DATA, GROUPS)


def test_batches_without_groups_have_no_groups(client: TestClient) -> None:
    session = create(client)
    for batch_id, rows in BATCHES.items():
        out = send(client, session, batch_body(batch_id, rows, "flat", groups=False))
        assert all("groups" not in r for r in out["results"])
    results = view(client, session)["results"]
    assert all("groups" not in r for r in results)
    check_results(results, DATA, None)


def test_untyped_nested_numbers_compute_in_float32(client: TestClient) -> None:
    """Without a dtype anywhere, floats read as float32 (as a single request reads them)."""
    session = create(client, [{"name": "mse", "tensors": {"input": "pred", "target": "y"}}])
    for batch_id, rows in BATCHES.items():
        send(
            client,
            session,
            {"batch_id": batch_id, "tensors": {"pred": DATA["pred"][rows].tolist(), "y": DATA["y"][rows].tolist()}},
        )
    (result,) = view(client, session)["results"]
    # torch's float32 terms, added up in float64 (as lossd adds up a dataset): not their float64 counterparts, which
    # differ by about 1e-8, 100,000 times wire.SUMMED
    terms = F.mse_loss(DATA["pred"].float(), DATA["y"].float(), reduction="none")
    close(result["loss"], terms.double().mean())


def test_state_round_trips_and_merges(client: TestClient) -> None:
    whole = filled(client)
    state = client.get(f"/v1/sessions/{whole}/state")
    assert state.status_code == 200, state.text
    assert set(state.json()["batches"]) == set(BATCHES)

    single = client.post("/v1/sessions", json={"from_states": [state.json()]})
    assert single.status_code == 201, single.text
    assert single.json()["losses"] == NORMALIZED
    copied = view(client, single.json()["id"])
    assert copied["batches"] == 3
    assert copied["results"] == view(client, whole)["results"]

    first, second = filled(client, ("b1", "b2")), filled(client, ("b3",))
    states = [client.get(f"/v1/sessions/{s}/state").json() for s in (first, second)]
    merged = client.post("/v1/sessions", json={"from_states": states})
    assert merged.status_code == 201, merged.text
    merged_id = merged.json()["id"]
    got = view(client, merged_id)
    assert got["batches"] == 3
    check_results(got["results"], DATA, GROUPS)
    # the merged session knows the batches of both shards: one sent again is a duplicate
    again = send(client, merged_id, batch_body("b3", BATCHES["b3"], "flat"))
    assert again["duplicate"] is True
    assert view(client, merged_id)["results"] == got["results"]


def test_states_of_other_losses_do_not_merge(client: TestClient) -> None:
    ours = client.get(f"/v1/sessions/{filled(client, ('b1',))}/state").json()
    other_losses = [{**LOSSES[0], "label_smoothing": 0.2}, *LOSSES[1:]]
    theirs_id = create(client, other_losses)
    send(client, theirs_id, batch_body("b2", BATCHES["b2"], "flat"))
    theirs = client.get(f"/v1/sessions/{theirs_id}/state").json()
    body = problem(client.post("/v1/sessions", json={"from_states": [ours, theirs]}), 409, "conflict")
    assert body["errors"][0]["loc"][:3] == ["body", "from_states", 1]


def test_states_sharing_a_batch_id_do_not_merge(client: TestClient) -> None:
    a = client.get(f"/v1/sessions/{filled(client, ('b1', 'b2'))}/state").json()
    b = client.get(f"/v1/sessions/{filled(client, ('b2', 'b3'))}/state").json()
    body = problem(client.post("/v1/sessions", json={"from_states": [a, b]}), 409, "conflict")
    assert body["errors"][0]["loc"] == ["body", "from_states", 1, "batches", "b2"]
    problem(client.post("/v1/sessions", json={"from_states": [a, a]}), 409, "conflict")


def test_state_counts_a_session_cannot_hold_are_refused(client: TestClient) -> None:
    """A state whose count a session could not count exactly (2^53 or more: forged, or merged past it) is a 422
    naming where, and the server's sessions stay readable."""
    state = client.get(f"/v1/sessions/{filled(client, ('b1',))}/state").json()
    forged = copy.deepcopy(state)
    forged["totals"][0]["count"] = 2**64 - 1
    body = problem(client.post("/v1/sessions", json={"from_states": [forged]}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "from_states", 0, "totals", 0, "count"]
    assert "below 2^53" in body["detail"]

    half = copy.deepcopy(state)
    half["totals"][0]["count"] = 2**52
    other = copy.deepcopy(half)
    other["batches"] = {"another": next(iter(half["batches"].values()))}
    body = problem(client.post("/v1/sessions", json={"from_states": [half, other]}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "from_states", 1, "totals"]
    assert "2^53" in body["detail"]
    single = client.post("/v1/sessions", json={"from_states": [half]})
    assert single.status_code == 201, single.text
    assert view(client, single.json()["id"])["results"][0]["stats"]["count"] == 2**52


def test_merged_states_are_held_to_the_session_limits(make_client: Client) -> None:
    """The limits on batches and group totals hold while the states are read: one state past them is refused,
    naming the limit and what the merge would hold."""
    client = make_client(session_max_batches=5, session_max_groups=9)
    state = client.get(f"/v1/sessions/{filled(client, ('b1', 'b2', 'b3'))}/state").json()
    shards = []
    for i in range(3):  # two batch ids each, 6 in all: one past the limit
        shard = copy.deepcopy(state)
        shard["batches"] = {f"s{i}-{j}": digest for j, digest in enumerate(list(state["batches"].values())[:2])}
        shards.append(shard)
    body = problem(client.post("/v1/sessions", json={"from_states": shards}), 413, "session-full")
    assert body["detail"] == "the session would hold 6 batches, over its limit of 5"
    assert (body["limit"], body["actual"]) == (5, 6)
    assert body["errors"][0]["loc"] == ["body", "from_states", 2, "batches"]
    fits = client.post("/v1/sessions", json={"from_states": shards[:2]})
    assert fits.status_code == 201, fits.text
    assert view(client, fits.json()["id"])["batches"] == 4

    grouped = copy.deepcopy(state)  # labels 0, 1, 7 x 3 losses: 9, the limit; a fourth label is one too many
    grouped["totals"][0]["groups"]["8"] = grouped["totals"][0]["groups"]["7"]
    body = problem(client.post("/v1/sessions", json={"from_states": [grouped]}), 413, "session-full")
    assert (body["limit"], body["actual"]) == (9, 12)
    assert body["errors"][0]["loc"] == ["body", "from_states", 0, "totals"]


def test_states_are_read_as_this_server_writes_them(client: TestClient) -> None:
    """Batch ids and digests as GET .../state gives them; the losses' errors named inside the state."""
    state = client.get(f"/v1/sessions/{filled(client, ('b1',))}/state").json()
    digest = state["batches"]["b1"]
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        ({"x" * 129: digest}, ["batches"], "a batch id has 1 to 128 characters, got 129"),
        ({"": digest}, ["batches"], "a batch id has 1 to 128 characters, got 0"),
        ({"b1": digest.upper()}, ["batches", "b1"], "32 hexadecimal digits"),
        ({"b1": digest + "0"}, ["batches", "b1"], "32 hexadecimal digits"),
        ({"b1": 7}, ["batches", "b1"], "32 hexadecimal digits"),
    ]
    for batches, loc, detail in cases:
        body = problem(
            client.post("/v1/sessions", json={"from_states": [{**state, "batches": batches}]}), 422, "invalid-request"
        )
        assert body["errors"][0]["loc"] == ["body", "from_states", 0, *loc]
        assert detail in body["detail"]

    unknown = copy.deepcopy(state)
    unknown["losses"][1]["name"] = "no_such_loss"
    body = problem(client.post("/v1/sessions", json={"from_states": [unknown]}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "from_states", 0, "losses", 1, "name"]
    partial = copy.deepcopy(state)
    del partial["losses"][1]["reduction"]  # valid, but not as this server writes it: the default left out
    body = problem(client.post("/v1/sessions", json={"from_states": [partial]}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "from_states", 0, "losses"]
    assert "not in the form this server writes them" in body["detail"]


def test_a_batch_sent_again_is_a_duplicate_whatever_its_json_formatting(client: TestClient) -> None:
    session = filled(client)
    before = view(client, session)
    body = batch_body("b1", BATCHES["b1"], "flat")
    # the same numbers written otherwise: whole floats as integers, other spacing and key order
    body["tensors"]["y"]["data"] = [int(v) for v in body["tensors"]["y"]["data"]]
    raw = json.dumps(body, indent=3, sort_keys=True).encode()
    response = client.post(f"/v1/sessions/{session}/batches", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is True
    check_results(response.json()["results"], take(BATCHES["b1"]), GROUPS[BATCHES["b1"]])  # its own values
    # and in another wire form (base64), the same tensors again
    assert send(client, session, batch_body("b1", BATCHES["b1"], "b64"))["duplicate"] is True
    assert view(client, session) == before


def test_untyped_whole_numbers_written_as_floats_are_still_a_duplicate(client: TestClient) -> None:
    session = create(client)
    body = batch_body("b1", BATCHES["b1"], "nested")
    send(client, session, body)
    before = view(client, session)
    body["tensors"]["labels"] = [float(v) for v in body["tensors"]["labels"]]  # 2 -> 2.0
    body["tensors"]["y"] = [[float(v) for v in row] for row in body["tensors"]["y"]]
    response = client.post(f"/v1/sessions/{session}/batches", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is True
    assert view(client, session) == before


def test_a_batch_id_sent_with_other_content_is_a_conflict(client: TestClient) -> None:
    session = filled(client)
    before = view(client, session)
    body = batch_body("b1", BATCHES["b2"], "flat")
    problem(client.post(f"/v1/sessions/{session}/batches", json=body), 409, "conflict")
    other_groups = batch_body("b1", BATCHES["b1"], "flat")
    other_groups["groups"] = [9, 9, 9]
    problem(client.post(f"/v1/sessions/{session}/batches", json=other_groups), 409, "conflict")
    assert view(client, session) == before


def test_a_batch_one_loss_refuses_changes_nothing(client: TestClient) -> None:
    session = filled(client, ("b1",))
    before = view(client, session)

    out_of_range = batch_body("bad", BATCHES["b2"], "flat")
    out_of_range["tensors"]["labels"][2] = 4  # class index 4 of 4 classes: cross_entropy (loss 0) refuses it
    body = problem(client.post(f"/v1/sessions/{session}/batches", json=out_of_range), 422, "value-out-of-range")
    # the error names the loss entry that refused the batch, then the shared tensor at the offending element
    assert body["detail"].startswith("losses[0] (cross_entropy): ")
    assert [e["loc"] for e in body["errors"]] == [["body", "losses", 0], ["body", "tensors", "labels", 2]]

    missing = batch_body("bad", BATCHES["b2"], "flat")
    del missing["tensors"]["p"]  # kl_div (loss 2) has no target
    body = problem(client.post(f"/v1/sessions/{session}/batches", json=missing), 422, "invalid-request")
    assert body["errors"][0]["loc"][:3] == ["body", "losses", 2]

    short_groups = batch_body("bad", BATCHES["b2"], "flat")
    short_groups["groups"] = short_groups["groups"][:-1]
    body = problem(client.post(f"/v1/sessions/{session}/batches", json=short_groups), 422, "shape-mismatch")
    assert [e["loc"] for e in body["errors"]] == [["body", "losses", 0], ["body", "groups"]]
    matrix_groups = batch_body("bad", BATCHES["b2"], "flat")
    matrix_groups["groups"] = [[label] for label in matrix_groups["groups"]]
    body = problem(client.post(f"/v1/sessions/{session}/batches", json=matrix_groups), 422, "shape-mismatch")
    assert body["errors"][0]["loc"] == ["body", "groups"]

    assert view(client, session) == before
    # nothing of the refused batch was kept, its id included: the next good batch (under that id) works
    send(client, session, batch_body("bad", BATCHES["b2"], "flat"))
    send(client, session, batch_body("b3", BATCHES["b3"], "b64"))
    rows = torch.cat([torch.arange(0, 3), torch.arange(3, 12)])
    check_results(view(client, session)["results"], take(rows), GROUPS[rows])


def test_unknown_and_deleted_sessions_are_404(client: TestClient) -> None:
    unknown = "0" * 32
    for response in (
        client.get(f"/v1/sessions/{unknown}"),
        client.get(f"/v1/sessions/{unknown}/state"),
        client.post(f"/v1/sessions/{unknown}/batches", json=batch_body("b1", BATCHES["b1"], "flat")),
        client.delete(f"/v1/sessions/{unknown}"),
    ):
        problem(response, 404, "unknown-session")
    session = filled(client, ("b1",))
    deleted = client.delete(f"/v1/sessions/{session}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    problem(client.get(f"/v1/sessions/{session}"), 404, "unknown-session")
    problem(client.get(f"/v1/sessions/{session}/state"), 404, "unknown-session")
    problem(client.delete(f"/v1/sessions/{session}"), 404, "unknown-session")


def test_reduction_none_is_refused(client: TestClient) -> None:
    losses = [LOSSES[1], {"name": "l1", "reduction": "none"}]
    body = problem(client.post("/v1/sessions", json={"losses": losses}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "losses", 1, "reduction"]


def test_ttl_beyond_the_maximum_is_refused(make_client: Client) -> None:
    client = make_client(session_max_ttl_s=100)
    body = problem(client.post("/v1/sessions", json={"losses": LOSSES, "ttl_s": 101}), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "ttl_s"]
    assert (body["limit"], body["actual"]) == (100, 101)
    create(client, ttl_s=100)


def test_an_expired_session_is_404(make_client: Client) -> None:
    client = make_client()
    store = client.app.state.lossd.sessions  # type: ignore[attr-defined]
    now = [1_900_000_000.0]
    store.clock = lambda: now[0]
    session = create(client, ttl_s=60)
    now[0] += 59
    send(client, session, batch_body("b1", BATCHES["b1"], "flat"))  # a batch renews the TTL
    now[0] += 59
    assert view(client, session)["batches"] == 1
    now[0] += 1
    problem(client.get(f"/v1/sessions/{session}"), 404, "unknown-session")
    problem(
        client.post(f"/v1/sessions/{session}/batches", json=batch_body("b2", BATCHES["b2"], "flat")),
        404,
        "unknown-session",
    )


# --- limits -----------------------------------------------------------------------------------------------------


def test_too_many_sessions_is_429(make_client: Client) -> None:
    client = make_client(sessions_max=2)
    first, second = filled(client, ("b1",)), create(client)
    before = view(client, first)
    body = problem(client.post("/v1/sessions", json={"losses": LOSSES}), 429, "too-many-sessions")
    assert (body["limit"], body["actual"]) == (2, 3)
    assert view(client, first) == before
    assert client.delete(f"/v1/sessions/{second}").status_code == 204
    create(client)


def test_too_many_batches_is_413(make_client: Client) -> None:
    client = make_client(session_max_batches=2)
    session = filled(client, ("b1", "b2"))
    before = view(client, session)
    body = problem(
        client.post(f"/v1/sessions/{session}/batches", json=batch_body("b3", BATCHES["b3"], "flat")),
        413,
        "session-full",
    )
    assert (body["limit"], body["actual"]) == (2, 3)
    assert view(client, session) == before
    # a batch applied before is still recognised
    assert send(client, session, batch_body("b2", BATCHES["b2"], "flat"))["duplicate"] is True


def test_too_many_groups_is_413(make_client: Client) -> None:
    client = make_client(session_max_groups=9)  # 3 labels x the session's 3 losses
    session = create(client)
    first = batch_body("g1", BATCHES["b1"], "flat")
    first["groups"] = [0, 1, 0]
    send(client, session, first)
    before = view(client, session)
    second = batch_body("g2", BATCHES["b1"], "flat")
    second["groups"] = [2, 3, 2]  # labels 0, 1, 2, 3: one too many
    body = problem(client.post(f"/v1/sessions/{session}/batches", json=second), 413, "session-full")
    assert (body["limit"], body["actual"]) == (9, 12)
    assert body["errors"][0]["loc"] == ["body", "groups"]
    assert view(client, session) == before
    second["groups"] = [2, 1, 2]
    send(client, session, second)
    assert list(view(client, session)["results"][0]["groups"]) == ["0", "1", "2"]


def test_session_batches_computed_in_worker_processes_are_the_same(make_client: Client) -> None:
    client = make_client(isolate_work_bytes=0, inline_max_elements=0)  # every computation in a worker
    session = filled(client)
    check_results(view(client, session)["results"], DATA, GROUPS)


# --- return_stats and the catalog -----------------------------------------------------------------------------


def _ce_body(reduction: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": wire.flat(DATA["logits"]),
        "target": DATA["labels"].tolist(),
        "weight": wire.flat(DATA["class_weight"]),
        "label_smoothing": 0.1,
        "reduction": reduction,
        **extra,
    }


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_return_stats_on_a_single_loss(client: TestClient, reduction: str) -> None:
    response = client.post("/v1/losses/cross_entropy", json=_ce_body(reduction, return_stats=True))
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    args = (DATA["logits"], DATA["labels"])
    kwargs = {"weight": DATA["class_weight"], "label_smoothing": 0.1}
    close(stats["sum"], F.cross_entropy(*args, **kwargs, reduction="sum"))
    close(stats["sum"] / stats["weight"], F.cross_entropy(*args, **kwargs))
    valid = DATA["labels"] != -100
    assert stats["count"] == int(valid.sum())
    close(stats["weight"], DATA["class_weight"][DATA["labels"][valid]].sum())
    if reduction != "none":  # the loss itself is torch's
        wire.assert_same(response.json()["loss"], F.cross_entropy(*args, **kwargs, reduction=reduction))
    plain = client.post("/v1/losses/cross_entropy", json=_ce_body(reduction))
    assert plain.status_code == 200, plain.text
    assert "stats" not in plain.json()


def test_return_stats_on_evaluate(client: TestClient) -> None:
    tensors = {k: wire.flat(v) if v.is_floating_point() else v.tolist() for k, v in DATA.items()}
    entries = [
        {**LOSSES[0]},
        {**LOSSES[1], "return_stats": False},
        {**LOSSES[2]},
    ]
    response = client.post("/v1/evaluate", json={"tensors": tensors, "losses": entries, "return_stats": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [("stats" in r) for r in results] == [True, False, True]
    expected = torch_values(DATA)
    for i in (0, 2):
        wire.assert_same(results[i]["loss"], expected[i])
        s, w = results[i]["stats"]["sum"], results[i]["stats"]["weight"]
        close(s / w, expected[i])
        assert results[i]["stats"]["count"] == torch_counts(DATA)[i]
    assert results[2]["stats"]["weight"] == N  # batchmean: the batch size

    entries = [{**LOSSES[0]}, {**LOSSES[1], "return_stats": True}]
    response = client.post("/v1/evaluate", json={"tensors": tensors, "losses": entries})  # default: no stats
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [("stats" in r) for r in results] == [False, True]
    close(results[1]["stats"]["sum"], expected[1])
    assert results[1]["stats"]["count"] == N * 3


def test_the_catalog_describes_every_losss_stats(client: TestClient) -> None:
    listed = {entry["name"]: entry for entry in client.get("/v1/losses").json()["losses"]}
    for spec in REGISTRY:
        one = client.get(f"/v1/losses/{spec.name}").json()
        assert isinstance(one["stats"], str)
        assert one["stats"]
        assert listed[spec.name]["stats"] == one["stats"]
    assert "weight" in listed["cross_entropy"]["stats"]
    assert "batchmean" in listed["kl_div"]["stats"]


def test_session_values_are_strict_json_when_nan(client: TestClient) -> None:
    """A mean over nothing but ignored targets is NaN, as torch's, written as the string "NaN"."""
    session = create(client, [LOSSES[0]])
    body = batch_body("b1", BATCHES["b1"], "flat", groups=False)
    body["tensors"]["labels"] = [-100, -100, -100]
    out = send(client, session, body)
    assert math.isnan(F.cross_entropy(DATA["logits"][:3], torch.full((3,), -100), weight=DATA["class_weight"]))
    assert out["results"][0]["loss"] == "NaN"
    assert out["results"][0]["stats"] == {"sum": 0.0, "weight": 0.0, "count": 0}
    assert view(client, session)["results"][0]["loss"] == "NaN"


def test_sessions_in_several_worker_processes_need_redis(make_client: Callable[..., TestClient]) -> None:
    """Each worker process would hold sessions of its own, and a batch could reach one that does not know its
    session: without Redis, several workers refuse sessions with a 501 that says why."""
    client = make_client(workers=2)
    body = problem(client.post("/v1/sessions", json={"losses": LOSSES}), 501, "not-configured")
    assert "LOSSD_REDIS_URL" in body["detail"]
    problem(client.get("/v1/sessions/0123456789abcdef0123456789abcdef"), 501, "not-configured")
    assert client.post("/v1/losses/mse", json={"input": [1.0], "target": [0.0]}).status_code == 200


def test_an_empty_batch_adds_nothing(client: TestClient) -> None:
    """No samples, with or without (empty) groups: a 200 that changes no value (kl_div batchmean included)."""
    session = filled(client, ("b1",))
    before = view(client, session)["results"]
    empty = batch_body("empty", slice(0, 0), "flat")
    assert empty["groups"] == []
    answer = send(client, session, empty)
    assert [r["stats"]["count"] for r in answer["results"]] == [0, 0, 0]
    del empty["groups"]
    empty["batch_id"] = "empty, no groups"
    send(client, session, empty)
    assert view(client, session)["results"] == before
    assert view(client, session)["batches"] == 3


def test_base64_without_dtype_is_a_duplicate_whatever_its_key_order(client: TestClient) -> None:
    session = create(client, [{"name": "mse"}])
    values = torch.tensor([1.0, 2.0, 4.0]).numpy().tobytes()
    b64 = base64.b64encode(values).decode()
    first = {"batch_id": "a", "tensors": {"input": {"b64": b64, "shape": [3]}, "target": [0.0, 0.0, 1.0]}}
    again = {"batch_id": "a", "tensors": {"target": [0, 0, 1], "input": {"shape": [3], "b64": b64}}}
    assert send(client, session, first)["duplicate"] is False
    assert send(client, session, again)["duplicate"] is True
    (result,) = view(client, session)["results"]
    # the dataset's value: float32 terms 1, 4 and 9 added up in float64, over their count (one batch: as torch's
    # float64 mean of them, bit for bit)
    terms = F.mse_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 0.0, 1.0]), reduction="none")
    wire.assert_same(result["loss"], terms.double().mean())


def test_a_batch_reports_torchs_warnings(client: TestClient) -> None:
    """input (N, 1) and target (N): torch broadcasts and warns; the batch's answer says so, as /v1/losses does."""
    session = create(client, [{"name": "mse"}])
    body = {"batch_id": "w", "tensors": {"input": [[1.0], [2.0]], "target": [0.0, 1.0]}}
    (result,) = send(client, session, body)["results"]
    assert "broadcast" in " ".join(result["warnings"])
    expected = F.mse_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 1.0]))  # torch warns the same way
    wire.assert_same(result["loss"], expected)  # the batch's own value: torch's


@pytest.mark.parametrize("legacy", [{"reduce": False}, {"reduce": False, "size_average": True}])
def test_deprecated_reduce_false_tells_what_a_session_takes(client: TestClient, legacy: dict[str, Any]) -> None:
    assert torch.nn._reduction.legacy_get_string(legacy.get("size_average"), legacy["reduce"], emit_warning=False) == (
        "none"
    )
    response = client.post("/v1/sessions", json={"losses": [{"name": "mse"}, {"name": "cross_entropy", **legacy}]})
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["loc"] == ["body", "losses", 1, "reduce"]
    assert 'send "reduction": "mean" or "sum" instead' in problem["detail"]
    sent = {"name": "cross_entropy", "reduce": True, "size_average": False}  # stands for "sum": told to send it
    response = client.post("/v1/sessions", json={"losses": [sent]})
    assert response.status_code == 422
    assert 'send "reduction": "sum" instead' in response.json()["detail"]
