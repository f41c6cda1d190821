"""Reading and writing a Graph as bytes: the JSON header, tensors as safetensors, zstd framing.

A payload is one zstd frame (content size declared, checksummed) that holds a container::

    b"NNGRAPH1" | header length (8 bytes, little-endian) | JSON header | safetensors blob

The header is a `GraphModel` (ir.wire_schema) as UTF-8 JSON. Tensor constants live in the
safetensors blob under the names "c<index>". A session payload (dumps_session) has the same
container; its header is a `SessionModel` (each trace's graph, tensors named
"t<trace>.c<index>", TraceRef constants for values of earlier traces).

Loading never unpickles, imports or calls anything named by the payload: every value is
rebuilt from the schema's closed set of types, and bad input raises WireFormatError.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import WireFormatError
from .functions import UNSET
from .grad_mode import GRAD_MODES
from .graph import Graph, Invoke
from .limits import LOCAL, Limits
from .node import Const, Node, Ref, SourceLoc
from .ops import Op
from .session import SessionGraph, TraceRef
from .wire_schema import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    BoolArg,
    BytesArg,
    ComplexArg,
    ConstArg,
    DeviceConstant,
    DictArg,
    DtypeConstant,
    EllipsisArg,
    FloatArg,
    GraphModel,
    IntArg,
    InvokeModel,
    ListArg,
    NodeModel,
    NoneArg,
    RefArg,
    SessionModel,
    SizeConstant,
    SliceArg,
    StrArg,
    TensorConstant,
    TraceRefConstant,
    TupleArg,
    UnsetArg,
    json_schema,
)

MAGIC = b"NNGRAPH1"
DEFAULT_MAX_SIZE = LOCAL.decompressed_bytes  # the most a payload may decompress to by default
# JSON grows several-fold into Python objects, so the header has a bound of its own; a graph of
# 10,000 nodes takes a few MB.
MAX_HEADER_SIZE = LOCAL.header_bytes
_LENGTH_BYTES = 8

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAGIC",
    "MAX_HEADER_SIZE",
    "SCHEMA_VERSION",
    "GraphModel",
    "SessionModel",
    "dumps",
    "dumps_session",
    "is_session_payload",
    "json_schema",
    "load",
    "loads",
    "loads_any",
    "loads_session",
    "save",
]


# Graph -> bytes -----------------------------------------------------------------------------


def dumps(graph: Graph, level: int = 3) -> bytes:
    """The graph as a zstd-compressed payload.

    Raises WireFormatError for a value with no wire form (a constant that is not a tensor,
    dtype, device, size or primitive; a dict key that is not a str).
    """
    tensors: dict[str, Any] = {}
    header = _header(lambda: {"schema_version": SCHEMA_VERSION, **_graph_header(graph, tensors)})
    return _pack(header, tensors, level)


def dumps_session(session: SessionGraph, level: int = 3) -> bytes:
    """A session's traces as one zstd-compressed payload (refused, WireFormatError, when a
    TraceRef does not name a saved node of an earlier trace)."""
    session.check_refs()
    tensors: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        traces = [
            {
                "graph": _graph_header(graph, tensors, f"t{index}.", sessions=True),
                "keep": sorted(keep),
            }
            for index, (graph, keep) in enumerate(zip(session.traces, session.keep, strict=True))
        ]
        return {"schema_version": SCHEMA_VERSION, "kind": "session", "traces": traces}

    return _pack(_header(build), tensors, level)


def _graph_header(
    graph: Graph, tensors: dict[str, Any], prefix: str = "", sessions: bool = False
) -> dict[str, Any]:
    constants = [
        _encode_constant(c, i, tensors, prefix, sessions) for i, c in enumerate(graph.constants)
    ]
    header: dict[str, Any] = {
        "nodes": [_encode_node(node) for node in graph.nodes],
        "constants": constants,
        "invokes": [_encode_invoke(invoke) for invoke in graph.invokes],
        "optional": sorted(graph.optional),
        "method": graph.method,
        "options": {
            _key(k, "options"): _encode_arg(v, "options") for k, v in graph.options.items()
        },
    }
    if graph.grad_mode is not None:  # only then: a payload with grad enabled reads as before
        if graph.grad_mode not in GRAD_MODES:
            raise WireFormatError(
                f"the graph's autograd mode {graph.grad_mode!r} is not one of {GRAD_MODES}"
            )
        header["grad_mode"] = graph.grad_mode
    return header


def _header(build: Any) -> bytes:
    try:
        text = json.dumps(build(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        header_bytes = text.encode("utf-8")
    except RecursionError as e:
        raise WireFormatError("a graph argument is nested too deeply to serialize") from e
    except UnicodeEncodeError as e:
        raise WireFormatError(f"a string in the graph is not valid Unicode: {e}") from e
    except ValueError as e:  # json refuses an int of more than 4300 digits
        raise WireFormatError(f"a value in the graph cannot be written as JSON: {e}") from e
    if len(header_bytes) > MAX_HEADER_SIZE:
        raise WireFormatError(
            f"the graph's header is {len(header_bytes)} bytes, more than the {MAX_HEADER_SIZE} a "
            "payload may hold; record fewer nodes (fewer steps, or several traces)"
        )
    return header_bytes


def _pack(header_bytes: bytes, tensors: dict[str, Any], level: int) -> bytes:
    import zstandard

    blob = _save_tensors(tensors)
    container = MAGIC + len(header_bytes).to_bytes(_LENGTH_BYTES, "little") + header_bytes + blob
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return compressor.compress(container)


def save(graph: Graph, path: str | Path) -> Path:
    """Write the graph's payload to a file (conventionally `*.nng`)."""
    path = Path(path)
    path.write_bytes(dumps(graph))
    return path


def _encode_node(node: Node) -> dict[str, Any]:
    where = f"node %{node.id}"
    try:
        op = Op(node.op).value
    except ValueError as e:
        raise WireFormatError(f"{where} has an unknown op {node.op!r}") from e
    encoded: dict[str, Any] = {"id": node.id, "op": op}
    if node.target:
        encoded["target"] = node.target
    if node.args:
        encoded["args"] = [_encode_arg(a, where) for a in node.args]
    if node.kwargs:
        encoded["kwargs"] = {_key(k, where): _encode_arg(v, where) for k, v in node.kwargs.items()}
    if node.invoke:
        encoded["invoke"] = node.invoke
    if node.step:
        encoded["step"] = node.step
    if node.loc is not None:
        loc = {"file": node.loc.file, "line": node.loc.line}
        if node.loc.text:
            loc["text"] = node.loc.text
        encoded["loc"] = loc
    if node.guard is not None:
        encoded["guard"] = node.guard.id
    return encoded


def _encode_invoke(invoke: Invoke) -> dict[str, Any]:
    where = f"invoke {invoke.index}"
    return {
        "index": invoke.index,
        "args": [_encode_arg(a, where) for a in invoke.args],
        "kwargs": {_key(k, where): _encode_arg(v, where) for k, v in invoke.kwargs.items()},
        "start": invoke.start,
        "stop": invoke.stop,
    }


def _key(key: Any, where: str) -> str:
    if type(key) is not str:
        raise WireFormatError(
            f"{where}: dictionary key {key!r} ({type(key).__name__}) is not a str; the wire "
            "format supports only str keys"
        )
    return key


def _encode_arg(value: Any, where: str = "an argument") -> dict[str, Any]:
    kind = type(value)
    if kind is Ref:
        return {"kind": "ref", "id": value.id}
    if kind is Const:
        return {"kind": "const", "index": value.index}
    if kind is slice:
        parts = (value.start, value.stop, value.step)
        start, stop, step = (_encode_arg(v, where) for v in parts)
        return {"kind": "slice", "start": start, "stop": stop, "step": step}
    if isinstance(value, (tuple, list)) and kind in (tuple, list):
        return {"kind": kind.__name__, "items": [_encode_arg(v, where) for v in value]}
    if kind is dict:
        items = {_key(k, where): _encode_arg(v, where) for k, v in value.items()}
        return {"kind": "dict", "items": items}
    primitive = _encode_primitive(value)
    if primitive is None:
        raise WireFormatError(
            f"{where}: an argument of type {kind.__module__}.{kind.__qualname__} has no wire "
            "form; arguments may be node values, constants, None, bool, int, float, complex, "
            "str, bytes, ..., slices, and tuples, lists and str-keyed dicts of those"
        )
    return primitive


def _encode_primitive(value: Any) -> dict[str, Any] | None:
    """The wire form of None, ..., bool, int, float, complex, str, bytes; None for others."""
    if value is None:
        return {"kind": "none"}
    if value is Ellipsis:
        return {"kind": "ellipsis"}
    if value is UNSET:
        return {"kind": "unset"}
    if isinstance(value, bool):
        return {"kind": "bool", "value": bool(value)}
    if isinstance(value, int):
        return {"kind": "int", "value": int(value)}
    if isinstance(value, float):
        return {"kind": "float", "value": _encode_number(value)}
    if isinstance(value, complex):
        real, imag = _encode_number(value.real), _encode_number(value.imag)
        return {"kind": "complex", "real": real, "imag": imag}
    if isinstance(value, str):
        return {"kind": "str", "value": str(value)}
    if isinstance(value, bytes):
        return {"kind": "bytes", "base64": base64.b64encode(value).decode("ascii")}
    return None


def _encode_number(value: float) -> float | str:
    if math.isfinite(value):
        return float(value)
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _encode_constant(
    value: Any, index: int, tensors: dict[str, Any], prefix: str = "", sessions: bool = False
) -> dict[str, Any]:
    import torch

    if type(value) is TraceRef:
        if not sessions:
            raise WireFormatError(
                f"constant $c{index} is a value of another trace of a session; send the whole "
                "session (ir.wire.dumps_session), not one of its traces"
            )
        return {"kind": "trace_ref", "trace": value.trace, "node": value.node}
    if isinstance(value, torch.Tensor):
        name = f"{prefix}c{index}"
        tensors[name] = value
        return {"kind": "tensor", "name": name, "requires_grad": bool(value.requires_grad)}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "name": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"kind": "device", "name": str(value)}
    if isinstance(value, torch.Size):
        return {"kind": "size", "dims": [int(d) for d in value]}
    primitive = _encode_primitive(value)
    if primitive is None:
        kind = type(value)
        raise WireFormatError(
            f"constant $c{index} is a {kind.__module__}.{kind.__qualname__}, which has no wire "
            "form; constants may be tensors, torch.dtype, torch.device, torch.Size, None, bool, "
            "int, float, complex, str and bytes (never pickled objects)"
        )
    return primitive


def _save_tensors(tensors: dict[str, Any]) -> bytes:
    """The tensors as one safetensors blob: detached, on the CPU, contiguous, unshared."""
    import torch
    from safetensors.torch import save as save_safetensors

    prepared: dict[str, Any] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if tensor.layout is not torch.strided or tensor.device.type == "meta":
            raise WireFormatError(
                f"constant ${name} is a {tensor.layout} tensor on {tensor.device}; only dense "
                "tensors with data can be sent"
            )
        tensor = tensor.detach().cpu().contiguous()
        if tensor.numel():
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:
                tensor = tensor.clone()  # safetensors refuses tensors that share memory
            storages.add(tensor.untyped_storage().data_ptr())
        prepared[name] = tensor
    try:
        return save_safetensors(prepared)
    except (ValueError, RuntimeError, TypeError) as e:
        raise WireFormatError(f"could not store the tensor constants: {e}") from e


# bytes -> Graph -----------------------------------------------------------------------------


def loads(data: bytes, max_size: int | None = None, limits: Limits = LOCAL) -> Graph:
    """The graph in a payload made by dumps(), within `limits` (ir.limits).

    The decompressed size is bounded by `max_size` (default: the limits'): a frame that does
    not declare its size, or declares more, is refused before anything is allocated; node,
    constant and invoke counts are checked before the header is validated. Raises
    WireFormatError for anything that is not a well-formed payload of this schema version.
    The graph is marked untrusted: it runs only what the registry (ir.registry) allows.
    """
    model, tensors = _read(data, max_size, limits)
    if isinstance(model, SessionModel):
        raise WireFormatError(
            "the payload is a session (several traces), not one graph: read it with "
            "ir.wire.loads_session, or ir.wire.loads_any for either kind"
        )
    return _Decoder(model, tensors, limits, version=model.schema_version).graph()


def loads_session(data: bytes, max_size: int | None = None, limits: Limits = LOCAL) -> SessionGraph:
    """The session in a payload made by dumps_session(), within `limits` per trace (and at
    most `limits.invokes` traces); its TraceRefs name saved nodes of earlier traces only."""
    session = loads_any(data, max_size, limits)
    if not isinstance(session, SessionGraph):
        raise WireFormatError("the payload is one graph, not a session: read it with ir.wire.loads")
    return session


def loads_any(
    data: bytes, max_size: int | None = None, limits: Limits = LOCAL
) -> Graph | SessionGraph:
    """The graph or the session in a payload (what a server reads: either kind)."""
    model, tensors = _read(data, max_size, limits)
    if isinstance(model, GraphModel):
        return _Decoder(model, tensors, limits, version=model.schema_version).graph()
    traces: list[Graph] = []
    keep: list[frozenset[int]] = []
    for index, trace in enumerate(model.traces):
        prefix = f"t{index}."
        own = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        decoder = _Decoder(trace.graph, own, limits, sessions=True, version=model.schema_version)
        traces.append(decoder.graph())
        keep.append(frozenset(trace.keep))
    named = {k for k in tensors if not any(k.startswith(f"t{i}.") for i in range(len(traces)))}
    if named:
        raise WireFormatError(f"the session's tensor data holds unknown tensors {sorted(named)}")
    session = SessionGraph(traces, keep)
    session.check_refs()
    return session


def is_session_payload(data: bytes, limits: Limits = LOCAL) -> bool:
    """Whether a payload holds a session (reads and validates its header)."""
    return isinstance(_read(data, None, limits)[0], SessionModel)


def _read(
    data: bytes, max_size: int | None, limits: Limits
) -> tuple[GraphModel | SessionModel, dict[str, Any]]:
    bound = limits.decompressed_bytes if max_size is None else max_size
    container = _decompress(data, bound)
    header, blob = _split(container, limits.header_bytes)
    model = _validate(header, limits)
    return model, _load_tensors(blob)


def load(path: str | Path, max_size: int | None = None, limits: Limits = LOCAL) -> Graph:
    """The graph in a file written by save()."""
    return loads(Path(path).read_bytes(), max_size, limits)


def _decompress(data: bytes, max_size: int) -> bytes:
    import zstandard

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"a payload is bytes, not {type(data).__name__}")
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise WireFormatError(f"not an nnsight_graph payload (no zstd frame header): {e}") from e
    if declared < 0:
        raise WireFormatError(
            "the payload's zstd frame does not declare its decompressed size; refusing to "
            "decompress it (payloads written by dumps() always declare it)"
        )
    if declared > max_size:
        raise WireFormatError(
            f"the payload would decompress to {declared} bytes, more than the limit of "
            f"{max_size}; pass a larger max_size if you trust it"
        )
    try:
        decompressor = zstandard.ZstdDecompressor()
        return decompressor.decompress(data, max_output_size=max_size, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise WireFormatError(f"the payload is corrupt or truncated: {e}") from e


def _split(container: bytes, max_header: int, magic: bytes = MAGIC) -> tuple[bytes, bytes]:
    """The JSON header and the safetensors blob of a decompressed container."""
    if container[: len(magic)] != magic:
        raise WireFormatError(
            f"not an nnsight_graph payload: it starts with {container[: len(magic)]!r}, "
            f"not {magic!r}"
        )
    start = len(magic) + _LENGTH_BYTES
    if len(container) < start:
        raise WireFormatError("the payload is truncated: it ends inside its header length")
    length = int.from_bytes(container[len(magic) : start], "little")
    if length > max_header:
        raise WireFormatError(
            f"the payload's header is {length} bytes, more than the limit of {max_header}"
        )
    if length > len(container) - start:
        raise WireFormatError(
            f"the payload is truncated: its header is {length} bytes, but only "
            f"{len(container) - start} follow"
        )
    return container[start : start + length], container[start + length :]


def _validate(header: bytes, limits: Limits) -> GraphModel | SessionModel:
    import pydantic
    import pydantic_core

    try:
        data = pydantic_core.from_json(header)
    except ValueError as e:
        raise WireFormatError(f"the payload's header is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise WireFormatError("the payload's header is not a JSON object")
    version = data.get("schema_version")
    if type(version) is not int:
        raise WireFormatError("the payload's header has no integer schema_version")
    if version not in READABLE_VERSIONS:
        newer = "; upgrade nnsight_graph to read it" if version > SCHEMA_VERSION else ""
        raise WireFormatError(
            f"the payload has schema version {version}, but this nnsight_graph reads versions "
            f"{sorted(READABLE_VERSIONS)}{newer}"
        )
    session = data.get("kind") == "session"
    if session and version < 2:
        raise WireFormatError(
            f"the payload is a session of schema version {version}; sessions start at version 2 "
            "(write it again with this nnsight_graph)"
        )
    graphs: list[Any] = [data]
    if session:
        traces = data.get("traces")
        if isinstance(traces, list):
            if len(traces) > limits.invokes:
                raise WireFormatError(
                    f"the session has {len(traces)} traces, more than the limit of {limits.invokes}"
                )
            graphs = [t.get("graph") if isinstance(t, dict) else None for t in traces]
    for graph in graphs:
        if not isinstance(graph, dict):
            continue
        for field, limit in (
            ("nodes", limits.nodes),
            ("constants", limits.constants),
            ("invokes", limits.invokes),
        ):
            items = graph.get(field)
            if isinstance(items, list) and len(items) > limit:
                raise WireFormatError(
                    f"the payload has {len(items)} {field}, more than the limit of {limit}"
                )
    try:
        if session:
            return SessionModel.model_validate(data)
        return GraphModel.model_validate(data)
    except pydantic.ValidationError as e:
        raise WireFormatError(f"the payload does not match the graph schema: {e}") from e
    except RecursionError as e:
        raise WireFormatError("the payload's header is nested too deeply") from e


def _load_tensors(blob: bytes) -> dict[str, Any]:
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(blob)
    # The blob is untrusted input to a foreign parser: whatever it raises means "corrupt".
    except Exception as e:
        raise WireFormatError(f"the payload's tensor data is corrupt: {e}") from e


LEGACY_SITES: dict[tuple[Op, str], tuple[Op, str]] = {
    (Op.READ, "result"): (Op.RESULT, ""),
    (Op.READ, "grad"): (Op.READ_GRAD, ""),
    (Op.WRITE, "grad"): (Op.WRITE_GRAD, ""),
}
"""(op, target) of a schema version 1 or 2 node -> the op it is now, with its target."""

LEGACY_SELECT: tuple[Op, str] = (Op.CALL, "nnsight_graph.ir.functions.select")
"""How schema version 3 and older wrote the `if` merge; read as a SELECT node."""


class _Decoder:
    """Rebuilds a Graph from a validated model, checking what the schema alone cannot."""

    def __init__(
        self,
        model: GraphModel,
        tensors: dict[str, Any],
        limits: Limits,
        sessions: bool = False,
        version: int = SCHEMA_VERSION,
    ) -> None:
        self.sessions = sessions  # a trace of a session: TraceRef constants are allowed
        self.legacy = version < 3  # result and gradients were read/write targets then
        self.before_select = version < 4  # the `if` merge was a CALL then
        self.model = model
        self.tensors = tensors
        self.limits = limits
        self.constant_count = len(model.constants)
        self.ids: set[int] = set()

    def graph(self) -> Graph:
        model = self.model
        constants = self.constants()
        nodes = [self.node(node) for node in model.nodes]
        invokes = [self.invoke(invoke) for invoke in model.invokes]
        unknown = set(model.optional) - self.ids
        if unknown:
            raise WireFormatError(f"optional names nodes that do not exist: {sorted(unknown)}")
        options = {k: self.arg(v, "options", refs=False) for k, v in model.options.items()}
        optional = frozenset(model.optional)
        return Graph(
            nodes,
            constants,
            invokes,
            optional,
            model.method,
            options,
            trusted=False,
            grad_mode=model.grad_mode,
        )

    def node(self, model: NodeModel) -> Node:
        where = f"node %{model.id}"
        if model.id in self.ids:
            raise WireFormatError(f"{where} appears twice")
        if model.id >= self.limits.nodes:  # ids index shared tables: bound them
            raise WireFormatError(
                f"{where}: node ids must stay below {self.limits.nodes}, the limit of nodes "
                "per graph"
            )
        if len(model.target) > self.limits.target_chars:
            raise WireFormatError(
                f"{where}: its target is {len(model.target)} characters, more than the limit "
                f"of {self.limits.target_chars}"
            )
        args = tuple(self.arg(a, where) for a in model.args)
        kwargs = {k: self.arg(v, where) for k, v in model.kwargs.items()}
        guard = None if model.guard is None else self.ref(model.guard, where)
        loc = (
            None if model.loc is None else SourceLoc(model.loc.file, model.loc.line, model.loc.text)
        )
        self.ids.add(model.id)
        if not kwargs:
            kwargs = Node._field_defaults["kwargs"]  # the shared empty default, as recorded
        op, target = model.op, model.target
        if self.legacy:
            op, target = LEGACY_SITES.get((op, target), (op, target))
        if self.before_select:
            if (op, target) == LEGACY_SELECT:
                op, target = Op.SELECT, ""
            elif op is Op.SELECT:
                raise WireFormatError(
                    f"{where} is a select node, which schema version 4 added; the payload says "
                    "it is older (write it again with this nnsight_graph)"
                )
        return Node(model.id, op, target, args, kwargs, model.invoke, model.step, loc, guard)

    def invoke(self, model: InvokeModel) -> Invoke:
        where = f"invoke {model.index}"
        if model.stop is not None and model.stop < model.start:
            raise WireFormatError(
                f"{where} owns rows {model.start} to {model.stop}: its stop is before its start"
            )
        args = tuple(self.arg(a, where, refs=False) for a in model.args)
        kwargs = {k: self.arg(v, where, refs=False) for k, v in model.kwargs.items()}
        if not kwargs:
            kwargs = Invoke._field_defaults["kwargs"]
        return Invoke(model.index, args, kwargs, model.start, model.stop)

    def ref(self, id: int, where: str) -> Ref:
        if id not in self.ids:
            raise WireFormatError(f"{where} refers to %{id}, which is not an earlier node")
        return Ref(id)

    def arg(self, model: Any, where: str, refs: bool = True) -> Any:
        match model:
            case RefArg():
                if not refs:
                    raise WireFormatError(f"{where} holds a node reference %{model.id}")
                return self.ref(model.id, where)
            case ConstArg():
                if model.index >= self.constant_count:
                    raise WireFormatError(
                        f"{where} refers to constant $c{model.index}, but the graph has "
                        f"{self.constant_count}"
                    )
                return Const(model.index)
            case SliceArg():
                parts = (model.start, model.stop, model.step)
                return slice(*(self.arg(part, where, refs) for part in parts))
            case TupleArg():
                return tuple(self.arg(item, where, refs) for item in model.items)
            case ListArg():
                return [self.arg(item, where, refs) for item in model.items]
            case DictArg():
                return {k: self.arg(v, where, refs) for k, v in model.items.items()}
            case StrArg() | BytesArg():
                return self.text(model, where)
            case _:
                return _decode_primitive(model)

    def text(self, model: StrArg | BytesArg, where: str) -> Any:
        """A str or bytes value within the size limit (bytes counted by their base64 form)."""
        size = len(model.value) if isinstance(model, StrArg) else len(model.base64)
        if size > self.limits.string_chars:
            raise WireFormatError(
                f"{where} holds a {size}-character value, more than the limit of "
                f"{self.limits.string_chars}"
            )
        return _decode_primitive(model)

    def constants(self) -> list[Any]:
        names = {c.name for c in self.model.constants if isinstance(c, TensorConstant)}
        tensor_count = sum(isinstance(c, TensorConstant) for c in self.model.constants)
        if len(names) != tensor_count or names != set(self.tensors):
            raise WireFormatError(
                f"the payload's tensor constants {sorted(names)} do not match the tensors in "
                f"its data {sorted(self.tensors)}"
            )
        return [self.constant(c, i) for i, c in enumerate(self.model.constants)]

    def constant(self, model: Any, index: int) -> Any:
        import torch

        match model:
            case TensorConstant():
                tensor = self.tensors[model.name]
                if model.requires_grad:
                    if not (tensor.is_floating_point() or tensor.is_complex()):
                        raise WireFormatError(
                            f"constant $c{index}: {tensor.dtype} cannot need grad"
                        )
                    tensor.requires_grad_(True)
                return tensor
            case DtypeConstant():
                dtype = _dtypes().get(model.name)
                if dtype is None:
                    raise WireFormatError(f"constant $c{index}: unknown dtype {model.name!r}")
                return dtype
            case DeviceConstant():
                if not _DEVICE.fullmatch(model.name):
                    raise WireFormatError(f"constant $c{index}: bad device {model.name!r}")
                try:
                    return torch.device(model.name)
                except RuntimeError as e:
                    raise WireFormatError(f"constant $c{index}: bad device {model.name!r}") from e
            case SizeConstant():
                return torch.Size(model.dims)
            case TraceRefConstant():
                if not self.sessions:
                    raise WireFormatError(
                        f"constant $c{index} refers to another trace; only a session payload "
                        "may hold such references"
                    )
                return TraceRef(model.trace, model.node)
            case StrArg() | BytesArg():
                return self.text(model, f"constant $c{index}")
            case _:
                return _decode_primitive(model)


_DEVICE = re.compile(r"[a-z_]{1,32}(:[0-9]{1,6})?")


def _decode_primitive(model: Any) -> Any:
    match model:
        case NoneArg():
            return None
        case EllipsisArg():
            return Ellipsis
        case UnsetArg():
            return UNSET
        case BoolArg() | IntArg() | StrArg():
            return model.value
        case FloatArg():
            return _decode_number(model.value)
        case ComplexArg():
            return complex(_decode_number(model.real), _decode_number(model.imag))
        case BytesArg():
            try:
                return base64.b64decode(model.base64, validate=True)
            except ValueError as e:
                raise WireFormatError(f"bad base64 bytes in the payload: {e}") from e
    raise WireFormatError(f"unexpected value in the payload: {model!r}")  # pragma: no cover


def _decode_number(value: float | int | str) -> float:
    return float(value)  # "nan", "inf", "-inf" and numbers; the schema allows nothing else


_DTYPES: dict[str, Any] = {}


def _dtypes() -> dict[str, Any]:
    """Every torch dtype by its short name ("float32"), built from torch's own table."""
    if not _DTYPES:
        import torch

        for value in vars(torch).values():
            if isinstance(value, torch.dtype):
                _DTYPES[str(value).removeprefix("torch.")] = value
    return _DTYPES
