"""A model's worker process starts with nnsight_graph.server.worker.WORKER_ENV: OpenMP
threads that sleep between ops instead of spinning on the cores the server shares."""

import os
from pathlib import Path

import pytest
from serving import http_client

from nnsight_graph.server.worker import WORKER_ENV, worker_env


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_the_worker_runs_with_passive_openmp_threads(server):
    with http_client(server, "alice-secret-key") as http:
        (model,) = [m for m in http.get("/v1/models").json() if m["name"] == "tiny-gpt2"]
    environ = _environ(model["worker_pid"])
    for name, value in WORKER_ENV.items():
        assert environ.get(name) == os.environ.get(name, value)  # the operator's choice wins


def test_an_operator_setting_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in worker_env()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert worker_env()["OMP_WAIT_POLICY"] == "PASSIVE"
