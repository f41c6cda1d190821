"""Shared by the remote tests: the API keys of the test server's two users and its keys file
(`USER SHA256_OF_KEY` lines, as `nnsight-graph hash-key` prints them)."""

import time
from pathlib import Path

import httpx

from nnsight_graph.ir.wire import dumps
from nnsight_graph.server.app import hash_key

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}


def keys_file(folder: Path) -> Path:
    path = folder / "keys.txt"
    lines = ["# user sha256(key)"] + [f"{user} {hash_key(key)}" for user, key in KEYS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


PROMPT = "The Eiffel Tower is in the city of"


def http_client(url: str, key: str | None = None) -> httpx.Client:
    """Plain HTTP to the server (no retries, no status line), with `key` as Bearer."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def job_payload(tiny, slow: bool = False) -> bytes:
    """A wire payload of a one-save trace on the shipped model; `slow`: ~1 s of matmuls on
    the server after the first block (a job that is still running when a test acts on it)."""
    with tiny.trace(PROMPT) as tracer:
        value = tiny.transformer.h[0].output
        if slow:
            big = value.new_ones(1024, 1024)
            for _ in range(40):
                big = big @ big / 1024
            value = big
        value.sum().save()
    return dumps(tracer.graph)


def submit(http: httpx.Client, payload: bytes) -> httpx.Response:
    return http.post("/v1/jobs", content=payload, headers={"X-NNsight-Graph-Model": "tiny-gpt2"})


def wait_for(http: httpx.Client, job: str, states=("COMPLETED", "ERROR", "CANCELLED"),
             timeout: float = 60.0) -> dict:
    """The job's status once it is in one of `states` (polled; bounded by `timeout`)."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        info = http.get(f"/v1/jobs/{job}").json()
        if info["status"] in states:
            return info
        time.sleep(0.05)
    raise TimeoutError(f"job {job} did not reach {states} in {timeout} s")
