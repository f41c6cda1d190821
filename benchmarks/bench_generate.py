"""Generation benchmark: nnsight_graph vs the `nnsight` package vs plain torch.

Each case greedily generates ``NEW_TOKENS`` (32) new tokens from one prompt, and every column
collects the argmax token of ``lm_head``'s last position at each step. In one process per
library it measures the median time of one whole generation for:

1. ``floor``: ``hf_model.generate(ids, attention_mask=mask, ...)`` with a plain torch forward
   hook on ``lm_head`` that appends ``output[0, -1].argmax(-1)``, registered before and removed
   after every generation, like a trace would;
2. ``raw``: the same ``generate`` call without a hook (for information);
3. ``trace``: ``with llm.generate(prompt, ...) as tracer:`` saving the token at every step
   inside ``with tracer.iter[:]:``, through the library's ``LanguageModel``.

Every column passes the same generate keywords: ``max_new_tokens=32, do_sample=False`` and
``eos_token_id=None`` (the tiny model would otherwise stop at its end-of-text token after 6
tokens), so every run makes exactly 32 forward passes; the floor checks that it got 32 new
ids and 32 hook calls. Before timing, the trace's saved tokens are checked against the floor's.
The per-step overhead is (trace - floor) / 32, each library against its own process's floor.

Cases: ``tiny-gpt2``, the tiny GPT-2 shipped in ``nnsight_graph.models``; ``gpt2-12x64``, a
random-init 12-layer,
64-wide GPT-2 with the tiny model's tokenizer, saved to a temporary directory. The floor and the
library each load their own copy of the model from the directory.

The default run measures ``nnsight_graph`` (imported as ``nnsight``) in this process, then runs
this same script with ``--library nnsight`` under the python of the venv named by
``$NNSIGHT_VENV`` (default ``/opt/nnsight-venv``), on the same model directories, and prints
the comparison.

Usage: ``python benchmarks/bench_generate.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from common import (
    REPO_ROOT,
    RunResult,
    fmt2,
    import_library,
    ratio,
    run_nnsight_subprocess,
    versions,
)

PROMPT = "The Eiffel Tower is in"
NEW_TOKENS = 32
ITERS = 20  # timed generations per column; --quick: QUICK_ITERS
QUICK_ITERS = 3
FLOOR_TARGET = 1.08  # every case: our trace <= 1.08x the hook floor
CASES = ("tiny-gpt2", "gpt2-12x64")
OPTIONS_SHOWN = f"max_new_tokens={NEW_TOKENS}, do_sample=False, eos_token_id=None, pad_token_id"
TARGETS = {name: ("ours_over_floor", FLOOR_TARGET, "trace/floor") for name in CASES}


@dataclass
class Case:
    """A model directory (config, weights, tokenizer) and how many generations to time."""

    name: str
    path: str
    iters: int


@dataclass
class CaseResult:
    """Median milliseconds per generation; an error replaces a time that could not be taken."""

    iters: int
    floor_ms: float | None = None
    raw_ms: float | None = None
    trace_ms: float | None = None
    tokens: list[int] | None = None  # the floor's 32 tokens
    floor_error: str | None = None
    trace_error: str | None = None


# --------------------------------------------------------------------------- trace body
# nnsight captures the source of the `with` block, so it must live in a real file.
# `nnsight` is the library under test (nnsight_graph or nnsight), bound by `run_library`.

nnsight: Any = None


def trace_generate(llm: Any, prompt: str, options: dict[str, Any]) -> list[Any]:
    """Generate and save the argmax token of `lm_head`'s last position at every step."""
    with llm.generate(prompt, **options) as tracer:
        tokens = nnsight.save([])
        with tracer.iter[:]:
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
    return tokens


# --------------------------------------------------------------------------- models


def quiet_transformers() -> None:
    """No progress bars or generation advice on stderr (the pad token equals eos here)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tiny_model_dir() -> str:
    """The tiny GPT-2 that ships with the package."""
    return str(REPO_ROOT / "nnsight_graph" / "models" / "tiny_gpt2")


def build_gpt2_dir(tokenizer_dir: str, out_dir: str) -> str:
    """Save a random-init 12-layer, 64-wide GPT-2 with the tiny tokenizer into ``out_dir``.

    The config's bos/eos/pad ids are the tokenizer's (GPT2Config's default 50256 lies outside
    this vocabulary); generation ignores eos anyway (``eos_token_id=None``).
    """
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=12,
        n_embd=64,
        n_head=4,
        vocab_size=len(tokenizer),
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        **special,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def generate_options(tokenizer: Any) -> dict[str, Any]:
    """The generate keywords every column passes: greedy, exactly NEW_TOKENS steps."""
    return {
        "max_new_tokens": NEW_TOKENS,
        "do_sample": False,
        "eos_token_id": None,  # never stop early
        "pad_token_id": tokenizer.pad_token_id,
    }


# --------------------------------------------------------------------------- timed bodies


class Floor:
    """Plain `generate` on a model loaded from the case's directory, with or without a hook."""

    def __init__(self, path: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        encoded = self.tokenizer(PROMPT, return_tensors="pt")
        self.ids = encoded["input_ids"]
        self.mask = encoded["attention_mask"]
        self.options = generate_options(self.tokenizer)

    def raw(self) -> torch.Tensor:
        """Generate without hooks."""
        return self.model.generate(self.ids, attention_mask=self.mask, **self.options)

    def hooked(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Generate with a forward hook on lm_head collecting each step's argmax token."""
        tokens: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> None:
            tokens.append(output[0, -1].argmax(-1))

        handle = self.model.lm_head.register_forward_hook(hook)
        try:
            ids = self.model.generate(self.ids, attention_mask=self.mask, **self.options)
        finally:
            handle.remove()
        return tokens, ids

    def check(self) -> tuple[list[int] | None, str | None]:
        """The floor's tokens, after checking that generation made exactly NEW_TOKENS steps."""
        tokens, ids = self.hooked()
        new = ids[0, self.ids.shape[1] :].tolist()
        if len(new) != NEW_TOKENS or len(tokens) != NEW_TOKENS:
            return None, (
                f"generate made {len(new)} new tokens in {len(tokens)} lm_head calls, "
                f"expected {NEW_TOKENS}: it stopped early"
            )
        values = [int(t) for t in tokens]
        if values != new:
            return None, f"hooked argmax tokens {values} differ from the generated ids {new}"
        return values, None


def check_tokens(got: Any, want: list[int]) -> str | None:
    """Why the trace's saved tokens differ from the floor's, or None if they are equal."""
    if not isinstance(got, list):
        return f"the saved value is a {type(got).__name__}, not a list"
    if len(got) != len(want):
        return f"saved {len(got)} tokens, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not isinstance(g, torch.Tensor) or g.numel() != 1:
            return f"saved token {i} is of type {type(g).__name__}, not a one-element tensor"
        if int(g) != w:
            values = [int(t) for t in got]
            return f"token {i} differs from the floor's: got {values}, expected {want}"
    return None


def make_llm(lib: ModuleType, path: str) -> Any:
    """The library's LanguageModel on the directory, weights loaded now."""
    with warnings.catch_warnings():
        # nnsight 0.8.1 deprecates LanguageModel in favour of TransformersModel
        warnings.filterwarnings("ignore", message="LanguageModel is deprecated")
        return lib.LanguageModel(path, dispatch=True)


def traced_body(
    lib: ModuleType, case: Case, want: list[int] | None
) -> tuple[Callable[[], Any] | None, str | None]:
    """Build the library's model, run the trace once and check its tokens."""
    try:
        llm = make_llm(lib, case.path)
        options = generate_options(llm.tokenizer)
        got = trace_generate(llm, PROMPT, options)
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
        return None, f"{type(exc).__name__}: {exc}"
    if want is None:
        return None, "no floor tokens to check against"
    error = check_tokens(got, want)
    if error is not None:
        return None, error
    return lambda: trace_generate(llm, PROMPT, options), None


# --------------------------------------------------------------------------- timing


def measure(bodies: dict[str, Callable[[], Any]], iters: int) -> dict[str, float]:
    """Warm up, then time the bodies interleaved, one call each per round; medians in ms.

    The order of the bodies rotates from round to round, so no column always runs first.
    """
    samples: dict[str, list[int]] = {name: [] for name in bodies}
    for fn in bodies.values():
        for _ in range(2):
            fn()
    names = list(bodies)
    clock = time.perf_counter_ns
    for round_ in range(iters):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = clock()
            bodies[name]()
            samples[name].append(clock() - start)
    return {name: statistics.median(ns) / 1e6 for name, ns in samples.items()}


def run_case(case: Case, lib: ModuleType | None, import_error: str | None) -> CaseResult:
    """Measure the floor, raw generate and (when the library works on this case) the trace."""
    result = CaseResult(case.iters)
    try:
        floor = Floor(case.path)
        result.tokens, result.floor_error = floor.check()
    except Exception as exc:  # noqa: BLE001
        result.floor_error = f"{type(exc).__name__}: {exc}"
        result.trace_error = "no floor"
        return result
    bodies: dict[str, Callable[[], Any]] = {"floor": floor.hooked, "raw": floor.raw}
    result.trace_error = import_error
    if lib is not None:
        trace, result.trace_error = traced_body(lib, case, result.tokens)
        if trace is not None:
            bodies["trace"] = trace
    med = measure(bodies, case.iters)
    result.floor_ms, result.raw_ms, result.trace_ms = med["floor"], med["raw"], med.get("trace")
    return result


# --------------------------------------------------------------------------- libraries


def run_library(name: str, paths: dict[str, str], quick: bool) -> RunResult:
    """Measure every case with ``name`` as the traced library, in this process."""
    global nnsight
    torch.set_num_threads(1)
    quiet_transformers()
    lib, import_error = import_library(name, "LanguageModel")
    nnsight = lib
    if import_error is not None:
        import_error = f"{name} not importable: {import_error}"
    result = RunResult(name, versions(lib), import_error=import_error)
    iters = QUICK_ITERS if quick else ITERS
    for case_name, path in paths.items():
        result.cases[case_name] = run_case(Case(case_name, path, iters), lib, import_error)
    return result


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None, error: str | None = None) -> str:
    """Format a time, or say that an error (printed below the table) took its place."""
    if value is None:
        return "ERROR (below)" if error else "n/a"
    return f"{value:,.2f}"


def per_step_us(res: dict[str, Any] | None) -> float | None:
    """(trace - floor) / NEW_TOKENS in microseconds."""
    if not res or res["trace_ms"] is None or res["floor_ms"] is None:
        return None
    return (res["trace_ms"] - res["floor_ms"]) * 1e3 / NEW_TOKENS


def compare_case(ours: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any]:
    """Ratios and per-step overheads for one case (``ref`` is nnsight's result or None)."""
    return {
        "ours_over_floor": ratio(ours["trace_ms"], ours["floor_ms"]),
        "nnsight_over_floor": ratio(ref["trace_ms"], ref["floor_ms"]) if ref else None,
        "ours_over_nnsight": ratio(ours["trace_ms"], ref["trace_ms"] if ref else None),
        "ours_step_overhead_us": per_step_us(ours),
        "nnsight_step_overhead_us": per_step_us(ref),
        "same_floor_tokens": (
            ours["tokens"] == ref["tokens"] if ref and ours["tokens"] and ref["tokens"] else None
        ),
    }


def target_line(case: str, cmp: dict[str, Any]) -> str | None:
    """The PASS/FAIL line for a case, if it has a target."""
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
    title = f"{ours['iters']} iterations, median per generate of {NEW_TOKENS} tokens"
    print(f"\n== {name} ({title}) ==")
    print(f"  {'':28}{library + ' proc':>20}{'nnsight proc':>16}")
    rows = (
        ("floor (lm_head hook) [ms]", "floor_ms", "floor_error"),
        ("raw generate [ms]", "raw_ms", "floor_error"),
        ("trace [ms]", "trace_ms", "trace_error"),
    )
    for label, key, err in rows:
        print(f"  {label:28}{fmt(ours[key], ours[err]):>20}{fmt(get(key), get(err)):>16}")
    step, ref_step = cmp["ours_step_overhead_us"], cmp["nnsight_step_overhead_us"]
    label = "(trace - floor)/32 [us]"
    print(f"  {label:28}{fmt(step):>20}{fmt(ref_step):>16}")
    print(
        f"  {'trace / floor':28}{fmt2(cmp['ours_over_floor']):>20}"
        f"{fmt2(cmp['nnsight_over_floor']):>16}"
    )
    print(f"  ours/nnsight trace: {fmt2(cmp['ours_over_nnsight'])}")
    for label, res in ((library, ours), ("nnsight", ref)):
        for err in ("floor_error", "trace_error"):
            if res and res.get(err):
                print(f"  {label} {err.split('_')[0]}: {res[err]}")
    if cmp["same_floor_tokens"] is False:
        print("  note: the two processes' floors generated different tokens")
    line = target_line(name, cmp)
    if line:
        print(line)
    return cmp


def report(
    ours: dict[str, Any], ref: dict[str, Any] | None, note: str | None, tiny: str
) -> dict[str, Any]:
    """Print every case and return the combined JSON document."""
    load, cpus = os.getloadavg()[0], os.cpu_count()
    print(f"load average (1 min) {load:.2f} on {cpus} cpus: higher than ~1 makes numbers noisy")
    print(f"tiny model: {tiny}; prompt {PROMPT!r}; generate options (all columns): {OPTIONS_SHOWN}")
    print(f"versions (this process): {ours['versions']}")
    if ref:
        print(f"versions (nnsight venv): {ref['versions']}")
    if note:
        print(note)
    comparison = {}
    for name, case in ours["cases"].items():
        ref_case = ref["cases"].get(name) if ref else None
        comparison[name] = print_case(name, ours["library"], case, ref_case)
    return {
        "nnsight_graph": ours,
        "nnsight": ref,
        "nnsight_note": note,
        "comparison": comparison,
        "tiny_model_dir": tiny,
    }


def print_single(run: dict[str, Any]) -> None:
    """Print one library's medians (the ``--library nnsight`` table)."""
    print(f"versions: {run['versions']}")
    for name, case in run["cases"].items():
        print(f"\n== {name} ({case['iters']} iterations, median ms, {run['library']}) ==")
        for key in ("floor_ms", "raw_ms", "trace_ms"):
            print(f"  {key:16}{fmt(case[key]):>14}")
        for err in ("floor_error", "trace_error"):
            if case[err]:
                print(f"  {err}: {case[err]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ITERS} iterations instead of {ITERS}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--library",
        choices=("nnsight_graph", "nnsight"),
        default="nnsight_graph",
        help="nnsight: measure only the nnsight package, in this process",
    )
    parser.add_argument("--quiet", action="store_true", help="with --library nnsight: no table")
    parser.add_argument("--tiny-dir", metavar="DIR", help="the tiny model (default: shipped)")
    parser.add_argument(
        "--gpt2-dir", metavar="DIR", help="the 12x64 GPT-2 (default: built in a temp dir)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (targets are reported, not enforced)."""
    args = parse_args(argv)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = args.tiny_dir or tiny_model_dir()
        paths = {"tiny-gpt2": tiny, "gpt2-12x64": args.gpt2_dir or build_gpt2_dir(tiny, tmp)}
        ours = asdict(run_library(args.library, paths, args.quick))
        if args.library == "nnsight":
            doc: dict[str, Any] = ours
            if not args.quiet:
                print_single(ours)
        else:
            ref, note = run_nnsight_subprocess(
                __file__,
                ["--tiny-dir", paths["tiny-gpt2"], "--gpt2-dir", paths["gpt2-12x64"]],
                args.quick,
            )
            doc = report(ours, ref, note, tiny)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
