"""Typed hook sites (`node.site`, made once when a node is made) and the `if` merge's own op
(SELECT), on recorded and decoded graphs, and a schema version 3 payload that wrote the merge
as a CALL of nnsight_graph.ir.functions.select."""

import json

import pytest
import torch
import zstandard

import nnsight_graph as nnsight
from nnsight_graph.ir import SITED, Node, Op
from nnsight_graph.ir.wire import MAGIC, dumps, loads


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.inner(x)) * 2


def _expected(target: str) -> tuple:
    """What a target says, read here independently of ir.sites."""
    parts = target.split(".")
    kind, path = parts[-1], ".".join(parts[:-1])
    hook = "input" if kind in ("input", "inputs", "skip") else "output"
    module = path.split(".source.")[0]
    return (path, kind, hook, module, ".source." in path)


def _check_sites(nodes: list[Node]) -> set[str]:
    kinds = set()
    for node in nodes:
        if node.op in SITED:
            site = node.site
            assert site is not None, node
            assert (site.path, site.kind, site.hook, site.module, site.in_source) == _expected(
                node.target
            ), node
            kinds.add(site.kind + (" in source" if site.in_source else ""))
        else:
            assert node.site is None, node
    return kinds


def _sited_graph():
    model = nnsight.NNsight(torch.nn.Sequential(_Block(), torch.nn.Linear(4, 4), _Block()))
    with model.trace(torch.rand(1, 4)) as tracer:
        relu = model[0].source.torch_relu_0.output.save()
        first = model[1].input.save()
        args = model[1].inputs.save()
        model[1].output[:] = 0
        model[2].skip(model[1].output)
        out = model.output.save()
    assert torch.equal(out, torch.zeros(1, 4)) and relu.shape == first.shape == (1, 4)
    assert args is not None
    return model, tracer.graph


def test_every_sited_node_recorded_and_decoded_holds_the_site_its_target_names():
    _, graph = _sited_graph()
    kinds = _check_sites(graph.nodes)
    assert kinds == {"output in source", "input", "inputs", "output", "skip"}
    decoded = loads(dumps(graph))
    assert _check_sites(decoded.nodes) == kinds
    assert [n.site for n in decoded.nodes] == [n.site for n in graph.nodes]


def test_a_site_is_read_from_the_node_not_its_target(net, x):
    """The executor serves the site the node carries: a node whose site says layer2 but
    whose target (never parsed again) says layer1 reads layer2."""
    model = nnsight.NNsight(net)
    with model.trace(x) as tracer:
        model.layer1.output.save()
    graph = tracer.graph
    read = next(n for n in graph.nodes if n.op is Op.READ)
    other = Node(0, Op.READ, "layer2.output").site
    moved = graph.with_nodes([n._replace(site=other) if n is read else n for n in graph.nodes])
    values = model.run(moved)
    assert torch.equal(values[read.id], net(x))


def _if_graph(net, x):
    model = nnsight.NNsight(net)
    with model.trace(x) as tracer:
        hidden = model.layer1.output
        if hidden.sum() > 0:
            value = hidden.sum() * 0 + 1
        else:
            value = hidden.sum() * 0 + 2
        value = nnsight.save(value)
    return model, tracer.graph, value


def test_if_records_a_select_node(net, x):
    _, graph, value = _if_graph(net, x)
    selects = [n for n in graph.nodes if n.op is Op.SELECT]
    assert len(selects) == 1 and selects[0].target == "" and len(selects[0].args) == 3
    assert not any(n.target.endswith("functions.select") for n in graph.nodes)
    assert value.item() == (1 if net.layer1(x).sum() > 0 else 2)


def _as_version_3(payload: bytes) -> bytes:
    """The payload as schema version 3 wrote it: the merge is a CALL of functions.select."""
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    header, blob = json.loads(container[16 : 16 + length]), container[16 + length :]
    header["schema_version"] = 3
    for node in header["nodes"]:
        if node["op"] == "select":
            node["op"], node["target"] = "call", "nnsight_graph.ir.functions.select"
    text = json.dumps(header).encode()
    return zstandard.ZstdCompressor().compress(MAGIC + len(text).to_bytes(8, "little") + text + blob)


def test_a_saved_version_3_graph_with_the_select_call_loads_and_runs(net, x):
    for sign in (1.0, -1.0):  # both branches
        model, graph, value = _if_graph(net, x * sign)
        old = _as_version_3(dumps(graph))
        assert b"functions.select" in zstandard.ZstdDecompressor().decompress(old)
        loaded = loads(old)
        assert [n.op for n in loaded.nodes] == [n.op for n in graph.nodes]
        assert str(loaded) == str(graph)
        values = model.run(loaded)
        assert sum(n.op is Op.SELECT for n in loaded.nodes) == 1
        saved = [v for v in values.values() if isinstance(v, torch.Tensor) and v.numel() == 1]
        assert [v.item() for v in saved] == [value.item()]


def test_a_select_op_in_a_version_3_payload_is_refused(net, x):
    _, graph, _ = _if_graph(net, x)
    container = zstandard.ZstdDecompressor().decompress(dumps(graph))
    length = int.from_bytes(container[8:16], "little")
    header, blob = json.loads(container[16 : 16 + length]), container[16 + length :]
    header["schema_version"] = 3
    text = json.dumps(header).encode()
    payload = zstandard.ZstdCompressor().compress(
        MAGIC + len(text).to_bytes(8, "little") + text + blob
    )
    with pytest.raises(nnsight.WireFormatError, match="select node, which schema version 4"):
        loads(payload)
