"""The wire format: exact round trips of recorded and random graphs, and refusal of bad bytes."""

import functools
import json
import math
import random
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_tensors

from nnsight_graph import NNsight
from nnsight_graph.ir import (
    Const,
    ExecutionError,
    Graph,
    Invoke,
    NNsightError,
    Node,
    Op,
    Ref,
    SourceLoc,
    ValidationError,
    WireFormatError,
)
from nnsight_graph.ir.functions import UNSET
from nnsight_graph.ir.wire import MAGIC, SCHEMA_VERSION, dumps, json_schema, loads
from nnsight_graph.passes import verify

EMPTY_TENSORS = save_tensors({})
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# recorded graphs ------------------------------------------------------------------------------


def _model() -> NNsight:
    """The walkthrough's tiny net: layer1 (5 -> 10), layer2 (10 -> 2)."""
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return NNsight(torch.nn.Sequential(layers).requires_grad_(False))


def _cross_invoke(model: NNsight) -> Graph:
    """The walkthrough's "reference values from earlier invokes" cell."""
    x = torch.rand(1, 5)
    with model.trace() as tracer:
        with tracer.invoke(x):
            layer1_out = model.layer1.output.save()
        with tracer.invoke(x):
            model.layer1.output[:] = layer1_out * 0
            model.output.save()
        with tracer.invoke(x):
            model.output.save()
    return tracer.graph


def _branches_and_constants(model: NNsight) -> Graph:
    """An `if` on a traced value (guards), a dtype constant, slices, kwargs, an invoke without
    inputs."""
    x = torch.rand(2, 5)
    with model.trace() as tracer:
        with tracer.invoke(x):
            hidden = model.layer1.output
            hidden[:, 0:3:2] = torch.full((1, 2), -1.5)
            if hidden.sum() > 0:
                out = model.output * 2
            else:
                out = model.output * 3
            out.save()
            torch.softmax(model.output.to(torch.float64), dim=-1).save()
        with tracer.invoke():
            model.layer2.input[..., -1].save()
    return tracer.graph


def _assert_same_results(first: dict, second: dict) -> None:
    assert first.keys() == second.keys() and first
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("record", [_cross_invoke, _branches_and_constants])
def test_recorded_graph_round_trips_and_runs_the_same(record):
    model = _model()
    graph = record(model)
    loaded = loads(dumps(graph))
    assert str(loaded) == str(graph)
    assert loaded.nodes == graph.nodes
    assert loaded.invokes == graph.invokes
    assert (loaded.optional, loaded.method, loaded.options) == (
        graph.optional,
        graph.method,
        graph.options,
    )
    assert len(loaded.constants) == len(graph.constants)
    for mine, theirs in zip(graph.constants, loaded.constants, strict=True):
        if isinstance(mine, torch.Tensor):
            assert theirs.dtype == mine.dtype and torch.equal(theirs, mine)
        else:
            assert theirs == mine
    _assert_same_results(model.run(graph), model.run(loaded))


@pytest.mark.parametrize("mode", ["no_grad", "inference"])
def test_the_autograd_mode_round_trips_and_the_graph_runs_in_it(mode):
    model = NNsight(_model()._module.requires_grad_(True))
    graph = _cross_invoke(model)
    assert graph.grad_mode is None and "grad_mode" not in _open(dumps(graph))[0]
    loaded = loads(dumps(replace(graph, grad_mode=mode)))
    assert loaded.grad_mode == mode
    saved = model.run(loaded)
    assert saved and not any(value.requires_grad for value in saved.values())
    assert all(value.is_inference() for value in saved.values()) is (mode == "inference")
    assert all(value.requires_grad for value in model.run(loads(dumps(graph))).values())
    with pytest.raises(WireFormatError, match="autograd mode 'enable_grad'"):
        dumps(replace(graph, grad_mode="enable_grad"))


def test_save_and_load_a_file(tmp_path: Path):
    model = _model()
    graph = _cross_invoke(model)
    path = graph.save(tmp_path / "g.nng")
    assert path.read_bytes().startswith(b"\x28\xb5\x2f\xfd")  # a zstd frame
    loaded = Graph.load(tmp_path / "g.nng")
    assert str(loaded) == str(graph)
    _assert_same_results(model.run(graph), model.run(loaded))
    with pytest.raises(WireFormatError, match="limit"):
        Graph.load(path, max_size=10)


def test_generation_graph_round_trips():
    """Steps, optional nodes, method and options of a real generate() on the tiny GPT-2."""
    models = pytest.importorskip("nnsight_graph.models")
    if not (Path(models.tiny_gpt2_path()) / "model.safetensors").is_file():
        pytest.skip("the tiny GPT-2 is not built")
    from nnsight_graph import LanguageModel

    llm = LanguageModel(models.tiny_gpt2_path(), dispatch=True)
    with llm.generate("The Eiffel Tower is in the city of", max_new_tokens=3) as tracer:
        hidden = list().save()
        with tracer.iter[:]:
            hidden.append(llm.transformer.h[1].output[0][:, -1].clone())
        tracer.result().save()
    graph = tracer.graph
    loaded = loads(dumps(graph))
    assert str(loaded) == str(graph)
    assert (loaded.optional, loaded.method, loaded.options) == (
        graph.optional,
        "generate",
        {"max_new_tokens": 3},
    )
    _assert_same_results(llm.run(graph), llm.run(loaded))


def test_if_that_assigns_in_one_branch_only_can_be_sent():
    model = _model()
    with model.trace(torch.rand(1, 5)) as tracer:
        if model.layer1.output.sum() > 0:
            out = model.output.save()  # noqa: F841 - no value on the false path
    loaded = loads(dumps(tracer.graph))
    assert str(loaded) == str(tracer.graph)
    assert [n.args for n in loaded.nodes] == [n.args for n in tracer.graph.nodes]


def test_json_schema_names_the_version():
    schema = json_schema()
    assert schema["properties"]["schema_version"]["default"] == SCHEMA_VERSION == 4
    assert {"nodes", "constants", "invokes", "optional", "method", "options"} <= set(
        schema["properties"]
    )
    json.dumps(schema)  # plain JSON


# the bytes of a payload -----------------------------------------------------------------------

PINNED_HEADER = (
    '{"schema_version":4,"nodes":[{"id":0,"op":"read","target":"layer1.output",'
    '"loc":{"file":"demo.py","line":3}},{"id":1,"op":"call","target":"torch.mul",'
    '"args":[{"kind":"ref","id":0},{"kind":"const","index":0}],'
    '"kwargs":{"alpha":{"kind":"float","value":1.5}},"invoke":1,"step":2,"guard":0},'
    '{"id":3,"op":"save","args":[{"kind":"slice","start":{"kind":"none"},'
    '"stop":{"kind":"int","value":2},"step":{"kind":"none"}},{"kind":"tuple",'
    '"items":[{"kind":"bool","value":true},{"kind":"list","items":[{"kind":"bytes",'
    '"base64":"AA=="},{"kind":"float","value":"-inf"}]}]},{"kind":"dict",'
    '"items":{"k":{"kind":"complex","real":0.0,"imag":1.0}}},{"kind":"ellipsis"},'
    '{"kind":"str","value":"é"},{"kind":"unset"}]}],"constants":[{"kind":"tensor",'
    '"name":"c0","requires_grad":true},{"kind":"dtype","name":"float16"},'
    '{"kind":"device","name":"cuda:1"},{"kind":"size","dims":[2,3]},{"kind":"float",'
    '"value":"nan"}],"invokes":[{"index":0,"args":[{"kind":"const","index":0}],'
    '"kwargs":{},"start":0,"stop":1}],"optional":[3],"method":"generate",'
    '"options":{"max_new_tokens":{"kind":"int","value":3}}}'
).encode()


def test_a_payload_holds_exactly_these_bytes():
    """The container of a small graph with every kind of value, to the byte: the JSON header (key
    order, separators, number forms), its length and the tensors' blob, in one checksummed zstd
    frame that declares its size. A change here is a change of the wire format."""
    nodes = [
        Node(0, Op.READ, "layer1.output", loc=SourceLoc("demo.py", 3)),
        Node(1, Op.CALL, "torch.mul", (Ref(0), Const(0)), {"alpha": 1.5}, 1, 2, None, Ref(0)),
        Node(3, Op.SAVE, "", (slice(2), (True, [b"\x00", -math.inf]), {"k": 1j}, ..., "é", UNSET)),
    ]
    tensor = torch.arange(3.0).requires_grad_()
    constants = [tensor, torch.float16, torch.device("cuda", 1), torch.Size([2, 3]), math.nan]
    invokes = [Invoke(0, (Const(0),), {}, 0, 1)]
    graph = Graph(nodes, constants, invokes, frozenset({3}), "generate", {"max_new_tokens": 3})
    payload = dumps(graph)
    length = len(PINNED_HEADER).to_bytes(8, "little")
    blob = save_tensors({"c0": torch.arange(3.0)})
    assert zstandard.ZstdDecompressor().decompress(payload) == MAGIC + length + PINNED_HEADER + blob
    frame = zstandard.get_frame_parameters(payload)
    assert frame.has_checksum and frame.content_size == 16 + len(PINNED_HEADER) + len(blob)


# random graphs --------------------------------------------------------------------------------

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
]

primitives = st.one_of(
    st.none(),
    st.just(Ellipsis),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)


def _args(refs: list[int], constants: int) -> st.SearchStrategy:
    leaves = [primitives]
    if refs:
        leaves.append(st.sampled_from(refs).map(Ref))
    if constants:
        leaves.append(st.integers(0, constants - 1).map(Const))
    leaf = st.one_of(*leaves)
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(inner, inner, inner).map(lambda parts: slice(*parts)),
            st.lists(inner, max_size=3).map(tuple),
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
        ),
        max_leaves=6,
    )


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * 50
    tensor = values > 0 if dtype is torch.bool else values.to(dtype)
    if tensor.dim() == 2 and draw(st.booleans()):
        tensor = tensor.t()  # not contiguous
    if draw(st.booleans()) and tensor.is_floating_point():
        tensor = tensor.clone().requires_grad_(True)
    return tensor


constants = st.one_of(
    tensors(),
    st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.bool]),
    st.sampled_from([torch.device("cpu"), torch.device("cuda", 1), torch.device("meta")]),
    st.lists(st.integers(0, 9), max_size=3).map(torch.Size),
    primitives,
)


@st.composite
def graphs(draw) -> Graph:
    table = draw(st.lists(constants, max_size=4))
    base = draw(st.lists(tensors(), max_size=1))
    if base and base[0].numel():
        table += [base[0], base[0].reshape(-1)[:1]]  # two constants that share memory
    count = len(table)
    nodes: list[Node] = []
    next_id = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 6))):
        earlier = [node.id for node in nodes]
        arg = _args(earlier, count)
        guard = draw(st.none() | st.sampled_from(earlier).map(Ref)) if earlier else None
        loc = draw(st.none() | st.builds(SourceLoc, st.text(max_size=12), st.integers(0, 10**6)))
        node = Node(
            next_id,
            draw(st.sampled_from(list(Op))),
            draw(st.text(max_size=12)),
            tuple(draw(st.lists(arg, max_size=3))),
            draw(st.dictionaries(st.text(max_size=4), arg, max_size=2)),
            draw(st.integers(-1, 3)),
            draw(st.integers(0, 5)),
            loc,
            guard,
        )
        nodes.append(node)
        next_id += draw(st.integers(1, 3))
    value = _args([], count)
    invokes = []
    for index in range(draw(st.integers(0, 3))):
        stop = draw(st.none() | st.integers(0, 8))
        args = tuple(draw(st.lists(value, max_size=2)))
        invokes.append(
            Invoke(index, args, draw(st.dictionaries(st.text(max_size=4), value)), 0, stop)
        )
    ids = [node.id for node in nodes]
    optional = draw(st.frozensets(st.sampled_from(ids))) if ids else frozenset()
    method = draw(st.sampled_from(["trace", "generate", "scan"]))
    options = draw(st.dictionaries(st.text(max_size=6), value, max_size=3))
    return Graph(nodes, table, invokes, optional, method, options)


def _same(mine, theirs) -> bool:
    """Equal, of the same types all the way down (True is not 1), NaN equal to NaN."""
    if isinstance(mine, torch.Tensor):
        return (
            type(theirs) is torch.Tensor
            and mine.dtype == theirs.dtype
            and mine.shape == theirs.shape
            and mine.requires_grad == theirs.requires_grad
            and torch.equal(mine.detach(), theirs)
        )
    if type(mine) is not type(theirs):
        return False
    if isinstance(mine, float):
        return (
            math.isnan(mine)
            and math.isnan(theirs)
            or (mine == theirs and math.copysign(1, mine) == math.copysign(1, theirs))
        )
    if isinstance(mine, complex):
        return _same(mine.real, theirs.real) and _same(mine.imag, theirs.imag)
    if isinstance(mine, slice):
        return _same((mine.start, mine.stop, mine.step), (theirs.start, theirs.stop, theirs.step))
    if isinstance(mine, (tuple, list)):  # Node and Invoke too
        return len(mine) == len(theirs) and all(map(_same, mine, theirs))
    if isinstance(mine, dict):
        return list(mine) == list(theirs) and all(_same(mine[k], theirs[k]) for k in mine)
    return mine == theirs


@FUZZ
@given(graphs())
def test_random_graphs_round_trip_exactly(graph):
    loaded = loads(dumps(graph))
    assert str(loaded) == str(graph)
    assert _same(graph.nodes, loaded.nodes)
    assert _same(graph.constants, loaded.constants)
    assert _same(graph.invokes, loaded.invokes)
    assert _same(graph.options, loaded.options)
    assert (loaded.optional, loaded.method) == (graph.optional, graph.method)


# what dumps refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constant", "named"),
    [(lambda x: x, "function"), (object(), "object"), ({1, 2}, "set"), ((1, 2), "tuple")],
)
def test_unsupported_constants_are_refused_by_name(constant, named):
    with pytest.raises(WireFormatError, match=rf"\$c0 is a builtins\.{named}"):
        dumps(Graph(constants=[constant]))


def test_unsupported_arguments_are_refused():
    with pytest.raises(WireFormatError, match=r"node %0: dictionary key 1 \(int\) is not a str"):
        dumps(Graph([Node(0, Op.CALL, "f", ({1: 2},))]))
    with pytest.raises(WireFormatError, match="node %0: an argument of type builtins.set"):
        dumps(Graph([Node(0, Op.CALL, "f", ({1},))]))


def test_unwritable_values_are_refused():
    with pytest.raises(WireFormatError, match="cannot be written as JSON"):
        dumps(Graph([Node(0, Op.CALL, "f", (10**5000,))]))
    with pytest.raises(WireFormatError, match="node %0 has an unknown op 'jump'"):
        dumps(Graph([Node(0, "jump")]))


def test_tensors_without_data_are_refused():
    with pytest.raises(WireFormatError, match="only dense tensors"):
        dumps(Graph(constants=[torch.empty(2, device="meta")]))


# what loads refuses ---------------------------------------------------------------------------


def _payload() -> bytes:
    """A real payload: two invokes, tensor and dtype constants, guards."""
    return dumps(_branches_and_constants(_model()))


def _open(payload: bytes) -> tuple[dict, bytes]:
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    return json.loads(container[16 : 16 + length]), container[16 + length :]


def _close(header: dict, blob: bytes, magic: bytes = MAGIC) -> bytes:
    text = json.dumps(header).encode()
    container = magic + len(text).to_bytes(8, "little") + text + blob
    return zstandard.ZstdCompressor().compress(container)


def _assert_refused(payload: bytes, match: str = "", max_size: int = 1 << 30) -> None:
    start = time.perf_counter()
    with pytest.raises(WireFormatError, match=match):
        loads(payload, max_size=max_size)
    assert time.perf_counter() - start < 2


def test_a_reopened_payload_still_loads():
    assert str(loads(_close(*_open(_payload())))) == str(_branches_and_constants(_model()))


def _edit(edit) -> bytes:
    header, blob = _open(_payload())
    edit(header)
    return _close(header, blob)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h["nodes"][1].update(op="frobnicate"), "does not match the graph schema"),
        (lambda h: h["nodes"][1]["args"].append({"kind": "const", "index": 99}), r"\$c99"),
        (lambda h: h["nodes"][1]["args"].append({"kind": "ref", "id": 7}), "%7, which is not an"),
        (lambda h: h["nodes"][1]["args"].append({"kind": "ref", "id": 999}), "%999"),
        (lambda h: h["nodes"][1].update(guard=1), "%1, which is not an earlier node"),
        (lambda h: h["nodes"][2].update(id=1), "appears twice"),
        (lambda h: h["nodes"][0].update(extra=1), "Extra inputs"),
        (lambda h: h["nodes"][0].update(id=-1), "greater than or equal to 0"),
        (lambda h: h["nodes"][0].update(id=True), "valid integer"),
        (lambda h: h["nodes"][1]["args"].append({"kind": "pickle", "value": "x"}), "schema"),
        (lambda h: h["nodes"][1]["args"].append({"kind": "bytes", "base64": "!!"}), "base64"),
        (lambda h: h["invokes"][0]["args"].append({"kind": "ref", "id": 0}), "node reference"),
        (lambda h: h["options"].update(x={"kind": "ref", "id": 0}), "node reference"),
        (lambda h: h.update(optional=[12345]), "optional names nodes"),
        (lambda h: h.update(schema_version=5), "schema version 5.*upgrade nnsight_graph"),
        (lambda h: h.update(schema_version=0), "schema version 0"),
        (lambda h: h.update(kind="session", schema_version=1), "sessions start at version 2"),
        (
            lambda h: h["constants"].append({"kind": "trace_ref", "trace": 0, "node": 0}),
            "only a session",
        ),
        (lambda h: h.update(schema_version="1"), "integer schema_version"),
        (lambda h: h.pop("schema_version"), "integer schema_version"),
        (lambda h: h["constants"].append({"kind": "dtype", "name": "__class__"}), "unknown dtype"),
        (lambda h: h["constants"].append({"kind": "device", "name": "cpu; rm"}), "bad device"),
        (lambda h: h["constants"].append({"kind": "device", "name": "nope"}), "bad device"),
        (lambda h: h["constants"].append({"kind": "tensor", "name": "c9"}), "do not match"),
        (lambda h: h["constants"].pop(0), "do not match"),
        (lambda h: h.update(grad_mode="enable_grad"), "does not match the graph schema"),
    ],
)
def test_malformed_headers_are_refused(edit, match):
    _assert_refused(_edit(edit), match)


def test_wrong_magic_and_bad_framing_are_refused():
    header, blob = _open(_payload())
    _assert_refused(_close(header, blob, magic=b"NNGRAPH2"), "not an nnsight_graph payload")
    compress = zstandard.ZstdCompressor().compress
    _assert_refused(compress(b""), "not an nnsight_graph payload")
    _assert_refused(compress(MAGIC + b"\x01\x00"), "ends inside its header length")
    _assert_refused(compress(MAGIC + (1000).to_bytes(8, "little") + b"{}"), "truncated")
    _assert_refused(compress(MAGIC + (1 << 40).to_bytes(8, "little") + b"{}"), "header is 1099")
    _assert_refused(compress(MAGIC + (2).to_bytes(8, "little") + b"[]"), "not a JSON object")
    _assert_refused(compress(MAGIC + (4).to_bytes(8, "little") + b"{]]x"), "not valid JSON")
    deep = b"[" * 100_000 + b"]" * 100_000
    _assert_refused(compress(MAGIC + len(deep).to_bytes(8, "little") + deep), "JSON")
    _assert_refused(_payload() + b"\x00", "unused data")
    _assert_refused(_payload() * 2, "unused data")
    _assert_refused("text", "bytes")  # type: ignore[arg-type]


def test_corrupt_tensor_data_is_refused():
    header, blob = _open(_payload())
    _assert_refused(_close(header, blob[:-3]), "tensor data is corrupt")
    _assert_refused(_close(header, b"\xff" * 8 + blob[8:]), "tensor data is corrupt")


def test_decompression_bombs_are_stopped_before_allocating():
    # a tiny frame that declares 1 TiB: magic, descriptor (8-byte size, single segment), size,
    # then one empty last raw block
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little")
    bomb = header + b"\x01\x00\x00"
    assert zstandard.frame_content_size(bomb) == 1 << 40
    _assert_refused(bomb, "1099511627776 bytes, more than the limit")
    zeros = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    assert len(zeros) < 64 << 10
    _assert_refused(zeros, "more than the limit of 1048576", max_size=1 << 20)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = unsized.compress(b"x" * 1000) + unsized.flush()
    assert zstandard.frame_content_size(frame) == -1
    _assert_refused(frame, "does not declare its decompressed size")


def test_every_truncation_is_refused():
    payload = _payload()
    for length in range(len(payload)):
        with pytest.raises(WireFormatError):
            loads(payload[:length])


# what an accepted payload holds ---------------------------------------------------------------

OWN_ERRORS = (IndexError, TypeError, RuntimeError, ValueError, ZeroDivisionError, OverflowError)
"""The errors a node's own operation raises on values it cannot take (torch's shape and dtype
errors, Python's on a wrong argument); when one reaches the caller it must carry the note
with the node's line that the executor adds (`_nnsight_located`)."""


def _outcome(graph: Graph, original: Graph | None, model: NNsight) -> str:
    """What became of a graph that `loads` accepted; fails the test on anything else.

    Acceptable: the same graph as `original` (a flip zstd or JSON does not see: the printed
    graph, the constants, invokes and method are equal); a graph `verify` refuses
    (ValidationError: it never runs); a graph that runs on the walkthrough net; or a run that
    ends in one of our errors (NNsightError: RegistryError, ValidationError, ExecutionError,
    LimitError, ... each names what is wrong) or in the node's own error (OWN_ERRORS, located
    at the node's line: the intervention asked torch or Python for something impossible).
    Anything else (a KeyError, AttributeError or AssertionError, or an own-error type without
    the node's line) is our executor tripping over a graph it accepted, and fails.
    """
    if (
        original is not None
        and str(graph) == str(original)
        and _same(original.constants, graph.constants)
        and _same(original.invokes, graph.invokes)
        and graph.method == original.method
    ):
        return "same"  # (a flip in tensor data, which has no checksum, changes a constant)
    try:
        verify(graph)
    except ValidationError:
        return "refused by verify"
    try:
        saved = model.run(graph)
    except NNsightError as error:
        return type(error).__name__
    except OWN_ERRORS as error:
        if not getattr(error, "_nnsight_located", False):
            raise AssertionError(
                f"{type(error).__name__} without the node's line:\n{graph}"
            ) from error
        return "own error"
    except Exception as error:
        raise AssertionError(f"the run of an accepted graph crashed:\n{graph}") from error
    saves = {node.args[0].id for node in graph.nodes if node.op is Op.SAVE}
    assert set(saved) <= saves, "a value nothing saved came back"
    return "ran"


def test_bit_flips_are_refused_or_change_nothing():
    """zstd's checksum catches flips; a flip in bits zstd ignores must give the same graph."""
    model = _model()
    original = _branches_and_constants(model)
    payload = dumps(original)
    accepted = 0
    start = time.perf_counter()
    for bit in range(len(payload) * 8):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            graph = loads(bytes(flipped))
        except WireFormatError:
            continue
        accepted += 1
        assert str(graph) == str(original), bit
        assert _same(original.constants, graph.constants), bit
    assert accepted < len(payload)  # nearly every flip is caught
    assert time.perf_counter() - start < 20


def test_bit_flips_inside_the_container_are_refused_or_run():
    """Flips behind zstd's checksum reach the JSON, schema and safetensors checks; what they
    let through is the same graph, or one that verify refuses, or one that runs (see
    _outcome)."""
    model = _model()
    original = _branches_and_constants(model)
    header, blob = _open(dumps(original))
    text = json.dumps(header).encode()
    container = MAGIC + len(text).to_bytes(8, "little") + text + blob
    compress = zstandard.ZstdCompressor(level=1).compress
    rng = random.Random(0)
    outcomes: dict[str, int] = {}
    for bit in rng.sample(range(len(container) * 8), 800):
        flipped = bytearray(container)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            graph = loads(compress(bytes(flipped)))
        except WireFormatError:
            outcome = "refused"
        else:
            outcome = _outcome(graph, original, model)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # the seeded sample reaches every stage: refusal, no change, changed graphs that run, and
    # changed ones the registry refuses (a flipped function or module name)
    assert {"refused", "same", "ran", "RegistryError"} <= set(outcomes), outcomes


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(data):
    for candidate in (data, b"\x28\xb5\x2f\xfd" + data, zstandard.ZstdCompressor().compress(data)):
        with pytest.raises(WireFormatError):
            loads(candidate)


@settings(FUZZ, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["kind", "id", "nodes", "args", "op",
                                                       "index", "items", "value"]), inner),
                    max_leaves=20))  # fmt: skip
def test_random_json_headers_are_refused_or_run(value):
    header = {"schema_version": 1, "nodes": [{"id": 0, "op": "read", "args": [value]}]}
    try:
        graph = loads(_close(header, EMPTY_TENSORS))
    except WireFormatError:
        return
    assert _outcome(graph, None, _net()) == "refused by verify"  # a read of no module


@functools.cache
def _net() -> NNsight:
    """One walkthrough net for the fuzz tests (made on first use, not at import)."""
    return _model()


_INPUT_TENSORS = save_tensors({"c0": torch.rand(1, 5, generator=torch.Generator().manual_seed(0))})
_TARGETS = {
    "read": ["layer1.output", "layer2.output", "layer1.input", "layer2.inputs", "result", "grad"],
    "write": ["layer1.output", "layer2.input", "layer1.inputs", "grad", "layer2.output"],
    "skip": ["layer1.skip", "layer2.skip"],
    "call": ["torch.add", "operator.mul", "operator.getitem", "torch.softmax", "builtins.len",
             "torch.zeros", "builtins.bool", "torch.cat", "os.system"],
    "method": ["clone", "sum", "append", "size", "to", "keys", "requires_grad_", "_foo"],
    "getattr": ["shape", "T", "dtype", "weight", "_x"],
    "barrier": ["b0"],
}  # fmt: skip


class _Headers:
    """Random headers of plausible graphs for the walkthrough net: real module sites,
    registry and non-registry names, Refs to earlier nodes of every op, guards, invokes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def arg(self, ids: list[int], depth: int = 0) -> dict:
        rng, r = self.rng, self.rng.random()
        if ids and r < 0.45:
            return {"kind": "ref", "id": rng.choice(ids)}
        if r < 0.55:
            return {"kind": "const", "index": rng.randrange(2)}
        if r < 0.7:
            return {"kind": "int", "value": rng.choice([0, 1, -1, 2, 10**6])}
        if r < 0.75:
            return {"kind": rng.choice(["none", "ellipsis", "unset"])}
        if r < 0.8:
            return {"kind": "str", "value": rng.choice(["a", "layer1", "dim"])}
        if r < 0.85 and depth < 2:
            start, stop = self.arg(ids, depth + 1), self.arg([], depth + 1)
            return {"kind": "slice", "start": start, "stop": stop, "step": {"kind": "none"}}
        if r < 0.93 and depth < 2:
            items = [self.arg(ids, depth + 1) for _ in range(rng.randrange(3))]
            return {"kind": rng.choice(["tuple", "list"]), "items": items}
        return {"kind": "float", "value": rng.choice([0.5, "nan", "inf"])}

    def node(self, id: int, ids: list[int]) -> dict:
        rng = self.rng
        op = rng.choice([*_TARGETS, "getitem", "setitem", "save", "log", "backward", "stop"])
        args = [self.arg(ids) for _ in range(rng.randrange(4))]
        if op == "barrier":
            args = [{"kind": "int", "value": rng.choice([1, 2])}]
        node = {"id": id, "op": op, "args": args, "loc": {"file": "fuzz.py", "line": id + 1}}
        node["target"] = rng.choice(_TARGETS.get(op, [""]))
        if rng.random() < 0.2:
            node["kwargs"] = {rng.choice(["dim", "alpha", "sep"]): self.arg(ids)}
        if rng.random() < 0.15:
            node["invoke"] = rng.choice([-1, 1])
        if ids and rng.random() < 0.1:
            node["guard"] = rng.choice(ids)
        return node

    def header(self) -> dict:
        rng = self.rng
        nodes = [self.node(id, list(range(id))) for id in range(rng.randrange(1, 6))]
        row = {"kind": "const", "index": 0}
        invokes = [{"index": 0, "args": [row], "start": 0, "stop": 1}]
        if rng.random() < 0.3:
            invokes.append({"index": 1, "args": [row], "start": 1, "stop": 2})
        return {
            "schema_version": 1,
            "nodes": nodes,
            "constants": [{"kind": "tensor", "name": "c0"}, {"kind": "int", "value": 1}],
            "invokes": invokes,
            "method": rng.choice(["trace", "trace", "trace", "scan"]),
        }


def test_random_graph_headers_are_refused_or_run():
    """Random graphs for the walkthrough net, loaded from their headers (seeded): each is
    refused by loads, by verify, by the registry, or runs to its saves or its own error."""
    headers = _Headers(seed=0)
    outcomes: dict[str, int] = {}
    for _ in range(1000):
        try:
            graph = loads(_close(headers.header(), _INPUT_TENSORS))
        except WireFormatError:
            outcome = "refused"
        else:
            outcome = _outcome(graph, None, _net())
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert {"refused by verify", "ran", "own error", "RegistryError"} <= set(outcomes), outcomes
    assert outcomes["ran"] >= 20, outcomes


# what the fuzzing found: loaded graphs the executor tripped over -------------------------------


def _node(id: int, op: str, target: str = "", *args: dict, **kwargs: dict) -> dict:
    loc = {"file": "fuzz.py", "line": id + 1, "text": f"line {id + 1}"}
    return {"id": id, "op": op, "target": target, "args": list(args), "kwargs": kwargs, "loc": loc}


def _run_header(*nodes: dict, rows: int = 1) -> dict:
    """Run a graph of these nodes on the walkthrough net (input: $c0, `rows` random rows)."""
    header = {
        "schema_version": 1,
        "nodes": list(nodes),
        "constants": [{"kind": "tensor", "name": "c0"}, {"kind": "int", "value": 1}],
        "invokes": [{"index": 0, "args": [{"kind": "const", "index": 0}], "stop": rows}],
    }
    return _net().run(loads(_close(header, save_tensors({"c0": torch.rand(rows, 5)}))))


REF0 = {"kind": "ref", "id": 0}
C1 = {"kind": "const", "index": 1}
READ = _node(0, "read", "layer1.output")


@pytest.mark.parametrize(
    ("nodes", "match"),
    [  # each raised a raw error from our executor before verify checked it
        ([_node(0, "setitem")], r"has 0 argument\(s\), but a setitem node takes 3"),  # IndexError
        ([READ, _node(1, "getitem", "", REF0)], "but a getitem node takes 2"),  # IndexError
        ([_node(0, "barrier", "b")], "how many invokes"),  # IndexError in run_control
        ([_node(0, "cache", "cache", paths=C1)], "paths= a list of module paths"),  # TypeError
        ([_node(0, "cache", "cache")], "paths= a list of module paths"),  # KeyError: 'paths'
        ([_node(0, "backward", "backward")], "has no loss"),  # ValueError: unpack
        ([_node(0, "log", "print", C1, file=C1)], r"keywords \['file'\]"),  # AttributeError
        (  # KeyError: 0 (a write has no value)
            [_node(0, "write", "layer1.output", C1), _node(1, "call", "builtins.bool", REF0)],
            "uses the value of %0, but a write node has no value",
        ),
    ],
)
def test_verify_refuses_what_the_executor_cannot_run(nodes, match):
    with pytest.raises(ValidationError, match=match) as error:
        _run_header(*nodes)
    assert f"fuzz.py:{len(nodes)}" in str(error.value)  # the failing node, by its line


def test_a_cache_with_a_bad_device_is_refused_by_name():
    """torch.device("cpu; rm") raised a RuntimeError from inside the plan's build."""
    paths = {"kind": "list", "items": [{"kind": "str", "value": "layer1"}]}
    kinds = {"kind": "list", "items": [{"kind": "str", "value": "output"}]}
    device = {"kind": "str", "value": "cpu; rm"}
    cache = _node(0, "cache", "cache", paths=paths, kinds=kinds, device=device)
    with pytest.raises(ValidationError, match="names 'cpu; rm' as its device") as error:
        _run_header(cache)
    assert "fuzz.py:1" in str(error.value)


def test_backward_of_a_value_that_is_not_a_tensor_names_its_line():
    """`.backward()` on a torch.Size was an AttributeError from our executor."""
    shape = _node(1, "getattr", "shape", REF0)
    with pytest.raises(ExecutionError, match=r"\.backward\(\) was called on a Size") as error:
        _run_header(READ, shape, _node(2, "backward", "backward", {"kind": "ref", "id": 1}))
    assert "fuzz.py:3" in "\n".join(error.value.__notes__)


def test_a_guard_on_a_value_with_no_truth_value_names_its_line():
    """A loaded graph may guard on a 2-element tensor: torch's RuntimeError, which reached the
    caller without the guarded node's line."""
    write = _node(1, "write", "layer2.input", REF0) | {"guard": 0}
    with pytest.raises(RuntimeError, match="more than one value is ambiguous") as error:
        _run_header(_node(0, "read", "result"), write)
    assert "fuzz.py:2" in "\n".join(error.value.__notes__)


# schema version 3: the model's result and gradients are ops of their own ---------------------


def _legacy_nodes() -> list[dict]:
    ref = {"kind": "ref"}
    return [
        {"id": 0, "op": "read", "target": "layer1.output"},
        {"id": 1, "op": "read", "target": "result"},
        {"id": 2, "op": "method", "target": "sum", "args": [ref | {"id": 1}]},
        {"id": 3, "op": "backward", "target": "backward", "args": [ref | {"id": 2}]},
        {"id": 4, "op": "read", "target": "grad", "args": [ref | {"id": 0}, ref | {"id": 3}]},
        {"id": 5, "op": "save", "args": [ref | {"id": 4}]},
        {"id": 6, "op": "write", "target": "grad",
         "args": [ref | {"id": 0}, ref | {"id": 3}, ref | {"id": 4}]},
    ]  # fmt: skip


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_payload_reads_its_result_and_gradient_targets_as_the_new_ops(version):
    header = {"schema_version": version, "nodes": _legacy_nodes(), "invokes": [{"index": 0}]}
    graph = loads(_close(header, EMPTY_TENSORS))
    assert [(node.op, node.target) for node in graph.nodes] == [
        (Op.READ, "layer1.output"),
        (Op.RESULT, ""),
        (Op.METHOD, "sum"),
        (Op.BACKWARD, "backward"),
        (Op.READ_GRAD, ""),
        (Op.SAVE, ""),
        (Op.WRITE_GRAD, ""),
    ]
    verify(graph)
    assert "%4 = read_grad(%0, %3)" in str(graph)
    again = loads(dumps(graph))  # written as version 3: the same graph
    assert str(again) == str(graph)


def test_a_version_3_payload_with_the_old_targets_is_refused_naming_the_new_ops():
    header = {"schema_version": SCHEMA_VERSION, "nodes": _legacy_nodes(), "invokes": [{"index": 0}]}
    graph = loads(_close(header, EMPTY_TENSORS))
    with pytest.raises(ValidationError, match="the model's result is a result node now"):
        verify(graph)
