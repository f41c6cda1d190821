"""Co-batching over real HTTP: jobs of different keys queued together run as one forward
pass (their status says how many jobs it held), each gets exactly what it gets alone, no job
reads or changes another's rows, an error or a cancel ends only its own job, and jobs that
cannot merge run alone."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from serving import KEYS, http_client, keys_file, submit, wait_for

import nnsight_graph as nnsight
from nnsight_graph.ir.limits import SERVER
from nnsight_graph.ir.results import loads_results
from nnsight_graph.ir.wire import dumps
from nnsight_graph.remote.execution import run_graph
from nnsight_graph.server.launch import local_server

PROMPTS = ["The Eiffel Tower is in the city of", "Buckingham Palace is in the city of",
           "The Colosseum is in the city of"]
WIDTH = 6


@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that merges: a 50 ms gathering window, 16 running jobs per key."""
    folder = tmp_path_factory.mktemp("cobatch")
    with local_server("--api-keys", str(keys_file(folder)), "--batch-window-ms", "50",
                      "--max-running-per-key", "16", store=str(folder / "store")) as url:
        yield url


@pytest.fixture
def users(batching, monkeypatch):
    """Plain HTTP clients of alice and bob; remote=True traces go to the server as alice."""
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEYS["alice"])
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", batching)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    alice, bob = http_client(batching, KEYS["alice"]), http_client(batching, KEYS["bob"])
    with alice, bob:
        yield alice, bob


def _ids(tiny, prompt: str, width: int = WIDTH) -> torch.Tensor:
    return torch.tensor([tiny.tokenizer(prompt)["input_ids"][:width]])


def _slow_job(tiny, prompt, steps: int) -> str:
    """Submit (as alice, not run here) a job of `steps` 512x512 matmuls on `prompt`."""
    with tiny.trace(prompt, remote=True, blocking=False) as tracer:
        big = tiny.transformer.h[0].output.new_ones(512, 512)
        for _ in range(steps):
            big = big @ big / 512
        big.sum().save()
        if not isinstance(prompt, str):
            tiny.lm_head.output.save()
    return tracer.job.id


@contextmanager
def _worker_busy(http, tiny) -> Iterator[None]:
    """The worker runs a long job (of its own width: it never merges) while the body queues
    jobs; cancelled afterwards, so the queued jobs are taken together."""
    job = _slow_job(tiny, "Hello", 3000)
    wait_for(http, job, ("RUNNING",))
    yield
    http.delete(f"/v1/jobs/{job}")
    assert wait_for(http, job)["status"] == "CANCELLED"


def _alone(tiny, graph) -> dict:
    """What the job's graph saves run alone, in this process (as the server runs it)."""
    return run_graph(tiny, replace(graph, trusted=False), SERVER)


def _result(http, job: str) -> dict:
    response = http.get(f"/v1/jobs/{job}/result")
    assert response.status_code == 200, response.text
    return loads_results(response.content)


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for node, value in expected.items():
        assert torch.allclose(got[node], value, atol=1e-4), node


def _graphs(tiny) -> dict:
    with tiny.trace(_ids(tiny, PROMPTS[0])) as a:  # alice: reads
        tiny.transformer.h[2].output.save()
        tiny.lm_head.output.save()
    with tiny.trace(_ids(tiny, PROMPTS[1])) as b:  # bob: zeros its own rows, then reads
        tiny.transformer.h[1].output[:] = 0
        tiny.transformer.h[2].output.save()
        tiny.lm_head.output.argmax(dim=-1).save()
    with tiny.trace(torch.cat([_ids(tiny, PROMPTS[2]), _ids(tiny, PROMPTS[0])])) as c:
        tiny.transformer.h[3].output.mean(dim=-1).save()  # alice again: two rows
    return {"a": a.graph, "b": b.graph, "c": c.graph}


def test_merged_jobs_of_two_keys_get_what_each_gets_alone(users, tiny):
    alice, bob = users
    graphs = _graphs(tiny)
    owners = {"a": alice, "b": bob, "c": alice}
    with _worker_busy(alice, tiny):
        jobs = {name: submit(owners[name], dumps(g)).json()["job_id"]
                for name, g in graphs.items()}
    for name, job in jobs.items():
        info = wait_for(owners[name], job)
        assert info["status"] == "COMPLETED", info
        assert info["batch_jobs"] == 3  # one forward pass for the three
        final = owners[name].get(f"/v1/jobs/{job}/events").json()["events"][-1]
        assert final["status"] == "COMPLETED" and final["batch_jobs"] == 3  # its event says so
        _same(_result(owners[name], job), _alone(tiny, graphs[name]))
    # bob's zeros stayed in bob's row: his layer 2 is what zeros give, alice's is not
    a_h2, b_h2 = (_result(owners[n], jobs[n])[min(_alone(tiny, graphs[n]))] for n in "ab")
    zeroed = _alone(tiny, graphs["b"])[min(_alone(tiny, graphs["b"]))]
    assert torch.allclose(b_h2, zeroed, atol=1e-4) and not torch.allclose(a_h2, zeroed, atol=1e-2)
    assert bob.get(f"/v1/jobs/{jobs['a']}").status_code == 404  # alice's job stays hers
    text = alice.get("/metrics").text
    assert 'nnsight_graph_batch_jobs_bucket{le="2",model="tiny-gpt2"}' in text
    count = sum_ = 0.0
    for line in text.splitlines():
        if line.startswith('nnsight_graph_batch_jobs_count{model="tiny-gpt2"}'):
            count = float(line.split()[-1])
        if line.startswith('nnsight_graph_batch_jobs_sum{model="tiny-gpt2"}'):
            sum_ = float(line.split()[-1])
    assert sum_ - count >= 2  # at least one pass held three jobs


def test_an_error_in_one_merged_job_fails_only_that_job(users, tiny):
    alice, bob = users
    graphs = _graphs(tiny)
    bad = tiny.trace(_ids(tiny, PROMPTS[1]))
    with pytest.raises(IndexError), bad:
        tiny.transformer.h[0].output[:, 99].save()  # past the end: IndexError when it runs
    with _worker_busy(alice, tiny):
        good = submit(alice, dumps(graphs["a"])).json()["job_id"]
        failing = submit(bob, dumps(bad.graph)).json()["job_id"]
        other = submit(alice, dumps(graphs["c"])).json()["job_id"]
    failed = wait_for(bob, failing)
    assert failed["status"] == "ERROR" and failed["error"]["type"] == "IndexError"
    assert failed["batch_jobs"] == 3
    for job, name in ((good, "a"), (other, "c")):
        assert wait_for(alice, job)["status"] == "COMPLETED"
        _same(_result(alice, job), _alone(tiny, graphs[name]))


def test_a_payload_that_claims_rows_it_does_not_bring_is_never_merged(users, tiny):
    alice, bob = users
    graphs = _graphs(tiny)
    with tiny.trace(_ids(tiny, PROMPTS[1])) as tracer:
        tiny.transformer.h[0].output.save()
    (invoke,) = tracer.graph.invokes
    greedy = replace(tracer.graph, invokes=[invoke._replace(stop=2)])  # one prompt, two rows
    with _worker_busy(alice, tiny):
        victim = submit(alice, dumps(graphs["a"])).json()["job_id"]
        answer = submit(bob, dumps(greedy))
    assert wait_for(alice, victim)["status"] == "COMPLETED"
    _same(_result(alice, victim), _alone(tiny, graphs["a"]))
    assert answer.status_code in (202, 422)
    if answer.status_code == 202:
        info = wait_for(bob, answer.json()["job_id"])
        assert info["batch_jobs"] is None  # it ran alone: there was no row of another job
        assert wait_for(alice, victim)["batch_jobs"] is None
        assert "batch_jobs" not in alice.get(f"/v1/jobs/{victim}/events").json()["events"][-1]


def _unmergeable(tiny) -> dict:
    ids = _ids(tiny, PROMPTS[0])
    with tiny.trace(ids) as stop:
        tiny.transformer.h[0].output.save()
        stop.stop()
    with tiny.trace(ids) as skip:
        tiny.transformer.h[1].skip(tiny.transformer.h[0].output)
        tiny.lm_head.output.save()
    with tiny.trace(ids) as grad:
        hidden = tiny.transformer.h[1].output[0]
        hidden.requires_grad_(True)
        loss = tiny.lm_head.output.sum()
        with loss.backward():
            hidden.grad.save()
    with tiny.trace() as promptless:
        with promptless.invoke(ids):
            tiny.transformer.h[0].output.save()
        with promptless.invoke():
            tiny.transformer.h[0].output.sum().save()
    with tiny.trace(_ids(tiny, PROMPTS[1], WIDTH - 2)) as narrow:  # a width of its own
        tiny.lm_head.output.save()
    return {name: tracer.graph for name, tracer in
            (("stop", stop), ("skip", skip), ("grad", grad), ("promptless", promptless),
             ("narrow", narrow))}


def test_jobs_that_cannot_merge_run_alone_and_are_correct(users, tiny):
    alice, bob = users
    graphs = {**_unmergeable(tiny), **_graphs(tiny)}
    del graphs["c"]
    with _worker_busy(alice, tiny):
        jobs = {name: submit(bob if name in ("b", "narrow") else alice, dumps(g)).json()["job_id"]
                for name, g in graphs.items()}
    for name, job in jobs.items():
        http = bob if name in ("b", "narrow") else alice
        info = wait_for(http, job)
        assert info["status"] == "COMPLETED", (name, info)
        assert info["batch_jobs"] == (2 if name in ("a", "b") else None), name
        _same(_result(http, job), _alone(tiny, graphs[name]))


def test_cancelling_one_job_of_a_running_batch_ends_only_that_job(users, tiny):
    alice, bob = users
    graphs = _graphs(tiny)
    with _worker_busy(alice, tiny):
        kept = _slow_job(tiny, _ids(tiny, PROMPTS[0]), 200)  # merges: rows-only reads and calls
        dropped = submit(bob, dumps(graphs["b"])).json()["job_id"]
    assert wait_for(bob, dropped, ("RUNNING", "COMPLETED"))["batch_jobs"] == 2
    bob.delete(f"/v1/jobs/{dropped}")
    info = wait_for(bob, dropped, ("CANCELLED", "COMPLETED"))
    done = wait_for(alice, kept)
    assert done["status"] == "COMPLETED" and done["batch_jobs"] == 2
    total, logits = (value for _, value in sorted(_result(alice, kept).items()))
    assert float(total) == 512 * 512  # ones stay ones
    with tiny.trace(_ids(tiny, PROMPTS[0])):
        expected = tiny.lm_head.output.save()
    assert torch.allclose(logits, expected, atol=1e-4)
    if info["status"] == "CANCELLED":  # (else the batch had ended before the cancel came)
        assert bob.get(f"/v1/jobs/{dropped}/result").status_code == 409
        assert done["finished"] >= info["finished"]  # cancelled at once, not at the end
