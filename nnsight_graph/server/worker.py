"""A model's worker process: loads the model once, then runs jobs one at a time.

The dispatcher (nnsight_graph.server.models) sends `("run", job_id, payload_path,
result_path)` on the inbox; the worker answers on the outbox with `("ready",)` once the model
loaded, then per job `("log", job_id, text)` for the trace's print() output, `("step",
job_id, n, N)` as step n (of N) of a generation begins, and `("done", job_id)` (the result
written to result_path), `("cancelled", job_id)` (the cancel flag was set: the run stopped at
its next node or step) or `("error", job_id, error)`.

`("batch", job_ids, payload_paths, result_paths)` runs jobs that share a merge key as one
forward pass (nnsight_graph.remote.cobatch.run_batch); the worker answers once, `("ended",
first_job_id, job_ids, outcomes)`, with `("done", None)` or `("error", error)` per job, in
order (`("cancelled", None)` for every job when the cancel flag stopped the run).
"""

from __future__ import annotations

import io
import os
import queue
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

LOG_CAP = 64 << 10  # characters of print() output a job may send
LOCAL_CAP = 32 << 20  # bytes of values a job may stream to one nnsight.local() block
LOCAL_WAIT_S = 120.0  # how long a job waits for the values a local() block makes

WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Set for worker processes unless the server's environment sets them already. OpenMP's
threads spin between torch ops by default: on a machine whose cores the worker shares (the
server's own process, other workers, clients), the spinning took 14.9 ms of CPU per job
against 3.8 ms with PASSIVE (16 clients, co-batched GPT-2 one-save jobs), and starved the
processes that had work."""


def worker_env() -> dict[str, str]:
    """WORKER_ENV without what the environment sets already (the operator's choice wins)."""
    return {k: v for k, v in WORKER_ENV.items() if k not in os.environ}


def local_handler(job: str, inbox: Any, outbox: Any, cancel: Any, limits: Any) -> Any:
    """What a LOCAL node of job `job` does in the worker: send the values its block reads to
    the client (through the dispatcher, as a LOCAL event); when the run needs values the block
    makes, wait for them (bounded; a cancel ends the wait) and read them under `limits`."""
    import time

    from nnsight_graph.backends.guard import RunCancelled
    from nnsight_graph.ir.errors import ExecutionError
    from nnsight_graph.ir.results import dumps_results, loads_results

    def handle(block: int, downloads: dict[int, Any], outputs: list[int]) -> dict[int, Any]:
        data = dumps_results(downloads)
        if len(data) > LOCAL_CAP:
            raise ExecutionError(
                f"the values the nnsight.local() block reads are {len(data)} bytes, over the "
                f"{LOCAL_CAP} a job may stream to the client; read smaller values (a slice "
                "outside the block) or save them instead"
            )
        outbox.put(("local", job, block, data, list(outputs)))
        if not outputs:
            return {}  # the block only prints or plots: the run goes on
        wait = LOCAL_WAIT_S if limits.deadline_s is None else min(LOCAL_WAIT_S, limits.deadline_s)
        ends = time.monotonic() + wait
        while time.monotonic() < ends:
            if cancel.is_set():
                raise RunCancelled("the job was cancelled while it waited for its client")
            try:
                message = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if message is None:
                raise RunCancelled("the server is stopping")
            if message[0] == "upload" and message[1] == job and message[2] == block:
                return loads_results(message[3], limits)
        raise ExecutionError(
            f"the client did not send the values of its nnsight.local() block within {wait:g} "
            "s; keep the client running (blocking) until the trace ends"
        )

    return handle


def describe_error(error: BaseException) -> dict[str, Any]:
    """A job's error as the API reports it: the type where the client has it (a builtin or
    one of ours), the message and the notes (the user's file:line and source text), never a
    traceback or a path of the server."""
    cls = type(error)
    module = cls.__module__
    if module == "builtins" or module.startswith("nnsight_graph"):
        name, message = cls.__name__, str(error)
    else:  # a library's own type (torch, transformers): the client may not have it
        name, module, message = "RuntimeError", "builtins", f"{cls.__name__}: {error}"
    return {
        "type": name,
        "module": module,
        "message": message,
        "notes": [str(note) for note in getattr(error, "__notes__", ())],
    }


class _LogStream(io.TextIOBase):
    """stdout while a job runs: what it prints goes to the client as LOG events, capped."""

    def __init__(self, outbox: Any, job: str) -> None:
        self.outbox, self.job, self.left = outbox, job, LOG_CAP
        self.line = ""  # sent a line at a time: one LOG event per printed line

    def write(self, text: str) -> int:
        if self.left > 0 and text:
            part = text[: self.left]
            self.left -= len(part)
            if self.left <= 0:
                part += f"\n[nnsight_graph: print output cut at {LOG_CAP} characters]\n"
            self.line += part
            if "\n" in self.line:
                lines, _, self.line = self.line.rpartition("\n")
                self.outbox.put(("log", self.job, lines + "\n"))
        return len(text)

    def flush(self) -> None:
        if self.line:
            self.outbox.put(("log", self.job, self.line))
            self.line = ""


def load_model(spec: str, device: str, dtype: str | None) -> Any:
    from nnsight_graph import LanguageModel

    from .hosting import is_factory, load_factory_model

    if is_factory(spec):
        return load_factory_model(spec, device, dtype)
    kwargs: dict[str, Any] = {}
    if dtype:
        import torch

        kwargs["dtype"] = getattr(torch, dtype)
    device_map = None if device == "cpu" else device
    model = LanguageModel(spec, dispatch=True, device_map=device_map, **kwargs)
    return model


def run_merged(
    model: Any, jobs: list[str], payload_paths: list[str], result_paths: list[str],
    limits: Any, outbox: Any, cancel: Any,
) -> None:
    """One "batch" message: the jobs run as one forward pass; each its own answer."""
    from nnsight_graph.backends.guard import RunCancelled, cancellable
    from nnsight_graph.remote.cobatch import run_batch  # loaded by main() already

    payloads: list[bytes | BaseException] = []
    for path in payload_paths:
        try:
            payloads.append(Path(path).read_bytes())
        except OSError as error:
            payloads.append(error)
    readable = [p for p in payloads if isinstance(p, bytes)]
    outcomes: list[tuple[str, Any]] = []
    try:
        with redirect_stdout(io.StringIO()), cancellable(cancel.is_set):
            ran = iter(run_batch(model, readable, limits))
    except RunCancelled:
        outbox.put(("ended", jobs[0], jobs, [("cancelled", None)] * len(jobs)))
        return
    except Exception as error:  # not one job's fault (run_batch answers those per job)
        outbox.put(("ended", jobs[0], jobs, [("error", describe_error(error))] * len(jobs)))
        return
    for payload, path in zip(payloads, result_paths, strict=True):
        result = next(ran) if isinstance(payload, bytes) else payload
        if not isinstance(result, BaseException):
            try:
                Path(path).write_bytes(result)
            except OSError as error:
                result = error
        outcomes.append(("error", describe_error(result)) if isinstance(result, BaseException)
                        else ("done", None))
    outbox.put(("ended", jobs[0], jobs, outcomes))


def main(
    spec: str, device: str, dtype: str | None, limits: Any, inbox: Any, outbox: Any,
    cancel: Any,
) -> None:
    """The worker's loop (the target of its process); `cancel` is the dispatcher's
    multiprocessing.Event, set to stop the job that runs."""
    from nnsight_graph.backends.guard import RunCancelled, cancellable
    from nnsight_graph.backends.local_blocks import serving_local_blocks
    from nnsight_graph.ir.wire_schema import build_validators
    from nnsight_graph.remote import cobatch  # noqa: F401  (loaded before any job runs)
    from nnsight_graph.remote.execution import run_payload

    try:
        model = load_model(spec, device, dtype)
    except Exception as error:  # the model does not load: the server says so and exits
        outbox.put(("failed", describe_error(error)))
        return
    build_validators()  # now, not in the first job
    outbox.put(("ready",))
    while True:
        message = inbox.get()
        if message is None:
            return
        if message[0] == "batch":
            _, jobs, payload_paths, result_paths = message
            run_merged(model, jobs, payload_paths, result_paths, limits, outbox, cancel)
            continue
        if message[0] != "run":
            continue  # an upload for a job that ended meanwhile
        _, job, payload_path, result_path = message
        try:
            payload = Path(payload_path).read_bytes()
            stream = _LogStream(outbox, job)
            def on_step(step: int, steps: int | None, job: str = job) -> None:
                outbox.put(("step", job, step, steps))

            try:
                local = local_handler(job, inbox, outbox, cancel, limits)
                with redirect_stdout(stream), cancellable(cancel.is_set), \
                        serving_local_blocks(local):
                    result = run_payload(model, payload, limits, on_step)
            finally:
                stream.flush()
            Path(result_path).write_bytes(result)
        except RunCancelled:
            outbox.put(("cancelled", job))
            continue
        except Exception as error:
            outbox.put(("error", job, describe_error(error)))
        else:
            outbox.put(("done", job))
        sys.stdout.flush()


__all__ = ["describe_error", "main", "run_merged"]
