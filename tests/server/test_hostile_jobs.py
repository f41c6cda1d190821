"""The hostile payloads of tests/security, sent to a real server as jobs over HTTP.

Every case of security/hostile_cases.py (recorded on the served GPT-2) is submitted to one
server, one after another: it is refused at submit (400/413/422 with a stable code and a
message), or the job ends in ERROR with a clear error, or it completes with the values a
local run gives. After each, no canary file exists and the server still answers; after the
whole batch a normal trace gives correct values. Body-level attacks (too large, bad zstd, a
zstd bomb, a wrong schema header, unknown model) and jobs that would run for ever (stopped by
the server's --deadline) come after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import zstandard
from security.hostile_cases import CASES, Case, Context
from serving import KEYS, keys_file

from nnsight_graph.ir.limits import SERVER
from nnsight_graph.ir.results import loads_results
from nnsight_graph.ir.wire import dumps, loads
from nnsight_graph.ir.wire_schema import SCHEMA_VERSION
from nnsight_graph.server.launch import local_server

MODEL = "tiny-gpt2"
DEADLINE_S = 3.0  # the server's --deadline: every job here is well under it
MAX_BODY = 4 << 20  # the server's --max-body
JOB_TIMEOUT_S = 30.0  # a job still not final by then fails its test
SUBMIT_CODES = {"WireFormatError": (400, "bad_payload"), "RegistryError": (422, "refused"),
                "LimitError": (422, "refused"), "ValidationError": (422, "refused")}
BY_NAME = {case.name: case for case in CASES}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return Context(tmp_path_factory.mktemp("hostile-jobs"), on="llm")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("hostile-server")
    args = ("--api-keys", str(keys_file(folder)), "--deadline", str(DEADLINE_S),
            "--max-body", str(MAX_BODY))
    with local_server(*args, store=str(folder / "store")) as url:
        yield url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEYS['alice']}",
               "X-NNsight-Graph-Schema": str(SCHEMA_VERSION)}
    with httpx.Client(base_url=server, headers=headers, timeout=30.0) as client:
        yield client


def submit(http: httpx.Client, body: Any, model: str = MODEL, **headers: str) -> httpx.Response:
    return http.post("/v1/jobs", content=body, headers={
        "Content-Type": "application/octet-stream", "X-NNsight-Graph-Model": model, **headers})


def final_status(http: httpx.Client, job: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    """The job's status once it is COMPLETED, ERROR or CANCELLED (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        info = http.get(f"/v1/jobs/{job}").json()
        if info["status"] in ("COMPLETED", "ERROR", "CANCELLED"):
            return info
        assert time.monotonic() < deadline, f"job {job} is still {info['status']}"
        time.sleep(0.05)


def assert_refusal(answer: httpx.Response, status: int, code: str) -> dict:
    """A refusal with a stable JSON code and a message that leaks nothing of the server."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"code", "message", "hint"}
    assert body["code"] == code, body
    assert body["message"] and "Traceback" not in body["message"], body
    assert "/nnsight_graph/" not in body["message"] and "site-packages" not in body["message"]
    return body


def assert_still_serving(http: httpx.Client, context: Context) -> None:
    """No canary, the server answers, and its model is (again) ready to run jobs."""
    assert not Path(context.canary).exists(), "a payload created the canary"
    assert http.get("/healthz").status_code == 200
    deadline = time.monotonic() + 60
    while http.get("/readyz").status_code != 200:  # a worker restarted after a kill
        assert time.monotonic() < deadline, "the model did not become ready again"
        time.sleep(0.1)


def local_values(context: Context, payload: bytes) -> dict[int, Any]:
    """What the payload saves when run here, with the server's limits."""
    return context.llm.run(loads(payload, limits=SERVER), limits=SERVER)


def assert_same_values(remote: Any, local: Any) -> None:
    if isinstance(local, torch.Tensor):
        assert isinstance(remote, torch.Tensor) and remote.shape == local.shape
        assert torch.allclose(remote.float(), local.float(), atol=1e-5)
    elif isinstance(local, dict) or hasattr(local, "keys"):
        assert sorted(remote.keys()) == sorted(local.keys())
        for key in local.keys():
            assert_same_values(remote[key], local[key])
    elif isinstance(local, (list, tuple)):
        assert len(remote) == len(local)
        for a, b in zip(remote, local):
            assert_same_values(a, b)
    else:
        assert remote == local


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_hostile_payload_as_a_job(http: httpx.Client, context: Context, name: str) -> None:
    case: Case = BY_NAME[name]
    payload = case.build(context)
    answer = submit(http, payload)
    kind, _, pattern = case.expect.partition(": ")
    try:
        if answer.status_code == 202:
            info = final_status(http, answer.json()["job_id"])
            if case.expect == "ok":
                assert info["status"] == "COMPLETED", info["error"]
                result = http.get(f"/v1/jobs/{info['job_id']}/result")
                remote = loads_results(result.content)
                local = local_values(context, payload)
                assert sorted(remote) == sorted(local) and remote
                for node, value in local.items():
                    assert_same_values(remote[node], value)
            else:
                error = info["error"]
                assert info["status"] == "ERROR" and error, info
                assert error["type"] == kind, error
                assert re.search(pattern, error["message"]), error
                text = "\n".join([error["message"], *error["notes"]])
                assert "Traceback" not in text and "/nnsight_graph/" not in text, text
        else:
            assert case.expect != "ok", f"refused: {answer.text}"
            status, code = SUBMIT_CODES[kind]
            body = assert_refusal(answer, status, code)
            assert re.search(pattern, body["message"]), body
    finally:
        assert_still_serving(http, context)


def test_there_are_at_least_sixty_cases() -> None:
    assert len(BY_NAME) == len(CASES) >= 60


# the body and its headers -----------------------------------------------------------------


def test_a_body_over_the_limit_is_413(http: httpx.Client, context: Context) -> None:
    body = assert_refusal(submit(http, b"\0" * (MAX_BODY + 1)), 413, "too_large")
    assert str(MAX_BODY) in body["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what it reads
        for _ in range(MAX_BODY // (1 << 16) + 1):
            yield b"\0" * (1 << 16)

    assert_refusal(submit(http, chunks()), 413, "too_large")
    assert_still_serving(http, context)


@pytest.mark.parametrize("body, pattern", [
    (b"", "no zstd frame header"),
    (b"junk that is not zstd", "no zstd frame header"),
    (zstandard.ZstdCompressor().compress(b"x" * 1000)[:-7], "corrupt or truncated"),
    (zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100), "does not declare"),
    (zstandard.ZstdCompressor().compress(b"\0" * (300 << 20)), "more than the limit of"),
    (zstandard.ZstdCompressor().compress(b"NNSGRAPH" + b"\xff" * 8), "."),
], ids=["empty", "not zstd", "truncated zstd", "no declared size", "zstd bomb", "bad header"])
def test_a_body_that_is_not_a_payload_is_400(http: httpx.Client, context: Context,
                                            body: bytes, pattern: str) -> None:
    refusal = assert_refusal(submit(http, body), 400, "bad_payload")
    assert re.search(pattern, refusal["message"]), refusal
    assert_still_serving(http, context)


def test_a_wrong_schema_header_is_426(http: httpx.Client, context: Context) -> None:
    payload = dumps(context.graph)
    older = assert_refusal(submit(http, payload, **{"X-NNsight-Graph-Schema": "1"}),
                           426, "schema_mismatch")
    assert "upgrade the client" in older["hint"]
    newer = assert_refusal(submit(http, payload, **{"X-NNsight-Graph-Schema": "999"}),
                           426, "schema_mismatch")
    assert "upgrade the server" in newer["hint"]
    assert_refusal(submit(http, payload, **{"X-NNsight-Graph-Schema": "two"}), 400, "bad_request")
    assert_still_serving(http, context)


def test_bad_headers_and_an_unknown_model(http: httpx.Client, context: Context) -> None:
    payload = dumps(context.graph)
    body = assert_refusal(submit(http, payload, model="llama"), 404, "unknown_model")
    assert "tiny-gpt2" in body["hint"]
    assert_refusal(submit(http, payload, model=""), 400, "bad_request")
    assert_refusal(submit(http, payload, **{"X-NNsight-Graph-Names": "[1, 2]"}), 400,
                   "bad_request")
    assert_refusal(submit(http, payload, **{"X-NNsight-Graph-Names": "x" * (65 << 10)}), 400,
                   "bad_request")
    assert_refusal(submit(http, payload, Authorization="Bearer not-a-key"), 401, "unauthorized")
    assert_still_serving(http, context)


# jobs that would run for ever --------------------------------------------------------------


def _looping(context: Context, size: int, steps: int) -> bytes:
    """A graph of `steps` matmuls of `size`² matrices (within every size bound)."""
    with context.llm.trace("Hello", run=False) as tracer:
        big = context.llm.transformer.h[0].output.new_ones(size, size)
        for _ in range(steps):
            big = big @ big / size
        big.sum().save()
    return dumps(tracer.graph)


def test_a_job_of_many_nodes_stops_at_the_deadline(http: httpx.Client, context: Context) -> None:
    answer = submit(http, _looping(context, 1024, 5000))  # minutes of work
    assert answer.status_code == 202, answer.text
    started = time.monotonic()
    info = final_status(http, answer.json()["job_id"])
    assert info["status"] == "ERROR"
    assert info["error"]["type"] == "LimitError"
    assert "deadline of 3 s" in info["error"]["message"]
    assert time.monotonic() - started < DEADLINE_S + 5
    assert_still_serving(http, context)


def test_a_job_stuck_in_one_node_is_stopped_and_the_worker_restarted(
    http: httpx.Client, context: Context
) -> None:
    answer = submit(http, _looping(context, 8192, 3))  # one matmul of ~10**12 flops
    assert answer.status_code == 202, answer.text
    started = time.monotonic()
    info = final_status(http, answer.json()["job_id"])
    assert info["status"] == "ERROR", info
    if info["error"]["type"] == "LimitError":  # a fast machine finished the first matmul
        assert "deadline of 3 s" in info["error"]["message"]
    else:
        assert info["error"]["type"] == "TimeoutError", info["error"]
        assert "ran past its deadline of 3 s and did not stop" in info["error"]["message"]
    assert time.monotonic() - started < DEADLINE_S + 10
    assert_still_serving(http, context)


def test_after_the_batch_a_normal_trace_is_correct(http: httpx.Client, context: Context) -> None:
    payload = dumps(context.graph)
    answer = submit(http, payload)
    assert answer.status_code == 202, answer.text
    info = final_status(http, answer.json()["job_id"])
    assert info["status"] == "COMPLETED", info
    remote = loads_results(http.get(f"/v1/jobs/{info['job_id']}/result").content)
    local = local_values(context, payload)
    for node, value in local.items():
        assert_same_values(remote[node], value)
    mine = http.get("/v1/whoami").json()
    assert (mine["user"], mine["jobs_queued"], mine["jobs_running"]) == ("alice", 0, 0)
