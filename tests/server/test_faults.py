"""Faults a shared server survives: a worker killed mid-job costs only that job, a client
that goes away loses nothing, and SIGTERM drains (the running job finishes, queued jobs wait
in the store and run after the next start)."""

import os
import signal

from serving import http_client, job_payload, submit, wait_for

from nnsight_graph.server.launch import server_process


def _model(http, name: str = "tiny-gpt2") -> dict:
    (model,) = [m for m in http.get("/v1/models").json() if m["name"] == name]
    return model


def test_a_killed_worker_costs_only_the_job_it_ran(server, tiny):
    with http_client(server) as http:  # the module's server (tests/server/conftest.py)
        http.headers["Authorization"] = "Bearer alice-secret-key"
        slow = submit(http, job_payload(tiny, slow=True)).json()["job_id"]
        wait_for(http, slow, ("RUNNING",))  # then `after` cannot join its batch
        after = submit(http, job_payload(tiny)).json()["job_id"]
        before = _model(http)
        os.kill(before["worker_pid"], signal.SIGKILL)
        failed = wait_for(http, slow)
        assert failed["status"] == "ERROR" and "exited" in failed["error"]["message"]
        assert wait_for(http, after, timeout=120)["status"] == "COMPLETED"
        now = _model(http)
        assert now["restarts"] == before["restarts"] + 1 and now["state"] == "ready"
        assert now["worker_pid"] != before["worker_pid"]


def test_a_client_that_goes_away_loses_nothing(server, tiny):
    with http_client(server, "alice-secret-key") as http:
        job = submit(http, job_payload(tiny)).json()["job_id"]
    # the submitting connection is closed; the job runs on and its result stays
    with http_client(server, "alice-secret-key") as http:
        assert wait_for(http, job)["status"] == "COMPLETED"
        assert http.get(f"/v1/jobs/{job}/result").status_code == 200


def test_sigterm_lets_the_running_job_finish_and_keeps_the_queue(tmp_path, tiny):
    store = str(tmp_path / "store")
    with server_process(store=store) as (url, process), http_client(url) as http:
        running = submit(http, job_payload(tiny, slow=True)).json()["job_id"]
        queued = submit(http, job_payload(tiny)).json()["job_id"]
        wait_for(http, running, ("RUNNING",))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    with server_process(store=store) as (url, _), http_client(url) as http:
        assert http.get(f"/v1/jobs/{running}").json()["status"] == "COMPLETED"  # drained
        assert wait_for(http, queued)["status"] == "COMPLETED"  # ran after the restart
