"""Co-batching under load on loopback: 16 clients (16 keys) each sending 60 one-save traces of
the shipped GPT-2, against a server that merges compatible jobs and one that runs each job
alone (`--batch-window-ms 0`).

    .venv/bin/python benchmarks/bench_load.py [--clients 16] [--jobs 60] [--window-ms 5]

Prints jobs/s and p50/p99 latency (submit to result in hand) for both servers, the mean jobs
per forward pass, and the ratios (the target: at least 3x the jobs/s, p99 no worse). Every
result is checked against the value its own client's input gives here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

import nnsight_graph as nnsight  # noqa: E402
from nnsight_graph.models import tiny_gpt2_path  # noqa: E402
from nnsight_graph.server.app import hash_key  # noqa: E402
from nnsight_graph.server.launch import local_server  # noqa: E402
from nnsight_graph.server.load import LoadReport, one_save_jobs, run_load  # noqa: E402


def measure(window_ms: float, keys_file: Path, keys: list[str], jobs, per_client: int,
            limit_s: float) -> tuple[LoadReport, float]:
    """The load's report on a fresh server with that gathering window; jobs per pass."""
    with local_server("--api-keys", str(keys_file), "--batch-window-ms", str(window_ms)) as url:
        run_load(url, keys, jobs, 3, limit_s=limit_s)  # warm: every client, a few times
        before = _passes(url, keys[0])
        report = run_load(url, keys, jobs, per_client, limit_s=limit_s)
        after = _passes(url, keys[0])
    passes = after[0] - before[0]
    return report, (after[1] - before[1]) / passes if passes else float("nan")


def _passes(url: str, key: str) -> tuple[float, float]:
    """(forward passes, jobs in them) so far, from /metrics."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    found = {}
    for line in text.splitlines():
        for name in ("count", "sum"):
            if line.startswith(f"nnsight_graph_batch_jobs_{name}{{"):
                found[name] = float(line.split()[-1])
    return found.get("count", 0.0), found.get("sum", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=60, help="jobs per client")
    parser.add_argument("--window-ms", type=float, default=5.0,
                        help="the co-batching server's --batch-window-ms")
    parser.add_argument("--limit-s", type=float, default=600.0, help="bound on each run")
    args = parser.parse_args()
    local = nnsight.LanguageModel(tiny_gpt2_path(), dispatch=True)
    jobs = one_save_jobs(local, args.clients)
    keys = [f"bench-key-{i}" for i in range(args.clients)]
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as folder:
        keys_file = Path(folder) / "keys.txt"
        keys_file.write_text("".join(f"user{i} {hash_key(k)}\n" for i, k in enumerate(keys)))
        figures = {}
        for name, window in (("co-batching", args.window_ms), ("alone", 0.0)):
            report, per_pass = measure(window, keys_file, keys, jobs, args.jobs, args.limit_s)
            figures[name] = report
            print(f"{name:>11} (--batch-window-ms {window:g}): {args.clients} clients x "
                  f"{args.jobs} jobs: {report.line()}, {per_pass:.1f} jobs per forward pass")
    on, off = figures["co-batching"], figures["alone"]
    print(f"co-batching / alone: {on.jobs_per_s / off.jobs_per_s:.2f}x jobs/s (target >= 3x), "
          f"p99 {on.p99_ms / off.p99_ms:.2f}x (target <= 1x), p50 "
          f"{on.p50_ms / off.p50_ms:.2f}x")
    if on.wrong or off.wrong or len(on.completed) != on.asked or len(off.completed) != off.asked:
        raise SystemExit("lost or mixed-up results")


if __name__ == "__main__":
    main()
