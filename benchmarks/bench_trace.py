"""Per-trace overhead benchmark: nnsight_graph vs the `nnsight` package vs plain torch.

For each case this measures, in one process per library, the median per-iteration time of:

1. ``raw``: the plain forward pass under ``torch.no_grad()``;
2. ``floor``: the same forward with one plain torch forward hook per saved module that keeps a
   reference to the module output, registered and removed every iteration like a trace would;
3. ``trace``: ``with model.trace(x): ... .save()`` through ``NNsight(model)``;
4. ``wrapped raw``: a plain forward of the net that ``NNsight`` wrapped (for information).

Raw and floor run on an unwrapped net; ``NNsight`` wraps a deep copy with the same weights,
because wrapping may patch the modules (nnsight 0.8.1 replaces every module's ``forward``).
The trace's saved values are checked against the floor's hook outputs before timing.
The per-trace overhead is trace minus raw, each library against its own process's raw.

The default run measures ``nnsight_graph`` (imported as ``nnsight``) in this process, then runs
this same script with ``--library nnsight`` under the python of the venv named by
``$NNSIGHT_VENV`` (default ``/opt/nnsight-venv``) to measure the reference package, and prints
the comparison. Both models have frozen parameters, so grad mode does not change the work done.

Usage: ``python benchmarks/bench_trace.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from common import RunResult, fmt2, import_library, ratio, run_nnsight_subprocess, versions

GPT2_LAYERS = 12
EDIT_LAYERS = 2  # the many-edits cases: a 2-layer GPT-2 ...
EDITS = 2000  # ... with this many `hidden[:, :, c] = 0` edits, half per layer
EDIT_WIDTH = 64
ROUNDS = 20  # timing rounds; the columns are interleaved round by round
OVERHEAD_TARGET = 0.5  # walkthrough-net: our overhead <= half of nnsight's
FLOOR_TARGET = 1.10  # gpt2-12x64: our trace <= 1.10x the hook floor
TARGETS = {  # case -> (comparison key, limit, description)
    "walkthrough-net": ("overhead_ours_over_nnsight", OVERHEAD_TARGET, "overhead/nnsight's"),
    "gpt2-12x64": ("ours_over_floor", FLOOR_TARGET, "trace/floor"),
    "edits-2000-one-read": ("ours_over_floor", 1.3, "trace/floor"),
    "edits-2000-read-each": ("ours_over_floor", 1.3, "trace/floor"),
}


@dataclass
class Case:
    """A model, its input, the modules whose outputs a trace saves, and the trace body."""

    name: str
    net: torch.nn.Module
    x: torch.Tensor
    saved: list[torch.nn.Module]
    trace: Callable[[Any, torch.Tensor], list[Any]]
    iters: int
    floor: Callable[[Case], list[Any]] | None = None  # the hooked floor, when not "save outputs"


@dataclass
class CaseResult:
    """Median per-iteration times in microseconds; ``trace_error`` set when tracing failed.

    ``raw_us`` and ``floor_us`` run on the unwrapped net; ``wrapped_raw_us`` is a plain forward
    of the copy that ``NNsight`` wraps (nnsight patches every module's ``forward``).
    """

    iters: int
    raw_us: float
    floor_us: float
    wrapped_raw_us: float | None = None
    trace_us: float | None = None
    trace_error: str | None = None


# --------------------------------------------------------------------------- trace bodies
# nnsight captures the source of the `with` block, so these must live in a real file.
# `nnsight` is the library under test (nnsight_graph or nnsight), bound by `run_library`.
# A list made before the `with` and appended to inside it works with nnsight 0.8.1 but keeps
# Proxy objects with nnsight_graph, so the list is made and saved inside the trace.

nnsight: Any = None


def trace_walkthrough(model: Any, x: torch.Tensor) -> list[Any]:
    """The walkthrough trace: save the last layer's output."""
    with model.trace(x):
        out = model.layer2.output.save()
    return [out]


def trace_gpt2(model: Any, x: torch.Tensor) -> list[Any]:
    """Save every transformer block's output into a saved list."""
    with model.trace(x):
        outs = nnsight.save([])
        for i in range(GPT2_LAYERS):
            outs.append(model.transformer.h[i].output.save())
    return outs


def edit_channels() -> list[int]:
    """The channel of each edit in one layer: 0, 1, ... wrapping at the width."""
    return [k % EDIT_WIDTH for k in range(EDITS // EDIT_LAYERS)]


def trace_edits_one_read(model: Any, x: torch.Tensor) -> list[Any]:
    """Read each block's output once, then zero one channel per edit; save the final norm."""
    with model.trace(x):
        for i in range(EDIT_LAYERS):
            hidden = model.transformer.h[i].output
            for c in edit_channels():
                hidden[:, :, c] = 0
        out = model.transformer.ln_f.output.save()
    return [out]


def trace_edits_read_each(model: Any, x: torch.Tensor) -> list[Any]:
    """The same edits, reading the block's ``.output`` again for each one."""
    with model.trace(x):
        for i in range(EDIT_LAYERS):
            for c in edit_channels():
                model.transformer.h[i].output[:, :, c] = 0
        out = model.transformer.ln_f.output.save()
    return [out]


def hooked_edits(case: Case) -> list[Any]:
    """The many-edits floor: a forward hook per block doing the same edits in place, and one
    on the final norm keeping its output; registered and removed every iteration."""
    store: list[Any] = []
    channels = edit_channels()

    def edit(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        for c in channels:
            output[:, :, c] = 0

    def keep(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        store.append(output)

    blocks = case.net.transformer.h  # type: ignore[union-attr]
    handles = [blocks[i].register_forward_hook(edit) for i in range(EDIT_LAYERS)]
    handles.append(case.net.transformer.ln_f.register_forward_hook(keep))  # type: ignore[union-attr]
    try:
        with torch.no_grad():
            case.net(case.x)
    finally:
        for handle in handles:
            handle.remove()
    return store


# --------------------------------------------------------------------------- cases


def walkthrough_case(iters: int) -> Case:
    """The 2-layer net (5 -> 10 -> 2) from the nnsight walkthrough."""
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    net = torch.nn.Sequential(layers).requires_grad_(False)
    return Case("walkthrough-net", net, torch.rand(1, 5), [net.layer2], trace_walkthrough, iters)


def gpt2_case(iters: int) -> Case:
    """A randomly initialised 12-layer, 64-wide GPT-2 on 64 token ids."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=GPT2_LAYERS, n_embd=64, n_head=4)
    net = transformers.GPT2LMHeadModel(config).eval().requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (1, 64))
    saved = [net.transformer.h[i] for i in range(GPT2_LAYERS)]
    return Case("gpt2-12x64", net, ids, saved, trace_gpt2, iters)


def edits_cases(iters: int) -> list[Case]:
    """A random-init 2-layer, 64-wide GPT-2 (vocabulary 1000) on 64 ids, with 2,000 edits."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=EDIT_LAYERS, n_embd=EDIT_WIDTH, n_head=4, vocab_size=1000,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    net = transformers.GPT2LMHeadModel(config).eval().requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (1, 64))
    saved = [net.transformer.ln_f]
    return [
        Case(name, net, ids, saved, body, iters, hooked_edits)
        for name, body in (
            ("edits-2000-one-read", trace_edits_one_read),
            ("edits-2000-read-each", trace_edits_read_each),
        )
    ]


def build_cases(quick: bool) -> tuple[list[Case], dict[str, str]]:
    """The benchmark cases; a case that cannot be built is reported by name -> error."""
    scale = 10 if quick else 1
    cases: list[Case] = [walkthrough_case(2000 // scale)]
    errors: dict[str, str] = {}
    try:
        cases.append(gpt2_case(200 // scale))
    except Exception as exc:  # noqa: BLE001 - e.g. transformers missing in that venv
        errors["gpt2-12x64"] = f"{type(exc).__name__}: {exc}"
    try:
        cases.extend(edits_cases(60 // scale))
    except Exception as exc:  # noqa: BLE001
        errors["edits-2000"] = f"{type(exc).__name__}: {exc}"
    return cases, errors


# --------------------------------------------------------------------------- timed bodies


def raw_forward(net: torch.nn.Module, x: torch.Tensor) -> Any:
    """The plain forward pass."""
    with torch.no_grad():
        return net(x)


def hooked_forward(case: Case) -> list[Any]:
    """The floor: one forward hook per saved module storing its output, removed afterwards
    (or the case's own floor)."""
    if case.floor is not None:
        return case.floor(case)
    store: list[Any] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        store.append(output)

    handles = [module.register_forward_hook(hook) for module in case.saved]
    try:
        with torch.no_grad():
            case.net(case.x)
    finally:
        for handle in handles:
            handle.remove()
    return store


def check_trace(case: Case, model: Any) -> str | None:
    """Run the trace once and compare the saved values with the hook floor's."""
    got = case.trace(model, case.x)
    want = hooked_forward(case)
    if len(got) != len(want):
        return f"trace saved {len(got)} values, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not isinstance(g, torch.Tensor) or not torch.allclose(g, w, atol=1e-5):
            return f"saved value {i} differs from the hooked output (got {type(g).__name__})"
    return None


# --------------------------------------------------------------------------- timing


def time_block(fn: Callable[[], Any], iters: int, samples: list[int]) -> None:
    """Append the duration in ns of each of ``iters`` calls of ``fn`` to ``samples``."""
    gc.collect()
    clock = time.perf_counter_ns
    for _ in range(iters):
        start = clock()
        fn()
        samples.append(clock() - start)


def measure(bodies: dict[str, Callable[[], Any]], iters: int) -> dict[str, float]:
    """Warm up, then time the bodies interleaved over ``ROUNDS``; medians in microseconds."""
    samples: dict[str, list[int]] = {name: [] for name in bodies}
    for fn in bodies.values():
        time_block(fn, max(iters // 10, 2), [])
    per_round = max(iters // ROUNDS, 1)
    for _ in range(ROUNDS):
        for name, fn in bodies.items():
            time_block(fn, per_round, samples[name])
    return {name: statistics.median(ns) / 1e3 for name, ns in samples.items()}


def traced_bodies(case: Case, lib: ModuleType) -> tuple[dict[str, Callable[[], Any]], str | None]:
    """Wrap a copy of the net (the library may patch the modules it wraps) and check it."""
    net = copy.deepcopy(case.net)
    try:
        model = lib.NNsight(net)
        error = check_trace(case, model)
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
        return {}, f"{type(exc).__name__}: {exc}"
    if error is not None:
        return {}, error
    return {
        "wrapped_raw": lambda: raw_forward(net, case.x),
        "trace": lambda: case.trace(model, case.x),
    }, None


def run_case(case: Case, lib: ModuleType | None, import_error: str | None) -> CaseResult:
    """Measure raw, floor and (when the library works on this case) the trace."""
    bodies: dict[str, Callable[[], Any]] = {
        "raw": lambda: raw_forward(case.net, case.x),
        "floor": lambda: hooked_forward(case),
    }
    error = import_error
    if lib is not None:
        extra, error = traced_bodies(case, lib)
        bodies.update(extra)
    med = measure(bodies, case.iters)
    return CaseResult(
        case.iters, med["raw"], med["floor"], med.get("wrapped_raw"), med.get("trace"), error
    )


# --------------------------------------------------------------------------- libraries


def run_library(name: str, quick: bool) -> RunResult:
    """Measure every case with ``name`` as the traced library, in this process."""
    global nnsight
    torch.set_num_threads(1)
    lib, import_error = import_library(name, "NNsight")
    nnsight = lib
    if import_error is not None:
        import_error = f"{name} not importable: {import_error}"
    result = RunResult(name, versions(lib), import_error=import_error)
    cases, errors = build_cases(quick)
    for case in cases:
        result.cases[case.name] = run_case(case, lib, import_error)
    for case_name, error in errors.items():
        print(f"note: case {case_name} skipped: {error}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None) -> str:
    """Format a time in microseconds, or 'n/a' when missing."""
    return "n/a" if value is None else f"{value:,.1f}"


def compare_case(ours: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any]:
    """Ratios and overheads for one case (``ref`` is nnsight's result or None)."""
    trace = ours["trace_us"]
    ref_trace = ref["trace_us"] if ref else None
    over = trace - ours["raw_us"] if trace is not None else None
    ref_over = ref_trace - ref["raw_us"] if ref and ref_trace is not None else None
    return {
        "ours_over_floor": ratio(trace, ours["floor_us"]),
        "ours_over_nnsight": ratio(trace, ref_trace),
        "nnsight_over_floor": ratio(ref_trace, ref["floor_us"]) if ref else None,
        "ours_overhead_us": over,
        "nnsight_overhead_us": ref_over,
        "overhead_ours_over_nnsight": ratio(over, ref_over),
    }


def target_line(case: str, cmp: dict[str, Any]) -> str | None:
    """The issue's PASS/FAIL line for a case, if it has a target."""
    if case not in TARGETS:
        return None
    key, limit, what = TARGETS[case]
    value = cmp[key]
    verdict = "N/A" if value is None else ("PASS" if value <= limit else "FAIL")
    shown = "n/a" if value is None else f"{value:.3f}"
    return f"  target {case}: our {what} <= {limit:.2f}: measured {shown} -> {verdict}"


def print_case(
    name: str, library: str, ours: dict[str, Any], ref: dict[str, Any] | None
) -> dict[str, Any]:
    """Print one case's table (``library`` ran ``ours``) and return its comparison."""
    cmp = compare_case(ours, ref)
    get = (lambda key: ref[key]) if ref else (lambda key: None)
    print(f"\n== {name} ({ours['iters']} iterations, median per iteration) ==")
    print(f"  {'':24}{library + ' proc':>20}{'nnsight proc':>16}")
    for label, key in (("raw forward", "raw_us"), ("floor (torch hooks)", "floor_us")):
        print(f"  {label + ' [us]':24}{fmt(ours[key]):>20}{fmt(get(key)):>16}")
    wrapped = "raw forward, wrapped [us]"
    print(f"  {wrapped:24}{fmt(ours['wrapped_raw_us']):>20}{fmt(get('wrapped_raw_us')):>16}")
    print(f"  {'trace [us]':24}{fmt(ours['trace_us']):>20}{fmt(get('trace_us')):>16}")
    over, ref_over = cmp["ours_overhead_us"], cmp["nnsight_overhead_us"]
    print(f"  {'trace - raw [us]':24}{fmt(over):>20}{fmt(ref_over):>16}")
    print(
        f"  {'trace / floor':24}{fmt2(cmp['ours_over_floor']):>20}"
        f"{fmt2(cmp['nnsight_over_floor']):>16}"
    )
    print(
        f"  ours/nnsight trace: {fmt2(cmp['ours_over_nnsight'])}, "
        f"overhead ours/nnsight: {fmt2(cmp['overhead_ours_over_nnsight'])}"
    )
    for label, res in ((library, ours), ("nnsight", ref)):
        if res and res.get("trace_error"):
            print(f"  {label} trace: {res['trace_error']}")
    line = target_line(name, cmp)
    if line:
        print(line)
    return cmp


def report(ours: dict[str, Any], ref: dict[str, Any] | None, note: str | None) -> dict[str, Any]:
    """Print every case and return the combined JSON document."""
    load, cpus = os.getloadavg()[0], os.cpu_count()
    print(f"load average (1 min) {load:.2f} on {cpus} cpus: higher than ~1 makes numbers noisy")
    print(f"versions (this process): {ours['versions']}")
    if ref:
        print(f"versions (nnsight venv): {ref['versions']}")
    if note:
        print(note)
    comparison = {}
    for name, case in ours["cases"].items():
        ref_case = ref["cases"].get(name) if ref else None
        comparison[name] = print_case(name, ours["library"], case, ref_case)
    return {"nnsight_graph": ours, "nnsight": ref, "nnsight_note": note, "comparison": comparison}


def print_single(run: dict[str, Any]) -> None:
    """Print one library's medians (the ``--library nnsight`` table)."""
    print(f"versions: {run['versions']}")
    for name, case in run["cases"].items():
        print(
            f"\n== {name} ({case['iters']} iterations, median per iteration, {run['library']}) =="
        )
        for key in ("raw_us", "floor_us", "wrapped_raw_us", "trace_us"):
            print(f"  {key:16}{fmt(case[key]):>14}")
        if case["trace_error"]:
            print(f"  trace: {case['trace_error']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer iterations")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--library",
        choices=("nnsight_graph", "nnsight"),
        default="nnsight_graph",
        help="nnsight: measure only the nnsight package, in this process",
    )
    parser.add_argument("--quiet", action="store_true", help="with --library nnsight: no table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (targets are reported, not enforced)."""
    args = parse_args(argv)
    ours = asdict(run_library(args.library, args.quick))
    if args.library == "nnsight":
        doc: dict[str, Any] = ours
        if not args.quiet:
            print_single(ours)
    else:
        ref, note = run_nnsight_subprocess(__file__, [], args.quick)
        doc = report(ours, ref, note)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
