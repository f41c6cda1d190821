"""The server under load: 16 clients (16 keys) x 60 one-save jobs on the shipped model, with
co-batching on and off. Every result is correct and reaches its owner, the server's memory
stays flat, and a worker killed mid-run costs exactly the jobs it was running (with
co-batching: the jobs of its batch). Throughput is reported, never asserted on
(benchmarks/bench_load.py measures it)."""

import os
import signal
import threading
import time

import pytest
from serving import http_client, wait_for

from nnsight_graph.ir.wire import dumps
from nnsight_graph.server.app import hash_key
from nnsight_graph.server.launch import server_process
from nnsight_graph.server.load import client_ids, one_save_jobs, rss_bytes, run_load

CLIENTS, JOBS = 16, 60
KILL_AFTER = 320  # jobs done when the worker is killed


def _keys(folder) -> list[str]:
    """Keys of 16 clients and a 17th (the one whose job is running when the worker dies)."""
    keys = [f"load-key-{i}" for i in range(CLIENTS + 1)]
    lines = [f"user{i} {hash_key(key)}" for i, key in enumerate(keys)]
    (folder / "keys.txt").write_text("\n".join(lines) + "\n")
    return keys


def _slow_job(tiny) -> bytes:
    """A job that merges with the load's jobs and runs ~1 s: the worker is mid-batch."""
    with tiny.trace(client_ids(tiny, CLIENTS)) as tracer:
        big = tiny.transformer.h[0].output.new_ones(384, 384)
        for _ in range(150):
            big = big @ big / 384
        big.sum().save()
        tiny.lm_head.output[:, -1].save()
    return dumps(tracer.graph)


@pytest.mark.slow
@pytest.mark.parametrize("window_ms", ["5", "0"], ids=["cobatching", "alone"])
def test_sixteen_clients_with_a_worker_killed_midway(tmp_path, tiny, window_ms):
    keys = _keys(tmp_path)
    jobs = one_save_jobs(tiny, CLIENTS)
    slow = _slow_job(tiny)
    killed: dict = {}
    reached = threading.Event()
    done = 0
    lock = threading.Lock()

    def count(outcome) -> None:
        nonlocal done
        with lock:
            done += 1
            if done == KILL_AFTER:
                reached.set()

    with server_process("--api-keys", str(tmp_path / "keys.txt"), "--batch-window-ms",
                        window_ms, store=str(tmp_path / "store")) as (url, process), \
            http_client(url, keys[CLIENTS]) as http:
        warm = run_load(url, keys, jobs, 2, limit_s=120)  # every client once warm
        assert len(warm.completed) == 2 * CLIENTS and not warm.wrong
        memory = rss_bytes(process.pid)

        def kill() -> None:
            if not reached.wait(timeout=300):
                return
            job = http.post("/v1/jobs", content=slow,
                            headers={"X-NNsight-Graph-Model": "tiny-gpt2"}).json()["job_id"]
            wait_for(http, job, ("RUNNING",), timeout=60)
            (model,) = http.get("/v1/models").json()
            os.kill(model["worker_pid"], signal.SIGKILL)
            killed.update(job=job, at=time.time(), pid=model["worker_pid"])

        killer = threading.Thread(target=kill)
        killer.start()
        report = run_load(url, keys, jobs, JOBS, limit_s=600, on_done=count)
        killer.join(timeout=60)
        print(f"\nco-batching window {window_ms} ms, {CLIENTS} clients x {JOBS} jobs: "
              f"{report.line()}")
        grown = rss_bytes(process.pid) - memory
        slow_info = wait_for(http, killed["job"], timeout=120)
        stranger = http.get(f"/v1/jobs/{report.outcomes[0].job_id}")
        (model,) = http.get("/v1/models").json()

    assert len(report.outcomes) == CLIENTS * JOBS  # bounded, and nothing went missing
    assert not report.wrong  # each value is the one its own client's input gives
    assert stranger.status_code == 404  # another key's job is not visible
    assert grown < 150 << 20, f"the server grew by {grown >> 20} MiB"
    assert model["restarts"] == 1 and model["worker_pid"] != killed["pid"]
    # the kill cost the jobs of the batch the slow job ran in, and nothing else
    assert slow_info["status"] == "ERROR" and "exited" in slow_info["error"]["message"]
    lost = [o for o in report.outcomes if o.status != "COMPLETED"]
    batch = slow_info["batch_jobs"] or 1
    assert len(lost) == batch - 1, [o.info for o in lost]
    for outcome in lost:
        assert outcome.status == "ERROR" and "exited" in outcome.info["error"]["message"]
        assert outcome.info["batch_jobs"] == batch
        assert abs(outcome.info["started"] - slow_info["started"]) < 0.5
        assert outcome.info["started"] <= killed["at"]
    sizes = {o.info["batch_jobs"] for o in report.outcomes}
    if window_ms == "0":
        assert sizes == {None} and batch == 1  # every job ran alone
    else:
        assert max(s or 1 for s in sizes) > 1  # jobs shared forward passes
