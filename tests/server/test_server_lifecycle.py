"""What a server keeps across a restart, and where it refuses to listen."""

import subprocess
import sys

import pytest

import nnsight_graph as nnsight
from nnsight_graph.remote.client import Job
from nnsight_graph.server.launch import free_port, local_server
from nnsight_graph.server.store import Store

PROMPT = "The Eiffel Tower is in the city of"


def test_a_restart_keeps_completed_results_and_fails_running_jobs(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    store, port = str(tmp_path / "store"), free_port()
    with local_server(store=store, port=port) as url:
        with tiny.trace(PROMPT, remote=url) as tracer:
            logits = tiny.lm_head.output.save()
        job_id = tracer.job.id
    jobs = Store(store)  # as if the server had died while a job ran
    stuck = jobs.add("local", "tiny-gpt2", b"payload", {})
    assert jobs.take(stuck)
    with local_server(store=store, port=port) as url:
        again = Job.attach(job_id, host=url)
        assert again.result(timeout=30)[next(iter(again.names.values()))].equal(logits)
        info = Job.attach(stuck, host=url).info()
        assert info["status"] == "ERROR"
        assert "restarted while the job ran" in info["error"]["message"]


def test_a_public_address_needs_api_keys():
    done = subprocess.run(
        [sys.executable, "-m", "nnsight_graph.server", "serve", "--host", "0.0.0.0",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "without --api-keys" in done.stderr


@pytest.mark.parametrize("spec", ["nameonly", "=path"])
def test_a_model_flag_without_a_name_says_how_to_write_it(spec):
    done = subprocess.run(
        [sys.executable, "-m", "nnsight_graph.server", "serve", "--model", spec],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "NAME=PATH_OR_HUB_ID" in done.stderr
