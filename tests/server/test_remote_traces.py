"""remote=True against a real server on loopback: the same values as a local run, print()
output, jobs left and fetched later, errors with their own type and the user's line."""

import base64
import os
import subprocess
import sys
import time

import httpx
import pytest
import torch
from serving import KEYS

import nnsight_graph as nnsight
from nnsight_graph.ir.wire import dumps
from nnsight_graph.remote.client import Client, Job, JobCancelledError, RemoteError

PROMPT = "The Eiffel Tower is in the city of"


def test_a_remote_trace_gives_the_values_of_a_local_one(alice, tiny):
    with tiny.trace(PROMPT):
        tiny.transformer.h[1].output[:, -1] = 0
        local_hidden = tiny.transformer.h[2].output.save()
        local_logits = tiny.lm_head.output.save()
    with tiny.trace(PROMPT, remote=True) as tracer:
        tiny.transformer.h[1].output[:, -1] = 0
        hidden = tiny.transformer.h[2].output.save()
        logits = tiny.lm_head.output.save()
    # two processes: a busy machine may split a matmul over other threads (sums in another
    # order), seen as 1e-4 differences on values near 1
    assert torch.allclose(hidden, local_hidden, atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits, local_logits, atol=1e-4, rtol=1e-4)
    assert tracer.job is not None and tracer.job.status() == "COMPLETED"


def test_remote_generate_gives_the_tokens_of_a_local_one(alice, tiny):
    with tiny.generate(PROMPT, max_new_tokens=3) as tracer:
        local = tiny.generator.output.save()
    with tiny.generate(PROMPT, max_new_tokens=3, remote=True):
        remote = tiny.generator.output.save()
    assert torch.equal(remote, local)
    assert tiny.tokenizer.decode(remote[0, -3]) == " Paris"


def test_print_in_a_remote_trace_prints_here(alice, tiny, capsys):
    with tiny.trace(PROMPT, remote=True):
        print("shape on the server:", tiny.transformer.h[0].output.shape)
    assert "shape on the server: torch.Size([1, 8, 128])" in capsys.readouterr().out


def test_a_status_line_shows_the_job_as_it_goes(alice, tiny, monkeypatch, capsys):
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", True)
    with tiny.trace(PROMPT, remote=True):
        tiny.lm_head.output.save()
    lines = capsys.readouterr().err.splitlines()
    assert any("QUEUED" in line for line in lines)
    assert "COMPLETED" in lines[-1]


def test_a_job_left_running_is_fetched_by_id_from_anywhere(alice, tiny):
    with tiny.trace(PROMPT, remote=True, blocking=False) as tracer:
        logits = tiny.lm_head.output.save()
    job = tracer.job
    assert job.status() in ("QUEUED", "RUNNING", "COMPLETED")
    again = Job.attach(job.id)  # as another process would
    values = again.result(timeout=60)
    assert sorted(values) == ["logits"]
    assert tiny.tokenizer.decode(values["logits"][0, -1].argmax()) == " Paris"
    with pytest.raises(nnsight.UnsavedValueError, match=r"tracer.job.result\(\)\['logits'\]"):
        logits.shape  # the name holds a placeholder that says where the value is


def test_a_job_is_fetched_by_id_from_a_second_process(alice, tiny):
    with tiny.trace(PROMPT, remote=True, blocking=False) as tracer:
        logits = tiny.lm_head.output.save()  # noqa: F841  (the job names it)
    script = (
        "import sys, nnsight_graph as nnsight\n"
        "values = nnsight.Job.attach(sys.argv[1]).result(timeout=60)\n"
        "print(sorted(map(str, values)), values['logits'][0, -1].argmax().item())\n"
    )
    env = {**os.environ, "NNSIGHT_GRAPH_HOST": alice, "NNSIGHT_GRAPH_API_KEY": KEYS["alice"]}
    done = subprocess.run([sys.executable, "-c", script, tracer.job.id], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    paris = tiny.tokenizer.encode(" Paris")[0]
    assert done.stdout.split() == ["['logits']", str(paris)]


def test_an_error_on_the_server_keeps_its_type_and_the_users_line(alice, tiny):
    with pytest.raises(IndexError, match="out of bounds") as caught:
        with tiny.trace(PROMPT, remote=True):
            tiny.transformer.h[0].output[:, 99].save()  # mark: past the end
    notes = "\n".join(caught.value.__notes__)
    assert "tiny.transformer.h[0].output[:, 99].save()" in notes
    assert "test_remote_traces.py:" in notes
    assert "site-packages" not in notes and "Traceback" not in notes


def test_a_config_and_tokenizer_come_from_the_server(alice, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NNSIGHT_GRAPH_CACHE", str(tmp_path))
    served = nnsight.LanguageModel("tiny-gpt2")  # no such directory, no hub: the server has it
    assert served.config.n_layer == tiny.config.n_layer
    assert served.tokenizer(PROMPT).input_ids == tiny.tokenizer(PROMPT).input_ids
    with served.trace(PROMPT, remote=True):
        logits = served.lm_head.output.save()
    assert served.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    with pytest.raises(nnsight.NNsightError, match="weights of 'tiny-gpt2' are on the server"):
        with served.trace(PROMPT):
            served.lm_head.output.save()


def test_jobs_belong_to_their_key(alice, tiny):
    with tiny.trace(PROMPT, remote=True, blocking=False) as tracer:
        tiny.lm_head.output.save()
    bob = Client.shared(alice, KEYS["bob"])
    with pytest.raises(RemoteError) as caught:
        bob.job(tracer.job.id)
    assert (caught.value.status, caught.value.code) == (404, "unknown_job")
    nobody = Client.shared(alice, "")
    with pytest.raises(RemoteError) as caught:
        nobody.models()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    headers = {"ndif-api-key": KEYS["alice"]}  # nnsight's header works too
    assert httpx.get(f"{alice}/v1/whoami", headers=headers).json()["user"] == "alice"
    tracer.job.wait(timeout=60)


def test_refusals_carry_a_code_and_a_hint(alice, tiny, make_net):
    client = Client.shared(alice)
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    answer = httpx.post(f"{alice}/v1/jobs", content=b"junk", headers={
        **auth, "X-NNsight-Graph-Model": "tiny-gpt2"})
    assert (answer.status_code, answer.json()["code"]) == (400, "bad_payload")
    net = nnsight.NNsight(make_net())
    with net.trace(torch.rand(1, 5), run=False) as tracer:
        net.layer1.output.save()
    with pytest.raises(RemoteError) as caught:  # the net's module paths are not GPT-2's
        client.submit(dumps(tracer.graph), "tiny-gpt2")
    assert (caught.value.status, caught.value.code) == (422, "refused")
    assert "layer1" in str(caught.value)
    with pytest.raises(RemoteError, match="hosted: net, tiny-gpt2") as caught:
        client.submit(dumps(tracer.graph), "llama")
    assert caught.value.code == "unknown_model"
    answer = httpx.get(f"{alice}/v1/models", headers={**auth, "X-NNsight-Graph-Schema": "999"})
    assert (answer.status_code, answer.json()["code"]) == (426, "schema_mismatch")
    assert "upgrade the server" in answer.json()["hint"]


def test_events_are_resumable_and_polled_the_same(alice, tiny):
    with tiny.trace(PROMPT, remote=True) as tracer:
        print("hello from the trace", tiny.transformer.h[0].output.shape)
        tiny.lm_head.output.save()
    client = tracer.job.client
    events = client.events(tracer.job.id)
    statuses = [e["status"] for e in events if e["type"] == "STATUS"]
    assert statuses == ["RECEIVED", "QUEUED", "RUNNING", "COMPLETED"]
    logs = [e["text"] for e in events if e["type"] == "LOG"]
    assert logs == ["hello from the trace torch.Size([1, 8, 128])\n"]
    later = client.events(tracer.job.id, after=2)
    assert [e["seq"] for e in later] == [e["seq"] for e in events[2:]]
    assert list(client.follow(tracer.job.id, after=2, timeout=10)) == later  # the socket


def test_a_small_result_rides_on_the_completed_event(alice, tiny, monkeypatch):
    with tiny.trace(PROMPT, remote=True, blocking=False) as tracer:
        tiny.lm_head.output[0, -1].argmax().save()
    job = tracer.job
    fetched = job.client.result(job.id) if job.wait(timeout=60) == "COMPLETED" else None
    (completed,) = [e for e in job.client.follow(job.id, inline=True, timeout=10)
                    if e.get("status") == "COMPLETED"]
    assert base64.b64decode(completed["result"]) == fetched
    plain = list(job.client.follow(job.id, timeout=10))
    assert "result" not in plain[-1]  # only when asked: polled and followed events agree
    again = Job(job.client, job.id, job.names)

    def no_get(job_id):
        raise AssertionError("the result was fetched although the event carried it")

    monkeypatch.setattr(job.client, "result", no_get)
    assert torch.equal(next(iter(again.saved(timeout=10).values())),
                       next(iter(job.saved().values())))


def test_cancel_stops_a_running_job_and_the_next_job_runs(alice, tiny):
    with tiny.trace(PROMPT, remote=True, blocking=False) as slow:  # ~10 s of matmuls
        big = tiny.transformer.h[0].output.new_ones(2048, 2048)
        for _ in range(80):
            big = big @ big / 2048
        big.sum().save()
    with tiny.trace(PROMPT, remote=True, blocking=False) as queued:
        tiny.lm_head.output.save()
    with tiny.trace(PROMPT, remote=True, blocking=False) as after:
        logits = tiny.lm_head.output.save()
    assert queued.job.cancel() == "CANCELLED"  # still queued behind the slow one
    for _ in range(200):  # wait (bounded) until the slow job runs
        if slow.job.status() == "RUNNING":
            break
        time.sleep(0.05)
    restarts = _restarts()
    started = time.monotonic()
    slow.job.cancel()
    assert slow.job.wait(timeout=60) == "CANCELLED"
    assert time.monotonic() - started < 2  # stopped at its next node, not run to its end
    assert _restarts() == restarts  # ... by the worker itself: it was not killed
    with pytest.raises(JobCancelledError):
        queued.job.result(timeout=10)
    values = after.job.result(timeout=120)
    assert tiny.tokenizer.decode(values["logits"][0, -1].argmax()) == " Paris"
    del logits


def _restarts() -> int:
    (model,) = [m for m in Client.shared().models() if m["name"] == "tiny-gpt2"]
    return int(model["restarts"])


def test_a_generation_reports_each_step(alice, tiny):
    with tiny.generate(PROMPT, max_new_tokens=3, remote=True) as tracer:
        tiny.generator.output.save()
    steps = [(e["step"], e["steps"]) for e in Client.shared().events(tracer.job.id)
             if e.get("status") == "RUNNING" and e.get("step")]
    assert steps[:2] == [(1, 3), (2, 3)] and len(steps) <= 3  # it may end early (EOS)



def test_a_remote_session_is_one_job_whose_traces_share_values(alice, tiny):
    """Walkthrough section 9's session cell: the second trace uses the first's hidden state
    without .save(), and only the saved values come back."""
    with tiny.session() as session:
        with tiny.trace(PROMPT):
            hs = tiny.transformer.h[2].output[:, -1, :]
            local_t1 = tiny.lm_head.output.argmax(dim=-1).save()
        with tiny.trace("Buckingham Palace is in the city of"):
            tiny.transformer.h[1].output[:, -1, :] = hs
            local_t2 = tiny.lm_head.output.argmax(dim=-1).save()
    with tiny.session(remote=True) as session:
        with tiny.trace(PROMPT):
            hs = tiny.transformer.h[2].output[:, -1, :]
            t1 = tiny.lm_head.output.argmax(dim=-1).save()
        with tiny.trace("Buckingham Palace is in the city of"):
            tiny.transformer.h[1].output[:, -1, :] = hs
            t2 = tiny.lm_head.output.argmax(dim=-1).save()
    assert torch.equal(t1, local_t1) and torch.equal(t2, local_t2)
    assert session.job is not None and session.job.status() == "COMPLETED"
    assert tiny.tokenizer.decode(t1[0, -1]) == " Paris"
    with pytest.raises(nnsight.UnsavedValueError):
        hs.shape  # kept on the server for the second trace, never sent back


def test_a_local_block_runs_here_on_the_servers_values(alice, tiny, capsys):
    """Walkthrough section 9's nnsight.local() cell, and a block whose value the run uses."""
    with tiny.trace("Hello", remote=True):
        with nnsight.local():
            hs = tiny.transformer.h[-1].output[0]
            print("Local computation:", hs[0, 0])  # printed by this process, not the server
        out = tiny.lm_head.output.save()
    assert capsys.readouterr().out.startswith("Local computation: tensor(")
    assert out.shape[-1] == tiny.config.vocab_size

    with tiny.trace(PROMPT):
        tiny.transformer.h[1].output[:] = tiny.transformer.h[1].output * 2 + 1
        expected = tiny.lm_head.output.save()
    with tiny.trace(PROMPT, remote=True) as tracer:
        hidden = tiny.transformer.h[1].output
        with tracer.local():
            doubled = hidden * 2 + 1  # made here; the server waits for it
        tiny.transformer.h[1].output[:] = doubled
        logits = tiny.lm_head.output.save()
    assert torch.allclose(logits, expected, atol=1e-5)
    kinds = [e["type"] for e in Client.shared().events(tracer.job.id)]
    assert "LOCAL" in kinds


def test_block_values_are_declared_on_a_model_built_from_the_servers_config(
    alice, tiny, tmp_path, monkeypatch, declared, passes
):
    """The shape pass runs on the client's model without weights (config from the server)."""
    monkeypatch.setenv("NNSIGHT_GRAPH_CACHE", str(tmp_path))
    served = nnsight.LanguageModel("tiny-gpt2")
    with tiny.trace(PROMPT):
        hidden = tiny.transformer.h[1].output
        tiny.transformer.h[1].output[:] = hidden * 2 + 1
        expected = tiny.lm_head.output[0, -1, : hidden.shape[-1] // 2].save()
    with served.trace(PROMPT, remote=True):
        hidden = served.transformer.h[1].output
        with nnsight.local():
            doubled = hidden * 2 + 1
            half = hidden.shape[-1] // 2
        served.transformer.h[1].output[:] = doubled
        logits = served.lm_head.output[0, -1, :half].save()
    assert not served.dispatched  # the pass needed no weights here
    assert passes[0] == 1
    assert [{k: v for k, v in e.items() if k != "id"} for e in declared[0]] == [
        {"kind": "tensor", "shape": [1, 8, 128], "dtype": "floating"},
        {"kind": "value", "type": "int"},
    ]
    assert torch.allclose(logits, expected, atol=1e-5) and logits.shape == (64,)


def test_the_server_refuses_block_values_that_are_not_what_was_declared(
    alice, tiny, monkeypatch, capsys
):
    """A client that skips its own check and POSTs a value of another shape: the job ends
    ERROR with what was declared and what came, and no later node runs on it."""
    from nnsight_graph.local import LocalBlocks

    def lying(self, block, downloads, outputs):
        return {id: torch.zeros(2, 3) for id in outputs}

    monkeypatch.setattr(LocalBlocks, "handle", lying)
    with pytest.raises(nnsight.ExecutionError) as caught:
        with tiny.trace(PROMPT, remote=True):
            hidden = tiny.transformer.h[1].output
            with nnsight.local():
                doubled = hidden * 2
            tiny.transformer.h[1].output[:] = doubled
            print("after the block", tiny.transformer.h[2].output.shape)
            tiny.lm_head.output.save()
    message = str(caught.value)
    assert "test_remote_traces.py:" in message
    assert "a tensor of shape [2, 3] and dtype float32" in message
    assert "declared a tensor of shape [1, 8, 128] and dtype floating" in message
    assert "stopped before any node used it" in message
    assert "after the block" not in capsys.readouterr().out
    (job_id,) = [n.rsplit(" ", 1)[-1].rstrip(")") for n in caught.value.__notes__
                 if "in job" in n]
    assert Client.shared().job(job_id)["status"] == "ERROR"
    kinds = [e["type"] for e in Client.shared().events(job_id)]
    assert "LOCAL" in kinds and "LOG" not in kinds


def test_a_local_block_cannot_be_left_running(alice, tiny):
    with pytest.raises(nnsight.NNsightError, match="blocking=False"):
        with tiny.trace(PROMPT, remote=True, blocking=False):
            with nnsight.local():
                print(tiny.transformer.h[0].output.shape)
