"""The job store: job metadata and events in SQLite, payloads and results as files.

One `Store` per server process, shared by the request handlers and the model dispatchers
(sqlite3 with one connection behind a lock). A job's payload is kept until it ran, so queued
jobs survive a restart; its result file is kept for `ttl_s` seconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

FINAL = ("COMPLETED", "ERROR", "CANCELLED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    names TEXT NOT NULL,
    error TEXT,
    step INTEGER,
    steps INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    arrival INTEGER NOT NULL,
    merge_key TEXT,
    rows INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    batch_jobs INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (model, status, arrival);
CREATE INDEX IF NOT EXISTS jobs_arrival ON jobs (arrival);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user, status);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, user);
CREATE INDEX IF NOT EXISTS jobs_turns ON jobs (model, user, started);
CREATE INDEX IF NOT EXISTS jobs_user_finished ON jobs (user, finished);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
"""


class Store:
    """Jobs, their events, payloads and results under one directory."""

    def __init__(self, root: str | Path, ttl_s: float = 7 * 24 * 3600) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        (self.root / "payloads").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        # a write-ahead log, synced at checkpoints: a commit costs no fsync, and a crash of
        # the server process loses nothing committed (only a power cut could lose the last)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.lock, self.db:
            self.db.executescript(_SCHEMA)
            _add_columns(self.db)
        self.listeners: list[Callable[[str], None]] = []  # called with the job of each new event

    # jobs ------------------------------------------------------------------------------------

    def add(self, user: str, model: str, payload: bytes, names: dict[str, str],
            merge_key: str | None = None, rows: int = 0) -> str:
        """Queue a job; `merge_key` and `rows` (remote.cobatch.batch_key) say with which
        other queued jobs it may run as one forward pass, and how many batch rows it owns."""
        job = uuid.uuid4().hex
        self.payload_path(job).write_bytes(payload)
        now = time.time()
        with self.lock, self.db:  # one transaction: the job and its first two events
            arrival = self.db.execute("SELECT COALESCE(MAX(arrival), 0) + 1 FROM jobs").fetchone()[0]
            self.db.execute(
                "INSERT INTO jobs (id, user, model, status, names, created, arrival, merge_key, "
                "rows) VALUES (?, ?, ?, 'QUEUED', ?, ?, ?, ?, ?)",
                (job, user, model, json.dumps(names), now, arrival, merge_key, rows),
            )
            self._add_event(job, {"type": "STATUS", "status": "RECEIVED"})
            self._add_event(job, {"type": "STATUS", "status": "QUEUED",
                                  "position": self._ahead(model, arrival)})
        self._notify(job)
        return job

    def get(self, job: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job,)).fetchone()
        return None if row is None else dict(row)

    def position(self, job: str) -> int | None:
        """How many jobs of the same model run or wait before this queued one."""
        with self.lock:
            row = self.db.execute(
                "SELECT model, arrival, status FROM jobs WHERE id = ?", (job,)
            ).fetchone()
            if row is None or row["status"] != "QUEUED":
                return None
            return self._ahead(row["model"], row["arrival"])

    def _ahead(self, model: str, arrival: int) -> int:
        """How many jobs of `model` run or arrived before `arrival` (the lock held)."""
        running = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE model = ? AND status = 'RUNNING'", (model,)
        ).fetchone()[0]
        queued = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE model = ? AND status = 'QUEUED' AND arrival < ?",
            (model, arrival),
        ).fetchone()[0]
        return int(running) + int(queued)

    def next_queued(self, model: str, max_running_per_key: int | None = None) -> str | None:
        """The job `model` runs next: round-robin across keys (the key whose last job for
        this model started longest ago goes first, each key's jobs in arrival order),
        skipping keys that already run `max_running_per_key` jobs."""
        with self.lock:
            queued = self.db.execute(
                "SELECT id, user FROM jobs WHERE model = ? AND status = 'QUEUED' ORDER BY arrival",
                (model,),
            ).fetchall()
            if not queued:
                return None
            first: dict[str, str] = {}
            for row in queued:
                first.setdefault(row["user"], row["id"])
            last = {user: self.db.execute(  # one index lookup per waiting key
                "SELECT MAX(started) FROM jobs WHERE model = ? AND user = ?", (model, user),
            ).fetchone()[0] for user in first}
            running = dict(self.db.execute(
                "SELECT user, COUNT(*) FROM jobs WHERE status = 'RUNNING' GROUP BY user"
            ).fetchall())
        users = [u for u in first
                 if max_running_per_key is None or running.get(u, 0) < max_running_per_key]
        if not users:
            return None
        return first[min(users, key=lambda u: last.get(u) or 0.0)]  # ties: earliest arrival

    def mergeable(self, model: str, merge_key: str) -> list[tuple[str, str, int]]:
        """The queued jobs of `model` that share `merge_key`, in arrival order: (id, user,
        rows) each."""
        with self.lock:
            found = self.db.execute(
                "SELECT id, user, rows FROM jobs WHERE model = ? AND status = 'QUEUED' AND "
                "merge_key = ? ORDER BY arrival", (model, merge_key),
            ).fetchall()
        return [(r["id"], r["user"], int(r["rows"])) for r in found]

    def running_by_user(self) -> dict[str, int]:
        """How many jobs each key runs now (all models)."""
        with self.lock:
            return dict(self.db.execute(
                "SELECT user, COUNT(*) FROM jobs WHERE status = 'RUNNING' GROUP BY user"
            ).fetchall())

    def take_many(self, jobs: list[str]) -> list[str]:
        """`take` for the jobs of one forward pass, in one transaction: those still queued
        become RUNNING (with their events) and, when several, one batch (its id: its first
        job's; its size, shown in each job's status). The taken ones, in order."""
        now = time.time()
        with self.lock, self.db:
            taken = [job for job in jobs if self.db.execute(
                "UPDATE jobs SET status = 'RUNNING', started = ? WHERE id = ? AND "
                "status = 'QUEUED'", (now, job)).rowcount]
            if len(taken) > 1:
                marks = ", ".join("?" * len(taken))
                self.db.execute(
                    f"UPDATE jobs SET batch_id = ?, batch_jobs = ? WHERE id IN ({marks})",
                    (taken[0], len(taken), *taken))
            for job in taken:
                self._add_event(job, {"type": "STATUS", "status": "RUNNING", "step": None,
                                      "steps": None})
        for job in taken:
            self._notify(job)
        return taken

    def finish_many(self, ends: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        """`set_status` for the jobs of one forward pass that ended, in one transaction:
        (job, final status, error or None) each. The final event of a job that ran merged
        with others says how many jobs the pass ran (`batch_jobs`)."""
        now = time.time()
        with self.lock, self.db:
            for job, status, error in ends:
                self.db.execute(
                    "UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                    (status, now, None if error is None else json.dumps(error), job))
                event: dict[str, Any] = {"type": "STATUS", "status": status}
                merged = self.db.execute(
                    "SELECT batch_jobs FROM jobs WHERE id = ?", (job,)).fetchone()
                if merged is not None and merged["batch_jobs"]:
                    event["batch_jobs"] = merged["batch_jobs"]  # the jobs of its forward pass
                self._add_event(job, event)
        for job, _, _ in ends:
            self._notify(job)
            self.payload_path(job).unlink(missing_ok=True)

    def seconds_used(self, user: str, since: float, now: float) -> float:
        """Wall seconds the key's jobs ran between `since` and `now` (running ones so far)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT started, finished FROM jobs WHERE user = ? AND finished > ? "
                "AND started IS NOT NULL UNION ALL "
                "SELECT started, finished FROM jobs WHERE user = ? AND status = 'RUNNING'",
                (user, since, user),
            ).fetchall()
        return sum(max(min(r["finished"] or now, now) - max(r["started"], since), 0.0)
                   for r in rows)

    def metrics(self) -> dict[str, Any]:
        """What /metrics reports from the store: jobs by model and status, and the seconds
        from submit to end of the finished ones (for the latency histogram)."""
        with self.lock:
            counts = self.db.execute(
                "SELECT model, status, COUNT(*) AS n FROM jobs GROUP BY model, status"
            ).fetchall()
            latencies = self.db.execute(
                "SELECT model, finished - created AS s FROM jobs WHERE status = 'COMPLETED'"
            ).fetchall()
        return {
            "counts": [(r["model"], r["status"], int(r["n"])) for r in counts],
            "latencies": [(r["model"], float(r["s"])) for r in latencies],
        }

    def set_status(self, job: str, status: str, **fields: Any) -> None:
        """Move a job to `status` (and set `fields`), with its STATUS event."""
        now = time.time()
        values: dict[str, Any] = {"status": status, **fields}
        if status == "RUNNING":
            values["started"] = now
        if status in FINAL:
            values["finished"] = now
        if "error" in values and values["error"] is not None:
            values["error"] = json.dumps(values["error"])
        columns = ", ".join(f"{name} = ?" for name in values)
        event: dict[str, Any] = {"type": "STATUS", "status": status}
        if status == "RUNNING":
            event.update(step=fields.get("step"), steps=fields.get("steps"))
        with self.lock, self.db:
            self.db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job))
            self._add_event(job, event)
        self._notify(job)
        if status in FINAL:
            self.payload_path(job).unlink(missing_ok=True)

    def progress(self, job: str, step: int, steps: int | None) -> None:
        """A running job began step `step` (of `steps`) of its generation: a RUNNING event."""
        with self.lock, self.db:
            self.db.execute("UPDATE jobs SET step = ?, steps = ? WHERE id = ?", (step, steps, job))
            self._add_event(job, {"type": "STATUS", "status": "RUNNING", "step": step,
                                  "steps": steps})
        self._notify(job)

    def cancel_queued(self, job: str) -> bool:
        """Cancel a job if it is still queued (atomically: a dispatcher may be taking it)."""
        with self.lock, self.db:
            changed = self.db.execute(
                "UPDATE jobs SET status = 'CANCELLED', finished = ? WHERE id = ? AND status = 'QUEUED'",
                (time.time(), job),
            ).rowcount
            if changed:
                self._add_event(job, {"type": "STATUS", "status": "CANCELLED"})
        if changed:
            self._notify(job)
            self.payload_path(job).unlink(missing_ok=True)
        return bool(changed)

    def take(self, job: str) -> bool:
        """Mark a queued job RUNNING for a dispatcher; False if it was cancelled meanwhile."""
        with self.lock, self.db:
            changed = self.db.execute(
                "UPDATE jobs SET status = 'RUNNING', started = ? WHERE id = ? AND status = 'QUEUED'",
                (time.time(), job),
            ).rowcount
            if changed:
                self._add_event(job, {"type": "STATUS", "status": "RUNNING", "step": None,
                                      "steps": None})
        if changed:
            self._notify(job)
        return bool(changed)

    def recover(self) -> None:
        """After a restart: jobs that were running failed; queued ones wait for their turn."""
        with self.lock:
            running = [r["id"] for r in self.db.execute("SELECT id FROM jobs WHERE status = 'RUNNING'")]
        for job in running:
            self.set_status(job, "ERROR", error={
                "type": "ServerRestarted", "module": "nnsight_graph.server",
                "message": "the server restarted while the job ran; submit it again",
                "notes": [],
            })

    def counts(self, user: str) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE user = ? AND "
                "status IN ('QUEUED', 'RUNNING') GROUP BY status", (user,)
            ).fetchall()
        by = {r["status"]: r["n"] for r in rows}
        return {"jobs_queued": by.get("QUEUED", 0), "jobs_running": by.get("RUNNING", 0)}

    def queue_depth(self, model: str) -> int:
        with self.lock:
            return int(self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE model = ? AND status IN ('QUEUED', 'RUNNING')",
                (model,),
            ).fetchone()[0])

    # events ----------------------------------------------------------------------------------

    def event(self, job: str, body: dict[str, Any]) -> int:
        """Add an event to the job's stream; its sequence number."""
        with self.lock, self.db:
            seq = self._add_event(job, body)
        self._notify(job)
        return seq

    def _add_event(self, job: str, body: dict[str, Any]) -> int:
        """Insert an event in the transaction the caller holds (with the lock)."""
        seq = int(self.db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job = ?", (job,)
        ).fetchone()[0])
        body = {**body, "time": time.time(), "seq": seq}
        self.db.execute(
            "INSERT INTO events (job, seq, body) VALUES (?, ?, ?)", (job, seq, json.dumps(body))
        )
        return seq

    def _notify(self, job: str) -> None:
        for listener in self.listeners:
            listener(job)

    def events(self, job: str, after: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT body FROM events WHERE job = ? AND seq > ? ORDER BY seq", (job, after)
            ).fetchall()
        return [json.loads(r["body"]) for r in rows]

    # files -----------------------------------------------------------------------------------

    def payload_path(self, job: str) -> Path:
        return self.root / "payloads" / f"{job}.bin"

    def result_path(self, job: str) -> Path:
        return self.root / "results" / f"{job}.bin"

    def result_expired(self, job: dict[str, Any]) -> bool:
        finished = job.get("finished")
        return finished is not None and time.time() - finished > self.ttl_s

    def expire(self) -> None:
        """Remove result files older than the TTL (their jobs stay, answering 410)."""
        cutoff = time.time() - self.ttl_s
        with self.lock:
            old = [r["id"] for r in self.db.execute(
                "SELECT id FROM jobs WHERE status = 'COMPLETED' AND finished < ?", (cutoff,)
            )]
        for job in old:
            self.result_path(job).unlink(missing_ok=True)


def _add_columns(db: sqlite3.Connection) -> None:
    """Give a store made by an earlier version the columns co-batching added."""
    have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, kind in (("merge_key", "TEXT"), ("rows", "INTEGER NOT NULL DEFAULT 0"),
                         ("batch_id", "TEXT"), ("batch_jobs", "INTEGER")):
        if column not in have:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


__all__ = ["FINAL", "Store"]
