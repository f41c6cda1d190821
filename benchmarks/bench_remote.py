"""Remote overhead on loopback: a one-save trace on the walkthrough net and on the shipped
GPT-2, run locally and through a server this script starts (`remote=True`), and many clients
at once.

    .venv/bin/python benchmarks/bench_remote.py [--runs 30] [--clients 8] [--jobs 50]

Prints the median wall time of each path and their difference (the remote overhead per job),
then jobs/s and p50/p99 latency for `--clients` threads sending `--jobs` jobs each, checking
that every result is the one its own prompt gives locally (no job lost or mixed up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nnsight_graph as nnsight  # noqa: E402
from nnsight_graph.models import tiny_gpt2_path  # noqa: E402
from nnsight_graph.models.walkthrough import walkthrough_net  # noqa: E402
from nnsight_graph.server.launch import local_server  # noqa: E402

NET = "nnsight_graph.models.walkthrough:walkthrough_net"  # the server builds the same net
PROMPTS = ["The Eiffel Tower is in the city of", "Buckingham Palace is in the city of",
           "The Colosseum is in the city of", "Hello", "The capital of France is",
           "One, two, three,", "Once upon a time", "The quick brown fox"]


def one_save(model: nnsight.LanguageModel, prompt: str, remote: bool) -> torch.Tensor:
    with model.trace(prompt, remote=remote):
        top = model.lm_head.output[0, -1].argmax().save()
    return top


def net_save(net: nnsight.NNsight, x: torch.Tensor, remote: bool) -> torch.Tensor:
    with net.trace(x, remote=remote):
        hidden = net.layer1.output.save()
    return hidden


def median_s(fn, runs: int) -> float:
    for _ in range(3):
        fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(model: nnsight.LanguageModel, expected: dict[str, int], clients: int, jobs: int,
         limit_s: float) -> dict[str, float]:
    latencies: list[float] = []
    wrong: list[str] = []
    lock = threading.Lock()
    ends = time.monotonic() + limit_s

    def client(index: int) -> None:
        prompt = PROMPTS[index % len(PROMPTS)]
        for _ in range(jobs):
            if time.monotonic() > ends:
                return
            start = time.perf_counter()
            top = one_save(model, prompt, True)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                if int(top) != expected[prompt]:
                    wrong.append(prompt)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "jobs": len(latencies), "asked": clients * jobs, "wrong": len(wrong),
        "jobs_per_s": len(latencies) / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--limit-s", type=float, default=300.0, help="bound on the load run")
    args = parser.parse_args()
    nnsight.CONFIG.APP.REMOTE_LOGGING = False
    local = nnsight.LanguageModel(tiny_gpt2_path(), dispatch=True)
    expected = {p: int(one_save(local, p, False)) for p in PROMPTS}
    net = nnsight.NNsight(walkthrough_net(), remote_name="net")
    x = torch.rand(1, 5)
    with local_server("--model", "tiny-gpt2=tiny-gpt2", "--model", f"net={NET}") as url:
        nnsight.CONFIG.API.HOST = url
        served = nnsight.LanguageModel("tiny-gpt2")  # config and tokenizer from the server
        print(f"command: {' '.join(sys.argv)}")
        for name, fn in (("walkthrough net", lambda remote: net_save(net, x, remote)),
                         ("shipped GPT-2", None)):
            if fn is None:
                here = median_s(lambda: one_save(local, PROMPTS[0], False), args.runs)
                there = median_s(lambda: one_save(served, PROMPTS[0], True), args.runs)
            else:
                here = median_s(lambda: fn(False), args.runs)
                there = median_s(lambda: fn(True), args.runs)
            print(f"one-save trace, {name}: local {1000 * here:.2f} ms, remote "
                  f"{1000 * there:.2f} ms, overhead {1000 * (there - here):.2f} ms per job "
                  f"(target < 10 ms)")
        figures = load(served, expected, args.clients, args.jobs, args.limit_s)
        print(f"{args.clients} clients x {args.jobs} jobs: {figures['jobs']}/{figures['asked']} "
              f"done, {figures['wrong']} wrong, {figures['jobs_per_s']:.1f} jobs/s, p50 "
              f"{figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms")
        if figures["wrong"] or figures["jobs"] != figures["asked"]:
            raise SystemExit("lost or mixed-up results")


if __name__ == "__main__":
    main()
