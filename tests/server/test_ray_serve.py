"""`nnsight-graph serve --ray` on a local Ray: two replicas of the shipped model behind the
same HTTP API and job store. Jobs spread over both replicas, results equal a local run,
cancel stops a running job through the deployment handle, and a killed replica costs only
the job it ran (Ray Serve replaces it). Skipped where Ray Serve is not installed
(`pip install 'nnsight-graph[ray]'`)."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch
from serving import PROMPT, http_client, job_payload, submit, wait_for

import nnsight_graph as nnsight
from nnsight_graph.ir.limits import SERVER
from nnsight_graph.ir.results import loads_results
from nnsight_graph.ir.wire import dumps
from nnsight_graph.models import tiny_gpt2_path
from nnsight_graph.server.launch import free_port

# Ray is imported by the fixture, not here: collecting this module (every test run) leaves
# the test process without it
on_ray = [pytest.mark.slow,
          pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                             reason="Ray Serve is not installed: pip install "
                             "'nnsight-graph[ray]'"),
          pytest.mark.filterwarnings("ignore::ResourceWarning"),
          pytest.mark.filterwarnings("ignore::UserWarning")]


def _on_ray(test):
    for mark in reversed(on_ray):
        test = mark(test)
    return test


def test_the_default_server_does_not_import_ray():
    code = ("import sys; from nnsight_graph.server import app, cli, models, worker; "
            "cli.parser().parse_args(['serve']); print(sorted(m for m in sys.modules "
            "if m == 'ray' or m.startswith('ray.')))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120)
    assert found.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from nnsight_graph.server import ray_serving

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        settings = ray_serving.ServerSettings(
            models={"tiny-gpt2": tiny_gpt2_path()},
            store=str(tmp_path_factory.mktemp("ray-store")), ttl_s=3600.0, limits=SERVER,
            options=ray_serving.RayOptions(replicas=2, num_cpus=1.0, cancel_grace_s=5.0,
                                           health_check_period_s=2.0))
        yield ray_serving.start(settings, port=free_port())
        ray_serving.stop()
    finally:
        ray.shutdown()


def _model(http) -> dict:
    (model,) = http.get("/v1/models").json()
    return model


def _matmuls(tiny, steps: int) -> bytes:
    """A job of `steps` 1024² matmuls on the server (~0.05 s each), recorded without a local
    run: 40 make a job that still runs when the next is taken, 2000 one that runs for
    minutes unless it is stopped."""
    with tiny.trace(PROMPT, run=False) as tracer:
        big = tiny.transformer.h[0].output.new_ones(1024, 1024)
        for _ in range(steps):
            big = big @ big / 1024
        big.sum().save()
    return dumps(tracer.graph)


def _local_value(tiny) -> torch.Tensor:
    with tiny.trace(PROMPT):
        value = tiny.transformer.h[0].output.sum().save()
    return value


def _result(http, job: str) -> torch.Tensor:
    response = http.get(f"/v1/jobs/{job}/result")
    assert response.status_code == 200
    (value,) = loads_results(response.content).values()
    return value


@_on_ray
def test_jobs_spread_over_both_replicas_with_a_local_runs_values(url, tiny):
    with http_client(url) as http:
        assert http.get("/readyz").json() == {"ready": True, "models": {"tiny-gpt2": "ready"}}
        model = _model(http)
        assert model["backend"] == "ray" and model["state"] == "ready"
        slow_job = _matmuls(tiny, 40)
        slow = [submit(http, slow_job).json()["job_id"] for _ in range(4)]
        quick = [submit(http, job_payload(tiny)).json()["job_id"] for _ in range(2)]
        done = {job: wait_for(http, job, timeout=120) for job in slow + quick}
        assert [info["status"] for info in done.values()] == ["COMPLETED"] * 6
        expected = _local_value(tiny)
        for job in quick:
            torch.testing.assert_close(_result(http, job), expected, atol=1e-4, rtol=0)
        replicas = _model(http)["replicas"]
    assert len(replicas) == 2 and len({r["pid"] for r in replicas}) == 2
    assert all(r["jobs"] >= 1 for r in replicas)  # both ran jobs
    assert sum(r["jobs"] for r in replicas) >= 6


@_on_ray
def test_remote_traces_with_print_and_a_local_block_run_through_ray(url, tiny, monkeypatch,
                                                                    capsys):
    """The client's own path (events over the WebSocket through Serve's proxy, print() output,
    an nnsight.local() block whose values go back to the running replica)."""
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", url)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    with tiny.trace(PROMPT):
        tiny.transformer.h[1].output[:] = tiny.transformer.h[1].output * 2 + 1
        expected = tiny.lm_head.output.save()
    with tiny.trace(PROMPT, remote=True) as tracer:
        hidden = tiny.transformer.h[1].output
        print("on the replica:", hidden.shape)
        with tracer.local():
            doubled = hidden * 2 + 1  # made here; the replica waits for it
        tiny.transformer.h[1].output[:] = doubled
        logits = tiny.lm_head.output.save()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert "on the replica: torch.Size([1, " in capsys.readouterr().out


@_on_ray
def test_cancel_stops_a_running_job_through_the_handle(url, tiny):
    with http_client(url) as http:
        job = submit(http, _matmuls(tiny, 2000)).json()["job_id"]
        wait_for(http, job, ("RUNNING",))
        (runner,) = _wait_replica_of(http, job)
        before = _model(http)["restarts"]
        assert http.delete(f"/v1/jobs/{job}").status_code == 200
        assert wait_for(http, job, timeout=30)["status"] == "CANCELLED"
        after = submit(http, job_payload(tiny)).json()["job_id"]
        assert wait_for(http, after, timeout=60)["status"] == "COMPLETED"
        model = _model(http)
    assert model["restarts"] == before  # stopped by its replica, not killed
    assert runner["pid"] in {r["pid"] for r in model["replicas"]}


@_on_ray
def test_a_killed_replica_costs_its_job_and_is_replaced(url, tiny):
    with http_client(url) as http:
        job = submit(http, _matmuls(tiny, 2000)).json()["job_id"]
        wait_for(http, job, ("RUNNING",))
        (runner,) = _wait_replica_of(http, job)
        before = _model(http)
        os.kill(runner["pid"], signal.SIGKILL)
        failed = wait_for(http, job, timeout=60)
        assert failed["status"] == "ERROR" and "replica" in failed["error"]["message"]
        assert str(runner["pid"]) in failed["error"]["message"]
        later = [submit(http, job_payload(tiny)).json()["job_id"] for _ in range(2)]
        assert [wait_for(http, j, timeout=120)["status"] for j in later] == ["COMPLETED"] * 2
        assert _model(http)["restarts"] == before["restarts"] + 1
        # Ray Serve starts a replica in its place: jobs run on a pid not seen before
        old = {r["pid"] for r in before["replicas"]}
        new: set[int] = set()
        ends = time.monotonic() + 120
        slow_job = _matmuls(tiny, 40)
        while not new and time.monotonic() < ends:
            jobs = [submit(http, slow_job).json()["job_id"] for _ in range(2)]
            assert [wait_for(http, j, timeout=120)["status"] for j in jobs] == ["COMPLETED"] * 2
            new = {r["pid"] for r in _model(http)["replicas"]} - old
        replicas = _model(http)["replicas"]
    assert new and runner["pid"] not in {r["pid"] for r in replicas}
    assert len(replicas) == 2


def _wait_replica_of(http, job: str) -> list[dict]:
    """The replica /v1/models shows running `job` (bounded wait: the RUNNING status comes
    before the replica's first message)."""
    ends = time.monotonic() + 30
    while time.monotonic() < ends:
        found = [r for r in _model(http)["replicas"] if r["job"] == job]
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError(f"no replica shows job {job}")
