"""needed_hooks(): which module hooks a graph needs, as data for tools."""

from nnsight_graph.backends import Plan
from nnsight_graph.ir import Graph, Invoke, Node, Op, SourceLoc, ref
from nnsight_graph.passes import needed_hooks, run_passes

LOC = SourceLoc("/x/demo.py", 3)


def graph_of(*nodes: Node) -> Graph:
    return Graph(nodes=list(nodes), invokes=[Invoke(0)])


def node(id: int, op: Op, target: str = "", *args, **kwargs) -> Node:
    return Node(id, op, target, args, kwargs, 0, 0, LOC)


def test_needed_hooks_per_module():
    graph = graph_of(
        node(0, Op.READ, "layer1.input"),
        node(1, Op.READ, "layer1.output"),
        node(2, Op.WRITE, "layer2.inputs", ((ref(1),), {})),
        node(3, Op.SKIP, "h.0.skip", ref(1)),
        node(4, Op.READ, "output"),
        node(5, Op.RESULT, ""),
        node(6, Op.BACKWARD, "backward", ref(5)),
        node(7, Op.READ_GRAD, "", ref(1), ref(6)),
        node(8, Op.CACHE, "cache", paths=["h.1", "h.2"], kinds=["output", "input"]),
    )
    hooks = needed_hooks(graph)
    assert hooks == {
        "layer1": {"input", "output"},
        "layer2": {"input"},
        "h.0": {"input"},
        "": {"output"},
        "h.1": {"input", "output"},
        "h.2": {"input", "output"},
    }
    assert hooks == Plan.build(graph).modules  # the executor registers exactly these


def test_needed_hooks_shrink_as_dead_reads_are_dropped():
    graph = graph_of(
        node(0, Op.READ, "layer1.input"),  # unused: no pre-hook needed after optimization
        node(1, Op.READ, "layer2.output"),
        node(2, Op.SAVE, "", ref(1)),
    )
    assert needed_hooks(graph) == {"layer1": {"input"}, "layer2": {"output"}}
    assert needed_hooks(run_passes(graph, None, debug=True)) == {"layer2": {"output"}}
