"""One hosted model: its worker process and the dispatcher thread that feeds it jobs in order.

The server process keeps a lazy (meta-device) copy of each model to check payloads against its
module paths and to serve its config and tokenizer; the weights load once, in the worker.
"""

from __future__ import annotations

import base64
import multiprocessing
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..ir.limits import Limits
from . import hosting, worker
from .store import Store

_TICK_S = 0.1


class HostedModel:
    """A model the server hosts under `name`, loaded from `spec` (a directory or hub id, or
    an operator's `package.module:factory`)."""

    def __init__(
        self, name: str, spec: str, store: Store, limits: Limits, device: str = "cpu",
        dtype: str | None = None, cancel_grace_s: float = 5.0,
        max_running_per_key: int | None = None,
    ) -> None:
        self.name, self.spec, self.store, self.limits = name, spec, store, limits
        self.device, self.dtype, self.cancel_grace_s = device, dtype, cancel_grace_s
        self.max_running_per_key = max_running_per_key
        self.shape = hosting.shape_of(spec)  # meta tensors: module paths, config, tokenizer
        self.site_paths = frozenset(self.shape._site_paths())
        self.config = hosting.config_of(self.shape)
        tokenizer = getattr(self.shape, "tokenizer", None) if self.config else None
        self.tokenizer_files = _tokenizer_files(tokenizer) if tokenizer is not None else {}
        self.state = "loading"
        self.error: dict[str, Any] | None = None
        self.running: str | None = None
        self.cancelling: str | None = None
        self.waiting: tuple[str, int] | None = None  # (job, block) that waits for values
        self.wake = threading.Event()
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
        while self.running is not None and time.monotonic() < ends:
            time.sleep(0.05)
        self.stopping = True
        self.wake.set()
        job = self.running
        self._stop_worker()
        found = self.store.get(job) if job is not None else None
        if job is not None and found is not None and found["status"] == "RUNNING":
            self.store.set_status(job, "ERROR", error=_error(
                "the server shut down while the job ran; submit it again"))

    def cancel(self, job: str) -> None:
        """Stop the running job `job`: the worker stops it at its next node or generation
        step; a worker that does not within the grace period is killed and started again."""
        if self.running == job:
            self.cancelling = job
            self.wake.set()

    def upload(self, job: str, block: int, values: bytes) -> bool:
        """Hand the running job `job` the values its nnsight.local() block `block` made
        (checked already); False if that job is not waiting for them."""
        if self.running != job or self.waiting != (job, block):
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
            "error": self.error,
        }

    # the worker ------------------------------------------------------------------------------

    def _start_worker(self) -> bool:
        self.inbox, self.outbox = self.context.Queue(), self.context.Queue()
        self.cancel_flag = self.context.Event()
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
            job = None if self.draining else self.store.next_queued(
                self.name, self.max_running_per_key)
            if job is None:
                self.wake.wait(_TICK_S)
                self.wake.clear()
                continue
            if not self.store.take(job):
                continue  # cancelled between the two steps
            self.running = job
            try:
                ok = self._run(job)
            finally:
                self.running = self.cancelling = self.waiting = None
            if not ok and not self.stopping and not self._restart_worker():
                return

    def _run(self, job: str) -> bool:
        """Run one job on the worker; False when the worker had to be stopped."""
        result = self.store.result_path(job)
        self.cancel_flag.clear()  # the last job ended: a flag it left set is not this job's
        self.inbox.put(("run", job, str(self.store.payload_path(job)), str(result)))
        deadline = None if self.limits.deadline_s is None else (
            time.monotonic() + self.limits.deadline_s + self.cancel_grace_s)
        cancel_at = None
        while not self.stopping:
            try:
                message = self.outbox.get(timeout=_TICK_S)
            except queue.Empty:
                message = None
            if message is not None and message[1] == job:
                kind = message[0]
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
                if kind == "cancelled":
                    self.store.set_status(job, "CANCELLED")
                    return True
                if kind == "done":
                    self.store.set_status(job, "COMPLETED")
                    return True
                if kind == "error":
                    self.store.set_status(job, "ERROR", error=message[2])
                    return True
            now = time.monotonic()
            if self.cancelling == job and cancel_at is None:
                self.cancel_flag.set()  # the run stops at its next node or step
                cancel_at = now + self.cancel_grace_s
            if cancel_at is not None and now >= cancel_at:  # it did not: stop the worker
                self.store.set_status(job, "CANCELLED")
                return False
            if not self.process.is_alive():
                self.store.set_status(job, "ERROR", error=_error(
                    f"the worker running the job exited (code {self.process.exitcode}), "
                    "perhaps out of memory; the server restarted it"))
                return False
            if deadline is not None and now > deadline:
                self.store.set_status(job, "ERROR", error=_error(
                    f"the job ran past its deadline of {self.limits.deadline_s:g} s and did "
                    "not stop; make the graph smaller (fewer nodes or steps)", "TimeoutError"))
                return False
        return False


def _error(message: str, name: str = "RuntimeError") -> dict[str, Any]:
    return {"type": name, "module": "builtins", "message": message, "notes": []}


def _tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The text files `AutoTokenizer.from_pretrained` needs to rebuild `tokenizer`."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {}
        for path in sorted(Path(folder).iterdir()):
            try:
                files[path.name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # a binary file (sentencepiece model): not served as text
        return files


__all__ = ["HostedModel"]
