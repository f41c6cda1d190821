"""Passes: each is a pure function over a Graph; a graph in, a printed graph out."""

import pytest
import torch

from nnsight_graph.ir import (
    BatchError,
    BatchIndexError,
    Const,
    Graph,
    Invoke,
    Node,
    Op,
    OutOfOrderError,
    Ref,
    SourceLoc,
)
from nnsight_graph.passes import (
    ModelFacts,
    check_batch_slices,
    check_module_order,
    eliminate_dead_nodes,
    has_effect,
    run_passes,
)

LOC = SourceLoc("/x/demo.py", 3)


def test_dead_nodes_are_dropped_and_effects_kept():
    graph = Graph(
        nodes=[
            Node(0, Op.READ, "layer1.output", (), {}, 0, 0, LOC),
            Node(1, Op.METHOD, "clone", (Ref(0),), {}, 0, 0, LOC),  # unused: dead
            Node(2, Op.METHOD, "sum", (Ref(0),), {}, 0, 0, LOC),
            Node(3, Op.SAVE, "", (Ref(2),), {}, 0, 0, LOC),
            Node(4, Op.READ, "layer2.output", (), {}, 0, 0, LOC),
            Node(5, Op.METHOD, "zero_", (Ref(4),), {}, 0, 0, LOC),  # in place: kept
        ],
        invokes=[Invoke(0)],
    )
    optimized = eliminate_dead_nodes(graph)
    assert str(optimized).splitlines() == [
        "%0 = read layer1.output()  # demo.py:3",
        "%2 = method sum(%0)  # demo.py:3",
        "%3 = save(%2)  # demo.py:3",
        "%4 = read layer2.output()  # demo.py:3",
        "%5 = method zero_(%4)  # demo.py:3",
    ]
    assert len(graph.nodes) == 6


def test_has_effect_rules():
    assert has_effect(Node(0, Op.CALL, "operator.iadd", (Ref(1), 1)))
    assert not has_effect(Node(0, Op.CALL, "operator.invert", (Ref(1),)))
    assert has_effect(Node(0, Op.METHOD, "__iadd__", (Ref(1), 1)))
    assert not has_effect(Node(0, Op.METHOD, "__invert__", (Ref(1),)))
    assert has_effect(Node(0, Op.SETITEM, "", (Ref(1), 0, 0)))


FACTS = ModelFacts.from_events(
    [
        ("", "input"),
        ("layer1", "input"),
        ("layer1", "output"),
        ("layer2", "input"),
        ("layer2", "output"),
        ("", "output"),
    ],
    {"layer1", "layer2", ""},
)


def test_order_is_checked_against_known_call_order():
    graph = Graph(
        nodes=[
            Node(0, Op.READ, "layer2.output", (), {}, 0, 0, SourceLoc("/x/demo.py", 5)),
            Node(1, Op.READ, "layer1.output", (), {}, 0, 0, SourceLoc("/x/demo.py", 6)),
            Node(2, Op.SAVE, "", (Ref(0),), {}, 0, 0, None),
            Node(3, Op.SAVE, "", (Ref(1),), {}, 0, 0, None),
        ],
        invokes=[Invoke(0, (), {}, 0, 1)],
    )
    with pytest.raises(OutOfOrderError, match=r"model.layer1.output.*demo.py:6.*model.layer2"):
        check_module_order(graph, FACTS)
    # another invoke may read earlier modules again
    other = Graph(
        nodes=[graph.nodes[0], graph.nodes[1]._replace(invoke=1), *graph.nodes[2:]],
        invokes=[Invoke(0, (), {}, 0, 1), Invoke(1, (), {}, 1, 2)],
    )
    assert check_module_order(other, FACTS) is other
    assert check_module_order(graph, None) is graph
    # an unused read never runs, so it cannot be out of order (as on a first run)
    unused = graph.with_nodes(graph.nodes[:3])
    assert check_module_order(unused, FACTS) is unused


def test_modules_that_run_twice_are_not_ordered():
    facts = ModelFacts.from_events([("a", "output"), ("b", "output"), ("a", "output")], set())
    assert ("a", "output") not in facts.order
    assert facts.order[("b", "output")] == 1


def test_batch_index_outside_the_invoke_rows():
    graph = Graph(
        nodes=[
            Node(0, Op.READ, "layer1.output", (), {}, 0, 0, LOC),
            Node(1, Op.GETITEM, "", (Ref(0), 1), {}, 0, 0, LOC),
        ],
        invokes=[Invoke(0, (), {}, 0, 1)],
    )
    with pytest.raises(BatchIndexError, match="owns 1 row"):
        check_batch_slices(graph, FACTS)
    with pytest.raises(IndexError):
        check_batch_slices(graph, FACTS)
    fine = graph.with_nodes([graph.nodes[0], graph.nodes[1]._replace(args=(Ref(0), -1))])
    assert check_batch_slices(fine, FACTS) is fine
    # unknown output kind (may be a tuple): no check
    assert check_batch_slices(graph, None) is graph


def test_write_of_wrong_batch_size():
    graph = Graph(
        nodes=[Node(0, Op.WRITE, "layer1.output", (Const(0),), {}, 0, 0, LOC)],
        constants=[torch.zeros(3, 10)],
        invokes=[Invoke(0, (), {}, 0, 2)],
    )
    with pytest.raises(BatchError, match="3 row"):
        check_batch_slices(graph, FACTS)


def test_pipeline_validates_then_optimizes():
    graph = Graph(
        nodes=[
            Node(0, Op.READ, "layer1.output", (), {}, 0, 0, LOC),
            Node(1, Op.METHOD, "clone", (Ref(0),), {}, 0, 0, LOC),
        ],
        invokes=[Invoke(0, (), {}, 0, 1)],
    )
    assert run_passes(graph, FACTS, debug=True).nodes == []
