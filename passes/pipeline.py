"""The pass pipeline: which passes run on every graph before execution, in order."""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Graph, ValidationError
from .facts import ModelFacts
from .optimize import eliminate_common_subexpressions, eliminate_dead_nodes, fold_constants
from .validate import check_batch_slices, check_gradients, check_module_order, check_skips
from .verify import verify

Pass = Callable[[Graph, "ModelFacts | None"], Graph]
Optimization = Callable[[Graph], Graph]

VALIDATION: tuple[Pass, ...] = (
    check_module_order,
    check_batch_slices,
    check_gradients,
    check_skips,
)
"""Checks that raise before any compute, naming the user's line; they return the graph."""

OPTIMIZATION: tuple[Optimization, ...] = (
    fold_constants,
    eliminate_common_subexpressions,
    eliminate_dead_nodes,
)
"""Rewrites that keep every saved value the same; folding first exposes repeats, and dead
node elimination last removes what the others left unused."""


def run_passes(graph: Graph, facts: ModelFacts | None = None, debug: bool = False) -> Graph:
    """Validate the graph (raising before any compute), then optimize it.

    With `debug`, `verify` checks the graph's invariants before the first pass and after each
    one, and an error says which pass broke it.
    """
    if debug:
        _verify(graph, "the graph given to run_passes is invalid")
    for validate in VALIDATION:
        graph = validate(graph, facts)
        if debug:
            _verify(graph, f"the pass {validate.__name__} broke the graph")
    for optimize in OPTIMIZATION:
        graph = optimize(graph)
        if debug:
            _verify(graph, f"the pass {optimize.__name__} broke the graph")
    return graph


def _verify(graph: Graph, problem: str) -> None:
    try:
        verify(graph)
    except ValidationError as error:
        raise ValidationError(f"{problem}: {error}") from error
