"""The job store's co-batching side: merge keys kept at submit, queued jobs found by key, a
batch taken and finished in one write each, and a store made before these columns."""

import json
import sqlite3

from nnsight_graph.server.store import Store


def test_a_batch_is_taken_and_finished_together(tmp_path):
    store = Store(tmp_path)
    a = store.add("alice", "m", b"a", {}, merge_key="trace|6|{}", rows=1)
    b = store.add("bob", "m", b"b", {}, merge_key="trace|6|{}", rows=2)
    other = store.add("bob", "m", b"c", {}, merge_key="trace|5|{}", rows=1)
    alone = store.add("bob", "m", b"d", {})
    assert store.mergeable("m", "trace|6|{}") == [(a, "alice", 1), (b, "bob", 2)]
    assert store.cancel_queued(b)
    assert store.take_many([a, b, other]) == [a, other]  # b was cancelled meanwhile
    for job in (a, other):
        info = store.get(job)
        assert info["status"] == "RUNNING" and info["batch_jobs"] == 2 and info["batch_id"] == a
    assert store.running_by_user() == {"alice": 1, "bob": 1}
    error = {"type": "IndexError", "module": "builtins", "message": "no", "notes": []}
    store.finish_many([(a, "COMPLETED", None), (other, "ERROR", error)])
    assert store.get(a)["status"] == "COMPLETED" and store.get(a)["finished"] is not None
    assert json.loads(store.get(other)["error"]) == error
    assert not store.payload_path(a).exists()
    statuses = [e["status"] for e in store.events(other) if e["type"] == "STATUS"]
    assert statuses == ["RECEIVED", "QUEUED", "RUNNING", "ERROR"]
    assert [e["seq"] for e in store.events(other)] == [1, 2, 3, 4]
    assert store.take_many([alone]) == [alone] and store.get(alone)["batch_jobs"] is None


def test_a_store_made_before_co_batching_gets_its_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, user TEXT NOT NULL, model TEXT NOT NULL,
            status TEXT NOT NULL, names TEXT NOT NULL, error TEXT, step INTEGER, steps INTEGER,
            created REAL NOT NULL, started REAL, finished REAL, arrival INTEGER NOT NULL);
        INSERT INTO jobs VALUES ('old', 'alice', 'm', 'QUEUED', '{}', NULL, NULL, NULL, 1.0,
            NULL, NULL, 1);
    """)
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.get("old")["merge_key"] is None and store.get("old")["rows"] == 0
    job = store.add("bob", "m", b"x", {}, merge_key="k", rows=3)
    assert store.mergeable("m", "k") == [(job, "bob", 3)]
