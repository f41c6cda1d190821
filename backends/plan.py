"""The plan of a graph for the local executor: hook sites, each invoke's nodes, value use
counts; and the cursors and site values a run moves through it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..ir import GRADIENTS, Const, Graph, Node, Op, Ref, is_literal
from ..ir.sites import GRAD, RESULT
from .caching import CacheSpec

Site = tuple[str, str]  # (module path, hook kind): ("layer1", "output"), ("", "result")


@dataclass
class Plan:
    """What a graph needs from the model: its hook sites and, per invoke, its nodes.

    A plan depends on the graph's structure only, not on its constants, so it can be reused
    by every trace that records the same graph.
    """

    graph: Graph
    sites: dict[int, tuple[Site, str]] = field(default_factory=dict)
    modules: dict[str, set[str]] = field(default_factory=dict)
    invoke_nodes: list[list[Node]] = field(default_factory=list)
    tail_nodes: list[Node] = field(default_factory=list)
    uses: dict[int, int] = field(default_factory=dict)
    inputs: dict[int, tuple[int, ...]] = field(default_factory=dict)
    flat: set[int] = field(default_factory=set)
    reads_result: bool = False
    grads: dict[int, dict[int, Site]] = field(default_factory=dict)  # backward -> tensor -> site
    skips: set[str] = field(default_factory=set)  # modules whose forward may be skipped
    sources: set[str] = field(default_factory=set)  # modules whose call sites are read
    expanded: set[str] = field(default_factory=set)  # call sites whose callee is traced too
    caches: dict[int, CacheSpec] = field(default_factory=dict)  # CACHE node -> what it keeps
    cached: dict[Site, list[CacheSpec]] = field(default_factory=dict)  # site -> its caches
    straight: Any = None  # a StraightPlan when the straight-line executor can run this plan

    @classmethod
    def build(cls, graph: Graph) -> Plan:
        """Group the nodes by invoke, find the hook sites and count each value's uses."""
        # the plan keeps the structure only: holding the constants (the inputs, values written
        # into the model) would keep the first trace's tensors alive as long as the plan is cached
        structure = replace(graph, constants=[])
        plan = cls(structure, invoke_nodes=[[] for _ in graph.invokes])
        for node in graph.nodes:
            if node.op in GRADIENTS:
                tensor, backward = node.args[0].id, node.args[1].id
                site = (f"{tensor}/{backward}", GRAD)
                plan.sites[node.id] = (site, GRAD)
                plan.grads.setdefault(backward, {})[tensor] = site
            elif node.op is Op.RESULT:
                plan.sites[node.id] = (("", RESULT), RESULT)
                plan.reads_result = True
            elif node.site is not None:  # a READ, WRITE or SKIP: "h.0.inputs" is at
                # ("h.0", "input") and projects "inputs"
                kind = node.site.kind
                site = (node.site.path, node.site.hook)
                plan.sites[node.id] = (site, kind)
                if node.site.in_source:
                    parts = site[0].split(".source.")
                    plan.sources.add(parts[0])
                    for depth in range(2, len(parts)):
                        plan.expanded.add(".source.".join(parts[:depth]))
                else:
                    plan.modules.setdefault(site[0], set()).add(site[1])
                if kind == "skip":
                    plan.skips.add(site[0])
            elif node.op is Op.CACHE:
                spec = plan.caches[node.id] = CacheSpec.of(node, graph)
                for path in spec.paths:
                    for kind in spec.kinds:
                        plan.modules.setdefault(path, set()).add(kind)
                        plan.cached.setdefault((path, kind), []).append(spec)
            ids = tuple(ref.id for ref in node.inputs())
            plan.inputs[node.id] = ids
            for id in ids:
                plan.uses[id] = plan.uses.get(id, 0) + 1
            if not node.kwargs and all(type(a) in _FLAT or is_literal(a) for a in node.args):
                plan.flat.add(node.id)
            if node.invoke < 0:
                plan.tail_nodes.append(node)
            else:
                plan.invoke_nodes[node.invoke].append(node)
        from .straight import StraightPlan  # it builds on this module's plans

        plan.straight = StraightPlan.of(plan)
        return plan


_FLAT = frozenset({Ref, Const, int, float, bool, str, type(None)})
_CONTROL = frozenset({Op.STOP, Op.BARRIER, Op.BACKWARD})


class SiteValue:
    """The value at one hook firing, shared by the invokes that take their turns on it."""

    __slots__ = ("full", "kind")

    def __init__(self, full: Any, kind: str) -> None:
        self.full = full
        self.kind = kind


class Cursor:
    """One invoke's position in its nodes, and the batch rows it owns."""

    __slots__ = (
        "index",
        "nodes",
        "start",
        "stop",
        "position",
        "last_hooked",
        "waiting_for",
        "fence",
    )

    def __init__(self, index: int, nodes: list[Node], start: int, stop: int | None) -> None:
        self.index = index
        self.nodes = nodes
        self.fence = len(nodes)  # during a backward pass: where its gradient work ends
        self.start = start
        self.stop = stop
        self.position = 0
        self.last_hooked: Node | None = None
        self.waiting_for: Ref | None = None  # a value from another invoke, not there yet

    @property
    def done(self) -> bool:
        return self.position >= len(self.nodes)
