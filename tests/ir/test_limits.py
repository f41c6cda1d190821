"""Bounds on reading a payload (ir.limits): counts, ids, strings and invoke ranges are refused
with a WireFormatError before they cost memory or time."""

import json
import time

import pytest
import torch
import zstandard

from nnsight_graph.ir import Graph, Invoke, Node, Op, WireFormatError, node
from nnsight_graph.ir.limits import LOCAL, SERVER, Limits
from nnsight_graph.ir.wire import MAGIC, dumps, loads


def _graph() -> Graph:
    nodes = [
        Node(0, Op.READ, "layer1.output"),
        Node(1, Op.METHOD, "clone", (node.ref(0),)),
        Node(2, Op.SAVE, "", (node.ref(1),)),
    ]
    return Graph(nodes, [torch.ones(1, 5)], [Invoke(0, (node.const(0),), {}, 0, 1)])


def _open(payload: bytes) -> tuple[dict, bytes]:
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    return json.loads(container[16 : 16 + length]), container[16 + length :]


def _close(header: dict, blob: bytes) -> bytes:
    text = json.dumps(header).encode()
    return zstandard.ZstdCompressor().compress(
        MAGIC + len(text).to_bytes(8, "little") + text + blob
    )


def _refused(payload: bytes, match: str, limits: Limits = LOCAL) -> None:
    start = time.perf_counter()
    with pytest.raises(WireFormatError, match=match):
        loads(payload, limits=limits)
    assert time.perf_counter() - start < 2.0


def test_the_server_limits_are_lower_than_a_users_own():
    assert SERVER.decompressed_bytes <= 256 << 20 < LOCAL.decompressed_bytes
    assert SERVER.nodes < LOCAL.nodes


def test_a_huge_node_id_is_refused_without_allocating_by_id():
    header, blob = _open(dumps(_graph()))
    header["nodes"][2]["id"] = 10**9
    before = len(node._REFS)
    _refused(_close(header, blob), "node ids must stay below 1000000")
    assert len(node._REFS) == before


def test_ids_out_of_order_are_read_as_edits_make_them():
    """Edits are prepended with ids after the trace's own (nnsight_graph.editing)."""
    header, blob = _open(dumps(_graph()))
    header["nodes"][0]["id"] = 7
    header["nodes"][1]["args"][0]["id"] = 7
    graph = loads(_close(header, blob))
    assert [n.id for n in graph.nodes] == [7, 1, 2]


def test_too_many_nodes_are_refused_before_validation():
    header, blob = _open(dumps(_graph()))
    header["nodes"] = [{"id": i, "op": "read", "target": "layer1.output"} for i in range(60_000)]
    _refused(_close(header, blob), "60000 nodes, more than the limit of 50000", SERVER)


def test_a_long_string_is_refused():
    header, blob = _open(dumps(_graph()))
    header["nodes"][1]["args"].append({"kind": "str", "value": "x" * 200_000})
    _refused(_close(header, blob), "200000-character value", SERVER)
    loads(_close(header, blob))  # a user's own file may hold it


def test_a_long_target_is_refused():
    header, blob = _open(dumps(_graph()))
    header["nodes"][1]["target"] = "a" * 5000
    _refused(_close(header, blob), "5000 characters")


def test_a_reversed_invoke_range_is_refused():
    header, blob = _open(dumps(_graph()))
    header["invokes"][0]["start"], header["invokes"][0]["stop"] = 3, 1
    _refused(_close(header, blob), "stop is before its start")


def test_a_big_header_is_refused_under_the_server_limit():
    header, blob = _open(dumps(_graph()))
    header["nodes"][1]["args"] = [{"kind": "int", "value": i} for i in range(2_000_000)]
    _refused(_close(header, blob), "header is .* bytes, more than the limit", SERVER)
