"""Property: a graph that `verify` accepts runs, or ends in one of our errors (NNsightError) or
in its node's own error located at the node's line; never in our executor's KeyError, TypeError
or IndexError. Graphs are generated from a seed (bounded count) over every op of the op table,
built in process (trusted: no registry) and run on the walkthrough net; each one verify accepts
also makes the round trip through the wire format unchanged."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.ir import (
    OPS,
    Const,
    ExecutionError,
    Graph,
    Invoke,
    NNsightError,
    Node,
    Op,
    SourceLoc,
    ref,
)
from nnsight_graph.ir.wire import dumps, loads
from nnsight_graph.models.walkthrough import walkthrough_net
from nnsight_graph.passes import verify

_SITES = [
    "layer1.output", "layer2.output", "layer1.input", "layer2.input", "layer1.inputs",
    "output", "input", "layer3.output", "layer1.outptu",
]  # fmt: skip
_TARGETS: dict[Op, list[str]] = {
    Op.READ: _SITES,
    Op.WRITE: _SITES,
    Op.SKIP: ["layer1.skip", "layer2.skip", "skip", "layer1.output"],
    Op.CALL: [
        "torch.add", "operator.mul", "operator.add", "operator.getitem", "torch.softmax",
        "builtins.len", "torch.zeros", "torch.cat", "torch.sum", "builtins.max", "math.sqrt",
    ],
    Op.METHOD: ["clone", "sum", "size", "mean", "append", "detach", "requires_grad_", "t"],
    Op.GETATTR: ["shape", "T", "dtype", "grad", "nothing"],
    Op.CALL_MODULE: ["layer1", "layer2", "", "layer9"],
    Op.BARRIER: ["b0"],
    Op.LOG: ["print"],
    Op.BACKWARD: ["backward"],
    Op.STOP: ["stop"],
    Op.CACHE: ["cache"],
}  # fmt: skip
_OPS = [op for op in OPS if op is not Op.LOCAL]  # a client's block: not run by a model
_LOC = SourceLoc("generated.py", 1, "generated")


@functools.cache
def _model() -> nnsight.NNsight:
    return nnsight.NNsight(walkthrough_net())


class _Graphs:
    """Random graphs for the walkthrough net: real and wrong sites, every op, Refs to earlier
    nodes of every op, constants, guards, steps, one or two invokes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def arg(self, ids: list[int], depth: int = 0) -> Any:
        rng, r = self.rng, self.rng.random()
        if ids and r < 0.5:
            return ref(rng.choice(ids))
        if r < 0.6:
            return Const(rng.randrange(3))
        if r < 0.72:
            return rng.choice([0, 1, -1, 2])
        if r < 0.78:
            return rng.choice([None, 0.5, True, "a"])
        if r < 0.84 and depth < 2:
            return slice(self.arg(ids, depth + 1), rng.choice([None, 1]))
        if r < 0.94 and depth < 2:
            items = [self.arg(ids, depth + 1) for _ in range(rng.randrange(3))]
            return tuple(items) if rng.random() < 0.5 else items
        return Const(rng.randrange(5))  # sometimes outside the table

    def node(self, id: int, ids: list[int], invokes: int) -> Node:
        rng = self.rng
        op = rng.choice(_OPS)
        fewest, most = OPS[op].arity
        count = rng.randrange(fewest, (most if most is not None else fewest + 2) + 1)
        if rng.random() < 0.1:
            count = rng.randrange(4)  # sometimes the wrong arity
        args: list[Any] = [self.arg(ids) for _ in range(count)]
        kwargs: dict[str, Any] = {}
        if op is Op.BARRIER:
            args = [rng.choice([1, 2])]
        elif op is Op.CACHE:
            kwargs = {"paths": rng.choice([["layer1"], ["layer1", "layer2"]]), "kinds": ["output"]}
        elif op in (Op.READ_GRAD, Op.WRITE_GRAD) and len(ids) >= 2 and rng.random() < 0.7:
            backwards = [i for i in ids if i in self.backwards]
            if backwards:
                args[:2] = [ref(rng.choice(ids)), ref(rng.choice(backwards))]
        if op is Op.BACKWARD:
            self.backwards.add(id)
        if OPS[op].keywords and rng.random() < 0.15:
            kwargs[rng.choice(["dim", "alpha", "sep"])] = self.arg(ids)
        target = rng.choice(_TARGETS.get(op, [""]))
        invoke = rng.choice([0, 0, 0, -1, *range(invokes)])
        step = 1 if rng.random() < 0.08 else 0
        guard = ref(rng.choice(ids)) if ids and rng.random() < 0.08 else None
        return Node(id, op, target, tuple(args), kwargs, invoke, step, _LOC, guard)

    def graph(self) -> Graph:
        rng = self.rng
        self.backwards: set[int] = set()
        invokes = [Invoke(0, (Const(0),), start=0, stop=1)]
        if rng.random() < 0.3:
            invokes.append(Invoke(1, (Const(0),), start=1, stop=2))
        nodes = [self.node(id, list(range(id)), len(invokes)) for id in range(rng.randrange(1, 7))]
        nodes.sort(key=lambda node: node.invoke < 0)  # what runs after the invokes comes last
        rows = len(invokes)
        constants = [torch.rand(rows, 5), torch.ones(rows, 10), 2]
        return Graph(nodes, constants, invokes)


_COUNT = 600


def _outcome(graph: Graph) -> str:
    try:
        verify(graph)
    except NNsightError:
        return "refused by verify"
    decoded = loads(dumps(graph))
    assert str(decoded) == str(graph)  # every op it accepts goes over the wire
    assert [n.site for n in decoded.nodes] == [n.site for n in graph.nodes]  # and its sites
    try:
        _model().run(graph)
    except NNsightError as error:
        return type(error).__name__
    except Exception as error:  # the node's own error, which must name the node's line
        if not getattr(error, "_nnsight_located", False):
            raise AssertionError(
                f"{type(error).__name__} without the node's line: our executor tripped over a "
                f"graph verify accepted:\n{graph}"
            ) from error
        return "own error"
    return "ran"


def test_generated_graphs_that_verify_accepts_run_or_raise_a_named_error():
    graphs = _Graphs(seed=0)
    outcomes: dict[str, int] = {}
    for _ in range(_COUNT):
        graph = graphs.graph()
        outcome = _outcome(graph)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "ran" and any(node.op is Op.SELECT for node in graph.nodes):
            outcomes["ran a select"] = outcomes.get("ran a select", 0) + 1
    assert {"refused by verify", "ran", "own error"} <= set(outcomes), outcomes
    assert outcomes["ran"] >= 30, outcomes
    assert outcomes.get("ran a select", 0) >= 3, outcomes  # the `if` merge, among the rest


@pytest.mark.parametrize(
    ("op", "target", "args"),
    [(Op.CALL_MODULE, "layer9", (Const(0),)), (Op.READ, "layer3.output", ())],
)
def test_a_module_path_the_model_lacks_is_our_error_naming_the_path(op, target, args):
    """What the generated graphs found: an AttributeError from torch's get_submodule."""
    nodes = [Node(0, op, target, args, loc=_LOC), Node(1, Op.SAVE, "", (ref(0),), loc=_LOC)]
    graph = Graph(nodes, [torch.rand(1, 5)], [Invoke(0, (Const(0),), start=0, stop=1)])
    verify(graph)
    with pytest.raises(ExecutionError, match="which this model does not have"):
        _model().run(graph)
