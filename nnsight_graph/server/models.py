"""One hosted model: its worker process and the dispatcher thread that feeds it jobs in order.

The server process keeps a lazy (meta-device) copy of each model to check payloads against its
module paths and to serve its config and tokenizer; the weights load once, in the worker.

Co-batching: when the dispatcher takes a job that may merge (its merge key, computed at
submit by `check`, is not None), it also takes the queued jobs with the same key, in arrival
order, up to `max_batch_rows` rows in all and within each key's running limit, and the worker
runs them as one forward pass (nnsight_graph.remote.cobatch). While the last batch held
several jobs (clients are sending at once), it first waits up to `batch_window_s` for as many
jobs as that batch held; a lone client's job never waits. A window of 0 disables merging.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

from ..ir.limits import Limits
from ..remote.cobatch import batch_key
from ..remote.execution import check_payload
from . import hosting, worker
from .store import Store

_TICK_S = 0.1  # how often the dispatcher checks a running job (worker alive, deadline, cancel)
_IDLE_S = 1.0  # an idle dispatcher's fallback wait: submits, ends of jobs and stops wake it
# the wake events of every model on one store: a job's end may let another model's queued
# job of the same key run (the per-key running limit is over all models)
_PEERS: weakref.WeakKeyDictionary[Store, list[threading.Event]] = weakref.WeakKeyDictionary()


class HostedModel:
    """A model the server hosts under `name`, loaded from `spec` (a directory or hub id, or
    an operator's `package.module:factory`)."""

    def __init__(
        self, name: str, spec: str, store: Store, limits: Limits, device: str = "cpu",
        dtype: str | None = None, cancel_grace_s: float = 5.0,
        max_running_per_key: int | None = None, batch_window_s: float = 0.0,
        max_batch_rows: int = 64,
    ) -> None:
        self.name, self.spec, self.store, self.limits = name, spec, store, limits
        self.device, self.dtype, self.cancel_grace_s = device, dtype, cancel_grace_s
        self.max_running_per_key = max_running_per_key
        self.batch_window_s, self.max_batch_rows = batch_window_s, max_batch_rows
        self.batch_sizes: Counter[int] = Counter()  # jobs per forward pass -> passes
        self.last_batch = 1
        # meta tensors: module paths, config, tokenizer
        self.shape, self.site_paths, self.config, self.tokenizer_files = hosting.describe(spec)
        self.state = "loading"
        self.error: dict[str, Any] | None = None
        self.running: list[str] = []  # the jobs the worker runs (several: one merged batch)
        self.cancelling: set[str] = set()
        self.waiting: tuple[str, int] | None = None  # (job, block) that waits for values
        self.wake = threading.Event()
        _PEERS.setdefault(store, []).append(self.wake)
        self.stopping = False
        self.draining = False  # shutting down: the running job may finish, no new one starts
        self.restarts = 0
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.thread = threading.Thread(target=self._dispatch, name=f"model-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Take no more jobs; give the running one up to `drain_s` seconds to finish, then
        stop the worker (a job still running then is marked ERROR; queued jobs stay queued
        in the store for the next start)."""
        self.draining = True
        ends = time.monotonic() + drain_s
        while self.running and time.monotonic() < ends:
            time.sleep(0.05)
        self.stopping = True
        self.wake.set()
        jobs = list(self.running)
        self._stop_worker()
        for job in jobs:
            found = self.store.get(job)
            if found is not None and found["status"] == "RUNNING":
                self.store.set_status(job, "ERROR", error=_error(
                    "the server shut down while the job ran; submit it again"))

    def check(self, payload: bytes) -> tuple[str | None, int]:
        """Check a submitted payload (check_payload: an NNsightError says why it is
        refused); its merge key (None: it runs alone) and batch rows, for Store.add."""
        job = check_payload(payload, self.site_paths, self.limits)
        if self.batch_window_s <= 0:
            return None, 0
        return batch_key(self.shape, job)

    def cancel(self, job: str) -> None:
        """Stop the running job `job`: the worker stops it at its next node or generation
        step; a worker that does not within the grace period is killed and started again.
        A job that runs merged with others ends CANCELLED at once and its result is
        dropped; the others run on (the run stops only when all of them are cancelled)."""
        if job in self.running:
            self.cancelling.add(job)
            self.wake.set()

    def upload(self, job: str, block: int, values: bytes) -> bool:
        """Hand the running job `job` the values its nnsight.local() block `block` made
        (checked already); False if that job is not waiting for them."""
        if job not in self.running or self.waiting != (job, block):
            return False
        self.waiting = None
        self.inbox.put(("upload", job, block, values))
        return True

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": (self.config.get("architectures") or [type(self.shape._module).__name__])[0],
            "config": self.config,
            "tokenizer": bool(self.tokenizer_files),
            "state": self.state,
            "queue_depth": self.store.queue_depth(self.name),
            "restarts": self.restarts,
            "worker_pid": self.process.pid if self.process is not None else None,
            "limits": {"deadline_s": self.limits.deadline_s, "nodes": self.limits.nodes,
                       "decompressed_bytes": self.limits.decompressed_bytes},
            "batching": {"window_ms": 1000 * self.batch_window_s,
                         "max_rows": self.max_batch_rows},
            "error": self.error,
        }

    # the worker ------------------------------------------------------------------------------

    def _start_worker(self) -> bool:
        self.inbox, self.outbox = self.context.Queue(), self.context.Queue()
        self.cancel_flag = self.context.Event()
        os.environ.update(worker.worker_env())  # a spawned worker starts with this environment
        self.process = self.context.Process(
            target=worker.main, name=f"nnsight-graph-worker-{self.name}", daemon=True,
            args=(self.spec, self.device, self.dtype, self.limits, self.inbox, self.outbox,
                  self.cancel_flag),
        )
        self.process.start()
        while not self.stopping:
            try:
                message = self.outbox.get(timeout=_TICK_S)
            except queue.Empty:
                if not self.process.is_alive():
                    self.error = {"type": "RuntimeError", "module": "builtins", "notes": [],
                                  "message": f"the worker exited with {self.process.exitcode}"}
                    return False
                continue
            if message[0] == "ready":
                self.state = "ready"
                return True
            if message[0] == "failed":
                self.error = message[1]
                self.state = "failed"
                return False
        return False

    def _stop_worker(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=10)

    def _restart_worker(self) -> bool:
        self.state = "restarting"
        self.restarts += 1
        self._stop_worker()
        return self._start_worker()

    # the dispatcher --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if not self._start_worker():
            return
        while not self.stopping:
            self.wake.clear()  # before the store is read: a submit after it wakes the wait
            first = None if self.draining else self.store.next_queued(
                self.name, self.max_running_per_key)
            if first is None:
                self.wake.wait(_IDLE_S)
                continue
            try:
                self.running = self._gather(first)  # before take: a cancel finds its job
                jobs = self.store.take_many(self.running)
                self.running = jobs  # the others were cancelled between the two steps
                if not jobs:
                    continue
                self.batch_sizes[len(jobs)] += 1
                self.last_batch = len(jobs)
                ok = self._run(jobs)
            finally:
                self.running, self.cancelling, self.waiting = [], set(), None
                for wake in _PEERS.get(self.store, ()):
                    if wake is not self.wake:
                        wake.set()
            if not ok and not self.stopping and not self._restart_worker():
                return

    def _gather(self, first: str) -> list[str]:
        """`first` and the queued jobs that may run merged with it (its merge key), in
        arrival order, within the rows cap and each key's running limit."""
        found = self.store.get(first)
        if found is None or found["merge_key"] is None or self.batch_window_s <= 0:
            return [first]
        key = found["merge_key"]
        limit = self.max_running_per_key
        running: Counter[str] = Counter(self.store.running_by_user() if limit else {})
        running[found["user"]] += 1
        jobs, rows = [first], int(found["rows"])
        wait = self.last_batch > 1  # clients are sending at once: more are on their way
        ends = time.monotonic() + self.batch_window_s
        while True:
            for job, user, width in self.store.mergeable(self.name, key):
                if job in jobs or rows + width > self.max_batch_rows:
                    continue
                if limit is not None and running[user] >= limit:
                    continue
                jobs.append(job)
                rows += width
                running[user] += 1
            left = ends - time.monotonic()
            if (not wait or left <= 0 or len(jobs) >= self.last_batch or self.stopping
                    or rows >= self.max_batch_rows):
                return jobs
            self.wake.wait(left)
            self.wake.clear()

    def _run(self, jobs: list[str]) -> bool:
        """Run one job, or several merged, on the worker; False when the worker had to be
        stopped."""
        results = {job: self.store.result_path(job) for job in jobs}
        self.cancel_flag.clear()  # the last job ended: a flag it left set is not this job's
        if len(jobs) == 1:
            (job,) = jobs
            self.inbox.put(("run", job, str(self.store.payload_path(job)), str(results[job])))
        else:
            self.inbox.put(("batch", jobs, [str(self.store.payload_path(j)) for j in jobs],
                            [str(results[j]) for j in jobs]))
        # a batch whose merged run fails runs each job again alone: each may take the deadline
        runs = 1 if len(jobs) == 1 else len(jobs) + 1
        deadline = None if self.limits.deadline_s is None else (
            time.monotonic() + runs * self.limits.deadline_s + self.cancel_grace_s)
        cancel_at = None
        unanswered = list(jobs)  # the worker has not said how these ended
        ended: set[str] = set()  # cancelled while others of the batch run on: result dropped
        while not self.stopping:
            try:
                message = self.outbox.get(timeout=_TICK_S)
            except queue.Empty:
                message = None
            if message is not None and message[0] == "ended" and message[1] == jobs[0]:
                self._ended(message[2], message[3], ended, results)
                return True
            if message is not None and message[1] in unanswered:
                job, kind = message[1], message[0]
                if kind == "log":
                    self.store.event(job, {"type": "LOG", "text": message[2]})
                    continue
                if kind == "step":
                    self.store.progress(job, message[2], message[3])
                    continue
                if kind == "local":  # the client runs the block; it may send values back
                    _, _, block, data, outputs = message
                    if outputs:
                        self.waiting = (job, block)
                    self.store.event(job, {"type": "LOCAL", "block": block, "outputs": outputs,
                                           "data": base64.b64encode(data).decode("ascii")})
                    continue
                if kind in ("cancelled", "done", "error"):
                    unanswered.remove(job)
                    if job in ended:
                        results[job].unlink(missing_ok=True)
                    else:  # one write: the status, its event
                        error = message[2] if kind == "error" else None
                        self.store.finish_many([(job, _FINAL_OF[kind], error)])
                    if not unanswered:
                        return True
                    continue
            live = [job for job in unanswered if job not in ended]
            now = time.monotonic()
            asked = [job for job in live if job in self.cancelling]
            if asked and cancel_at is None:
                if len(asked) == len(live):
                    self.cancel_flag.set()  # the run stops at its next node or step
                    cancel_at = now + self.cancel_grace_s
                else:  # the others of the batch run on
                    for job in asked:
                        self.store.set_status(job, "CANCELLED")
                        ended.add(job)
            if cancel_at is not None and now >= cancel_at:  # it did not: stop the worker
                for job in live:
                    self.store.set_status(job, "CANCELLED")
                return False
            if not self.process.is_alive():
                for job in live:
                    self.store.set_status(job, "ERROR", error=_error(
                        f"the worker running the job exited (code {self.process.exitcode}), "
                        "perhaps out of memory; the server restarted it"))
                return False
            if deadline is not None and now > deadline:
                for job in live:
                    self.store.set_status(job, "ERROR", error=_error(
                        f"the job ran past its deadline of {self.limits.deadline_s:g} s and "
                        "did not stop; make the graph smaller (fewer nodes or steps)",
                        "TimeoutError"))
                return False
        return False

    def _ended(self, jobs: list[str], outcomes: list[tuple[str, Any]], ended: set[str],
               results: dict[str, Path]) -> None:
        """A batch's jobs ended (the worker's one "ended" message): their statuses, in one
        write; a job cancelled while the batch ran keeps CANCELLED and loses its result."""
        finals: list[tuple[str, str, dict[str, Any] | None]] = []
        for job, (kind, error) in zip(jobs, outcomes, strict=True):
            if job in ended:
                results[job].unlink(missing_ok=True)
            else:
                finals.append((job, _FINAL_OF[kind], error))
        self.store.finish_many(finals)


_FINAL_OF = {"done": "COMPLETED", "error": "ERROR", "cancelled": "CANCELLED"}


def _error(message: str, name: str = "RuntimeError") -> dict[str, Any]:
    return {"type": name, "module": "builtins", "message": message, "notes": []}


__all__ = ["HostedModel"]
