"""What a server does with one job: read the payload as untrusted, run it, return the results.

This is the one entry point both the server's workers and `remote="local"` use, so the
in-process path proves exactly what a server runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..ir.graph import Graph
from ..ir.limits import SERVER, Limits
from ..ir.results import dumps_results, dumps_session_results
from ..ir.session import SessionGraph, TraceRef, resolve
from ..ir.wire import loads_any
from ..backends.guard import check_cancelled
from ..passes.trust import check_untrusted

if TYPE_CHECKING:
    from ..model import NNsight


def rows_of(graph: Graph) -> int:
    """The batch rows a graph's invokes own (a prompt-less invoke owns none)."""
    return max((inv.stop or 0 for inv in graph.invokes), default=0)


def check_payload(
    payload: bytes, module_paths: Collection[str], limits: Limits = SERVER
) -> Graph | SessionGraph:
    """The graph (or session) in a wire payload, refused (an NNsightError naming why) unless
    it reads within `limits` and uses only what ir.registry allows and modules in
    `module_paths` (each trace of a session is checked so).

    What a server runs on submit, before a job is queued; the worker checks again when it
    runs the payload (so a payload is never run unchecked).
    """
    job = loads_any(payload, limits=limits)
    for graph in job.traces if isinstance(job, SessionGraph) else [job]:
        check_untrusted(graph, module_paths, limits)
    return job


OnStep = Callable[[int, "int | None"], None]  # (step, steps): step n of N of a generation


def run_payload(
    model: NNsight, payload: bytes, limits: Limits = SERVER, on_step: OnStep | None = None
) -> bytes:
    """Run a wire payload on `model` under `limits`; the saved values as a results payload.

    A graph payload gives a dumps_results payload; a session payload runs its traces in order
    and gives a dumps_session_results payload (per trace, only the values its user saved:
    values kept for later traces stay here, and are dropped after their last use).

    The graph is untrusted (it runs only what ir.registry allows). The sender already merged
    its model's edits into it, so the server model's own edits are not applied.

    `on_step(n, N)` is called as step n (of N new tokens, when the graph says) of a
    generation begins. A run inside backends.guard.cancellable stops at its next node or
    step once cancelled (backends.guard.RunCancelled).
    """
    job = loads_any(payload, limits=limits)
    if isinstance(job, SessionGraph):
        return dumps_session_results(run_session(model, job, limits, on_step))
    return dumps_results(run_graph(model, job, limits, on_step))


def run_graph(
    model: NNsight, graph: Graph, limits: Limits = SERVER, on_step: OnStep | None = None
) -> dict[int, Any]:
    """One untrusted graph's saved values (what run_payload does with a graph payload)."""
    with _steps(model, graph, on_step):
        return model._execute(graph, rows_of(graph), None, limits, edits=False)


@contextmanager
def _steps(model: NNsight, graph: Graph, on_step: OnStep | None) -> Iterator[None]:
    """Count the model's forward calls while a generation runs: each is a step, reported to
    `on_step` and a point where a cancelled run stops (even between nodes far apart)."""
    if graph.method != "generate" or on_step is None:
        yield
        return
    steps = graph.options.get("max_new_tokens")
    total = steps if isinstance(steps, int) else None
    count = 0

    def step(module: Any, args: Any) -> None:
        nonlocal count
        check_cancelled()
        count += 1
        on_step(count, total)

    handle = model._module.register_forward_pre_hook(step)
    try:
        yield
    finally:
        handle.remove()


def run_session(
    model: NNsight, session: SessionGraph, limits: Limits = SERVER,
    on_step: OnStep | None = None,
) -> list[dict[int, Any]]:
    """Run a session's untrusted traces in order; each trace's user-saved values.

    A later trace's TraceRef constants are filled in from the values of earlier traces; a
    value kept only for later traces is dropped once its last user has run, and never
    returned. (A per-run option of run_payload is passed on to run_graph here too.)
    """
    last_use = session.last_uses()
    computed: list[dict[int, Any]] = []
    returned: list[dict[int, Any]] = []
    for index, graph in enumerate(session.traces):
        graph = replace(graph, constants=resolve(graph, computed))
        saved = run_graph(model, graph, limits, on_step) if graph.invokes else {}
        keep = session.keep[index]
        returned.append({k: v for k, v in saved.items() if k not in keep})
        computed.append({k: v for k, v in saved.items() if TraceRef(index, k) in last_use})
        for ref, last in last_use.items():
            if last == index:
                computed[ref.trace].pop(ref.node, None)
    return returned


__all__ = ["check_payload", "rows_of", "run_graph", "run_payload", "run_session"]
