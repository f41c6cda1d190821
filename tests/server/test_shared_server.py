"""A server shared by several keys: jobs taken round-robin across keys, bounded queues and
per-key limits answered with 429 and Retry-After, daily budgets from the keys file, and the
state in Prometheus' format at /metrics."""

from collections.abc import Iterator

import pytest
from serving import KEYS
from serving import http_client as _http
from serving import job_payload as _payload
from serving import submit as _submit
from serving import wait_for as _wait

from nnsight_graph.server.app import hash_key
from nnsight_graph.server.launch import local_server

CAROL = "carol-has-no-time-left"  # a key whose daily budget is 0 s


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("shared")
    keys = folder / "keys.txt"
    lines = [f"{user} {hash_key(key)}" for user, key in KEYS.items()]
    lines.append(f"carol {hash_key(CAROL)} 0")
    keys.write_text("\n".join(lines) + "\n")
    # co-batching off: these tests count jobs that run one at a time (a merged pass would
    # take several of alice's queued jobs at once, depending on when they arrive);
    # tests/server/test_cobatch_server.py covers merging
    with local_server("--api-keys", str(keys), "--max-queue", "6",
                      "--max-queued-per-key", "4", "--batch-window-ms", "0",
                      store=str(folder / "store")) as url:
        yield url


def test_one_keys_many_jobs_do_not_starve_another_keys_one(shared, tiny):
    slow = _payload(tiny, slow=True)
    with _http(shared, KEYS["alice"]) as alice, _http(shared, KEYS["bob"]) as bob:
        mine = [_submit(alice, slow).json()["job_id"] for _ in range(4)]
        theirs = _submit(bob, _payload(tiny, slow=False)).json()["job_id"]
        done = {job: _wait(alice, job) for job in mine}
        bobs = _wait(bob, theirs)
    assert all(info["status"] == "COMPLETED" for info in [*done.values(), bobs])
    starts = sorted(info["started"] for info in done.values())
    assert bobs["started"] < starts[1]  # after alice's first at the latest, not her fourth


def test_full_queues_answer_429_with_retry_after(shared, tiny):
    slow = _payload(tiny, slow=True)
    with _http(shared, KEYS["alice"]) as alice, _http(shared, KEYS["bob"]) as bob:
        answers = [_submit(alice, slow) for _ in range(6)]
        codes = [a.status_code for a in answers]  # her limit: 4 queued (one may run already)
        assert codes[:4] == [202] * 4 and codes.count(202) in (4, 5) and codes[-1] == 429
        refused = answers[-1]
        assert refused.json()["code"] == "too_many_jobs" and refused.headers["Retry-After"]
        more = [_submit(bob, slow) for _ in range(3)]
        assert [a.status_code for a in more][-1] == 429  # 6 per model, alice holds 4
        assert more[-1].json()["code"] == "queue_full"
        for answer in answers[:4] + [a for a in more if a.status_code == 202]:
            job = answer.json()["job_id"]
            (alice if answer in answers else bob).delete(f"/v1/jobs/{job}")


def test_a_spent_budget_is_refused_and_whoami_says_what_is_left(shared, tiny):
    with _http(shared, CAROL) as carol, _http(shared, KEYS["bob"]) as bob:
        refused = _submit(carol, _payload(tiny, slow=False))
        assert refused.status_code == 429 and refused.json()["code"] == "budget_spent"
        assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600 + 1
        assert carol.get("/v1/whoami").json()["budget_s_left"] == 0
        assert bob.get("/v1/whoami").json()["budget_s_left"] is None  # no budget


def test_metrics_report_jobs_queues_restarts_and_latency(shared, tiny):
    with _http(shared, KEYS["bob"]) as bob:
        job = _submit(bob, _payload(tiny, slow=False)).json()["job_id"]
        assert _wait(bob, job)["status"] == "COMPLETED"
        text = bob.get("/metrics").text
    assert 'nnsight_graph_jobs_total{model="tiny-gpt2",status="COMPLETED"}' in text
    assert 'nnsight_graph_queue_depth{model="tiny-gpt2"}' in text
    assert 'nnsight_graph_worker_restarts_total{model="tiny-gpt2"}' in text
    assert 'nnsight_graph_job_latency_seconds_bucket{le="+Inf",model="tiny-gpt2"}' in text
