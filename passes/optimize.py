"""Optimization passes: make the graph cheaper to run without changing its results."""

from __future__ import annotations

from ..ir import Graph, has_effect


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes whose value is never used and that have no effect."""
    live: set[int] = set()
    for node in reversed(graph.nodes):
        if node.id in live or has_effect(node):
            live.add(node.id)
            live.update(ref.id for ref in node.inputs())
    if len(live) == len(graph.nodes):
        return graph
    return graph.keep(live)
