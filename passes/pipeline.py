"""The pass pipeline: which passes run on every graph before execution, in order."""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Graph
from .facts import ModelFacts
from .optimize import eliminate_dead_nodes
from .validate import check_batch_slices, check_module_order

Pass = Callable[[Graph, "ModelFacts | None"], Graph]

VALIDATION: tuple[Pass, ...] = (check_module_order, check_batch_slices)


def run_passes(graph: Graph, facts: ModelFacts | None = None) -> Graph:
    """Validate the graph (raising before any compute), then optimize it."""
    for validate in VALIDATION:
        graph = validate(graph, facts)
    return eliminate_dead_nodes(graph)
