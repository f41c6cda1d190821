"""The IR: node printing, graph helpers, function names."""

import operator

import pytest
import torch

from nnsight_graph.ir import Const, Graph, GraphBuildError, Node, Op, Ref, SourceLoc, refs
from nnsight_graph.ir.functions import qualified_name, resolve


def _graph() -> Graph:
    loc = SourceLoc("/x/demo.py", 14)
    return Graph(
        nodes=[
            Node(0, Op.READ, "layer1.output", (), {}, 0, 0, loc),
            Node(1, Op.CALL, "operator.mul", (Ref(0), 2.0), {}, 0, 0, loc),
            Node(2, Op.GETITEM, "", (Ref(1), (slice(None), 0)), {}, 0, 0, loc),
            Node(3, Op.CALL, "torch.argmax", (Ref(1),), {"dim": 1}, 0, 0, None),
            Node(4, Op.SAVE, "", (Ref(3),), {}, 0, 0, loc),
            Node(5, Op.WRITE, "layer2.input", (Const(0),), {}, 0, 2, loc),
        ]
    )


def test_graph_prints_one_line_per_node_with_the_user_line():
    assert str(_graph()).splitlines() == [
        "%0 = read layer1.output()  # demo.py:14",
        "%1 = call operator.mul(%0, 2.0)  # demo.py:14",
        "%2 = getitem(%1, (:, 0))  # demo.py:14",
        "%3 = call torch.argmax(%1, dim=1)",
        "%4 = save(%3)  # demo.py:14",
        "%5 = write layer2.input($c0) @step2  # demo.py:14",
    ]


def test_refs_finds_nested_references():
    value = (Ref(1), [Ref(2), {"a": Ref(3)}], slice(Ref(4), None), 5, Const(0))
    assert [r.id for r in refs(value)] == [1, 2, 3, 4]


def test_keep_and_users():
    graph = _graph()
    kept = graph.keep({0, 1, 3, 4})
    assert [n.id for n in kept.nodes] == [0, 1, 3, 4]
    assert [n.id for n in graph.nodes] == [0, 1, 2, 3, 4, 5]  # the input is not changed
    assert graph.users()[1] == [2, 3]
    assert graph.node(3).target == "torch.argmax"
    with pytest.raises(KeyError):
        graph.node(99)


def test_qualified_names_round_trip():
    for function in (torch.argmax, torch.nn.functional.softmax, operator.add, torch.randn_like):
        assert resolve(qualified_name(function)) is function
    assert qualified_name(torch.argmax) == "torch.argmax"


def test_lambdas_have_no_name():
    with pytest.raises(GraphBuildError, match="importable name"):
        qualified_name(lambda x: x)


def test_op_values_are_wire_names():
    assert Op("read") is Op.READ
    assert str(Op.SAVE) == "save"
