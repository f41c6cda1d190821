"""The job store's per-job queries stay index lookups however many finished jobs it keeps
(results live for a TTL of days, so the jobs table grows with every job ever run)."""

import sqlite3

from nnsight_graph.server.store import Store

WHOLE_TABLE = ("GROUP BY model, status", "finished - created", "finished < ")
"""Queries that read the whole table on purpose: /metrics and the TTL sweep (not per job)."""


def _store_with_history(tmp_path, jobs: int = 200) -> Store:
    store = Store(tmp_path)
    for n in range(jobs):
        job = store.add(f"user{n % 5}", "m", b"x", {}, merge_key="k", rows=1)
        store.take(job)
        store.finish_many([(job, "COMPLETED", None)])
    return store


def _plans(db: sqlite3.Connection, statements: list[str]) -> dict[str, list[str]]:
    plans = {}
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            plans[sql] = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return plans


def test_every_per_job_query_searches_an_index(tmp_path):
    store = _store_with_history(tmp_path)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)  # the SQL with its values bound
    job = store.add("user1", "m", b"x", {}, merge_key="k", rows=1)
    other = store.add("user2", "m", b"x", {})
    store.counts("user1")
    store.queue_depth("m")
    store.position(other)
    assert store.mergeable("m", "k") == [(job, "user1", 1)]
    assert store.next_queued("m", max_running_per_key=2) in (job, other)
    store.running_by_user()
    store.seconds_used("user1", 0.0, 1e12)
    store.take_many([job])
    store.progress(job, 1, 2)
    store.finish_many([(job, "COMPLETED", None)])
    store.cancel_queued(other)
    store.events(job)
    store.get(job)
    store.db.set_trace_callback(None)
    plans = _plans(store.db, statements)
    assert len(plans) >= 12, statements  # the calls above ran their queries
    scans = {sql: plan for sql, plan in plans.items()
             if not any(part in sql for part in WHOLE_TABLE)
             and any(step.startswith("SCAN") for step in plan)}
    assert not scans, scans


def test_the_rewritten_queries_answer_as_before(tmp_path):
    store = _store_with_history(tmp_path, jobs=20)
    first = store.add("user1", "m", b"x", {})
    second = store.add("user2", "m", b"x", {})
    third = store.add("user1", "m", b"x", {})
    assert store.position(third) == 2 and store.counts("user1") == {
        "jobs_queued": 2, "jobs_running": 0}
    # user2's last job for m started after user1's (history: user n % 5), so user1 goes first
    assert store.next_queued("m") == first
    store.take(first)
    assert store.position(third) == 2  # one running, one queued before it
    assert store.next_queued("m") == second  # user1 just started one: user2's turn
    assert store.next_queued("m", max_running_per_key=1) == second
    assert store.seconds_used("user1", 0.0, 1e12) > 0
    assert store.counts("user1") == {"jobs_queued": 1, "jobs_running": 1}
