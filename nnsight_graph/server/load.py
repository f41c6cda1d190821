"""Many clients at once against one server (the load test and benchmarks/bench_load.py).

    payloads = one_save_jobs(model, clients=16)    # per client: its payload and its answer
    report = run_load(url, keys, payloads, jobs_per_client=60)
    report.jobs_per_s, report.p50_ms, report.p99_ms, report.wrong

Each client is a thread with its own key (`remote.client.Client`) that submits its one-save
trace, follows the job's events to the end and checks that the value it gets back is the one
its own input gives (so a result delivered to the wrong job, or mixed with another's rows, is
counted as wrong). Every loop is bounded: `jobs_per_client` jobs each, and `limit_s` seconds.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.results import loads_results
from ..ir.wire import dumps
from ..remote.client import Client, RemoteError

WIDTH = 6  # tokens per prompt: jobs of one width may share a forward pass


@dataclass
class Outcome:
    """One job of the run, as its client saw it."""

    client: int
    job_id: str
    status: str
    latency_s: float
    correct: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    outcomes: list[Outcome]
    asked: int
    wall_s: float

    @property
    def completed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "COMPLETED"]

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.completed if not o.correct]

    @property
    def jobs_per_s(self) -> float:
        return len(self.completed) / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, share: float) -> float:
        latencies = sorted(o.latency_s for o in self.completed)
        if not latencies:
            return float("nan")
        return 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * share))]

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(0.50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    def line(self) -> str:
        return (f"{len(self.completed)}/{self.asked} completed, {len(self.wrong)} wrong, "
                f"{self.jobs_per_s:.1f} jobs/s, p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms")


def client_ids(model: Any, client: int, prompt: str = "The Eiffel Tower is in the city of",
               width: int = WIDTH) -> torch.Tensor:
    """Client `client`'s input: the prompt's first `width` tokens, the first one its own."""
    ids = list(model.tokenizer(prompt)["input_ids"][:width])
    ids[0] = (11 + 7 * client) % model.config.vocab_size
    return torch.tensor([ids])


def one_save_jobs(model: Any, clients: int) -> list[tuple[bytes, torch.Tensor]]:
    """Per client: the payload of a one-save trace on its own input (the last position's
    logits), and the value it saves when run here."""
    jobs = []
    for client in range(clients):
        with model.trace(client_ids(model, client)) as tracer:
            logits = model.lm_head.output[:, -1].save()
        jobs.append((dumps(tracer.graph), logits.detach().clone()))
    return jobs


def run_load(
    url: str, keys: list[str], jobs: list[tuple[bytes, torch.Tensor]], jobs_per_client: int,
    limit_s: float = 300.0, model: str = "tiny-gpt2",
    on_done: Callable[[Outcome], None] | None = None, atol: float = 1e-4,
) -> LoadReport:
    """Client i (key `keys[i]`) sends `jobs[i]`'s payload `jobs_per_client` times, one after
    another; all clients at once. `on_done` sees each job as it ends (from its thread)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    ends = time.monotonic() + limit_s

    def client(index: int) -> None:
        payload, expected = jobs[index]
        http = Client(url, keys[index])
        try:
            for _ in range(jobs_per_client):
                if time.monotonic() > ends:
                    return
                outcome = _one(http, index, payload, expected, model, ends, atol)
                with lock:
                    outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(i,), name=f"load-client-{i}")
               for i in range(len(jobs))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(ends - time.monotonic(), 0.0) + 60)
    return LoadReport(list(outcomes), len(jobs) * jobs_per_client, time.perf_counter() - start)


def _one(http: Client, index: int, payload: bytes, expected: torch.Tensor, model: str,
         ends: float, atol: float) -> Outcome:
    """One job as `remote=True` runs it: submit, follow its events with the result inline
    (one GET of the job only when it did not complete, for its error)."""
    start = time.perf_counter()
    job = ""
    try:
        job = str(http.submit(payload, model)["job_id"])
        final: dict[str, Any] = {}
        for event in http.follow(job, timeout=max(ends - time.monotonic(), 1.0), inline=True):
            final = event
        inline = final.pop("result", None)
        info = final if final.get("status") == "COMPLETED" else http.job(job)
        correct = False
        if info["status"] == "COMPLETED":
            data = base64.b64decode(inline) if inline is not None else http.result(job)
            (value,) = loads_results(data).values()
            correct = value.shape == expected.shape and bool(
                torch.allclose(value, expected, atol=atol))
        return Outcome(index, job, str(info["status"]), time.perf_counter() - start, correct,
                       {"batch_jobs": None, **info})
    except (RemoteError, TimeoutError) as error:
        return Outcome(index, job, "FAILED", time.perf_counter() - start, False,
                       {"error": str(error)})


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


__all__ = ["LoadReport", "Outcome", "client_ids", "one_save_jobs", "rss_bytes", "run_load"]
