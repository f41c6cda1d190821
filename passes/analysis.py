"""Analyses: facts about a graph that tools show and passes use; they return data, never
annotate nodes."""

from __future__ import annotations

from ..ir import Graph, Op


def needed_hooks(graph: Graph) -> dict[str, set[str]]:
    """Which hooks each module needs to run the graph: module path -> {"input", "output"}.

    The root module's path is "". Reads of the model's result and of gradients need no module
    hook and are left out. The same rule as the local executor's `Plan.build`, as data.
    """
    hooks: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.site is not None:
            site = node.site
            hooks.setdefault(site.module, set()).add(site.hook)
        elif node.op is Op.CACHE:
            for path in node.kwargs.get("paths", ()):
                for kind in node.kwargs.get("kinds", ()):
                    hooks.setdefault(path, set()).add(kind)
    return hooks
