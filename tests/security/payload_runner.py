"""Run every hostile payload of hostile_cases.py in a process of its own; write a JSON report.

Usage: python payload_runner.py WORKDIR REPORT.json. The payloads are built here from graphs
recorded in this process; each is then loaded and run, with the server's limits, in a forked
child that has a memory ceiling and a timeout. The report says, per case, what it ended in,
the new modules it imported, its peak memory and whether it timed out.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import hostile_cases  # noqa: E402

from nnsight_graph.ir.limits import SERVER  # noqa: E402

TIMEOUT_S = 20
MEMORY_CEILING = 3 << 30  # bytes of address space a case may add to the runner's


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_case(context: hostile_cases.Context, case: hostile_cases.Case, payload: bytes) -> dict:
    """In the child: load and run the payload; what it ended in."""
    ceiling = _address_space() + MEMORY_CEILING
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    before = set(sys.modules)
    model = context.net if case.model == "net" else context.llm
    try:
        from nnsight_graph.ir.wire import loads

        graph = loads(payload, limits=SERVER)
        saved = model.run(graph, limits=SERVER)
        outcome = "ok" if saved else "ok (nothing saved)"
    except BaseException as error:  # the report says what it was
        outcome = f"{type(error).__name__}: {error}"
    return {"outcome": outcome, "imported": sorted(set(sys.modules) - before)}


def main(workdir: Path, report: Path) -> None:
    torch.set_num_threads(1)
    context = hostile_cases.Context(workdir)
    results = {}
    for case in hostile_cases.CASES:
        try:
            payload = case.build(context)
        except BaseException as error:
            results[case.name] = {"outcome": f"build failed: {type(error).__name__}: {error}"}
            continue
        result_file = workdir / "result.json"
        result_file.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the child
            try:
                result = run_case(context, case, payload)
                result_file.write_text(json.dumps(result))
            finally:
                os._exit(0)
        start = time.monotonic()
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > TIMEOUT_S:
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.01)
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        result.setdefault("outcome", f"no result (exit status {status})")
        result["seconds"] = round(time.monotonic() - start, 3)
        result["peak_rss_mb"] = usage.ru_maxrss // 1024
        result["timed_out"] = time.monotonic() - start > TIMEOUT_S
        results[case.name] = result
    results["_canary_created"] = os.path.exists(context.canary)
    report.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
