"""Analyses: facts about a graph that tools show and passes use; they return data, never
annotate nodes."""

from __future__ import annotations

from ..ir import HOOKED, Graph, Op

INPUT_KINDS = frozenset({"input", "inputs", "skip"})
"""Targets served by a module's forward pre-hook; every other module target by its forward hook.
(A skip is decided before the forward runs, so it needs the pre-hook.)"""


def needed_hooks(graph: Graph) -> dict[str, set[str]]:
    """Which hooks each module needs to run the graph: module path -> {"input", "output"}.

    The root module's path is "". Reads of the model's result and of gradients need no module
    hook and are left out. The same rule as the local executor's `Plan.build`, as data.
    """
    hooks: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.op in HOOKED:
            if node.target in ("grad", "result"):
                continue
            path, _, kind = node.target.rpartition(".")
            hooks.setdefault(path, set()).add("input" if kind in INPUT_KINDS else "output")
        elif node.op is Op.CACHE:
            for path in node.kwargs.get("paths", ()):
                for kind in node.kwargs.get("kinds", ()):
                    hooks.setdefault(path, set()).add(kind)
    return hooks
