"""The schema of a payload's JSON header: the pydantic models of what a serialized Graph is.

Each argument and constant is one of a closed set of kinds, named by its "kind" field. ir.wire
writes a Graph as a header that matches these models and reads one back only through them; it
refuses a payload whose schema_version is not SCHEMA_VERSION.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic.plugin._loader  # noqa: F401  (imported by the deferred build: not on a run)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .node import MAX_SOURCE_TEXT
from .ops import Op

SCHEMA_VERSION = 4
"""2 added session payloads (SessionModel) and the trace_ref constant, then a graph's optional
grad_mode (written only when it is set). 3 gave the model's result and gradients ops of their
own: `result`, `read_grad`, `write_grad`, where 1 and 2 wrote a `read` or `write` node with
target "result" or "grad"; payloads of versions 1 and 2 are still read, those nodes mapped to
the new ops (`ir.wire.LEGACY_SITES`). 4 gave the `if` merge an op of its own, `select` (args:
condition, value if it holds, value if not), where 3 wrote a `call` of
"nnsight_graph.ir.functions.select"; a payload of version 3 or older is read with that call
as a `select` (`ir.wire.LEGACY_SELECT`). Version 4 also carries the optional keyword of `local`
nodes added with it."""
READABLE_VERSIONS = frozenset({1, 2, 3, 4})

__all__ = [
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "SessionModel",
    "SessionTraceModel",
    "TraceRefConstant",
    "Arg",
    "BoolArg",
    "BytesArg",
    "ComplexArg",
    "ConstArg",
    "Constant",
    "DeviceConstant",
    "DictArg",
    "DtypeConstant",
    "EllipsisArg",
    "FloatArg",
    "GraphModel",
    "IntArg",
    "InvokeModel",
    "ListArg",
    "NodeModel",
    "NoneArg",
    "RefArg",
    "SizeConstant",
    "SliceArg",
    "SourceLocModel",
    "StrArg",
    "TensorConstant",
    "TupleArg",
    "UnsetArg",
    "build_validators",
    "json_schema",
    "session_json_schema",
]


class _Model(BaseModel):
    # defer_build: the validators are built on first use (the first payload written or read),
    # not at import, which they would slow by most of a tenth of a second
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


Count = Annotated[StrictInt, Field(ge=0)]
Number = StrictFloat | StrictInt | Literal["nan", "inf", "-inf"]  # JSON has no NaN or infinity


class RefArg(_Model):
    """The value of an earlier node."""

    kind: Literal["ref"]
    id: Count


class ConstArg(_Model):
    """An entry of the graph's constant table."""

    kind: Literal["const"]
    index: Count


class NoneArg(_Model):
    kind: Literal["none"]


class EllipsisArg(_Model):
    kind: Literal["ellipsis"]


class UnsetArg(_Model):
    kind: Literal["unset"]  # a variable not assigned on one path through `if proxy:`


class BoolArg(_Model):
    kind: Literal["bool"]
    value: StrictBool


class IntArg(_Model):
    kind: Literal["int"]
    value: StrictInt


class FloatArg(_Model):
    kind: Literal["float"]
    value: Number


class ComplexArg(_Model):
    kind: Literal["complex"]
    real: Number
    imag: Number


class StrArg(_Model):
    kind: Literal["str"]
    value: StrictStr


class BytesArg(_Model):
    """Bytes, base64-encoded."""

    kind: Literal["bytes"]
    base64: StrictStr


class SliceArg(_Model):
    kind: Literal["slice"]
    start: Arg
    stop: Arg
    step: Arg


class TupleArg(_Model):
    kind: Literal["tuple"]
    items: list[Arg]


class ListArg(_Model):
    kind: Literal["list"]
    items: list[Arg]


class DictArg(_Model):
    kind: Literal["dict"]
    items: dict[str, Arg]


Primitive = (
    NoneArg | EllipsisArg | UnsetArg | BoolArg | IntArg | FloatArg | ComplexArg | StrArg | BytesArg
)
Arg = Annotated[
    RefArg | ConstArg | Primitive | SliceArg | TupleArg | ListArg | DictArg,
    Field(discriminator="kind"),
]


class TensorConstant(_Model):
    """A tensor, stored in the payload's safetensors blob under `name`."""

    kind: Literal["tensor"]
    name: StrictStr
    requires_grad: StrictBool = False


class DtypeConstant(_Model):
    """A torch.dtype by name: "float32"."""

    kind: Literal["dtype"]
    name: StrictStr


class DeviceConstant(_Model):
    """A torch.device as its string: "cpu", "cuda:0"."""

    kind: Literal["device"]
    name: StrictStr


class SizeConstant(_Model):
    """A torch.Size."""

    kind: Literal["size"]
    dims: list[Count]


class TraceRefConstant(_Model):
    """The value of node `node` of an earlier trace `trace` of the same session (session
    payloads only)."""

    kind: Literal["trace_ref"]
    trace: Count
    node: Count


Constant = Annotated[
    TensorConstant | DtypeConstant | DeviceConstant | SizeConstant | TraceRefConstant | Primitive,
    Field(discriminator="kind"),
]


class SourceLocModel(_Model):
    """Where the user wrote a node: file, line and that line's text (quoted by errors, so no
    error ever reads a file a graph names)."""

    file: StrictStr
    line: StrictInt
    text: Annotated[StrictStr, Field(max_length=MAX_SOURCE_TEXT)] = ""


class NodeModel(_Model):
    """One Node. `op` is the opcode's wire name; `guard` the id of the guarding node."""

    id: Count
    op: Op
    target: StrictStr = ""
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}
    invoke: Annotated[StrictInt, Field(ge=-1)] = 0
    step: Count = 0
    loc: SourceLocModel | None = None
    guard: Count | None = None


class InvokeModel(_Model):
    index: Count
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}
    start: Count = 0
    stop: Count | None = None


class GraphModel(_Model):
    """A whole Graph: what the JSON header of a payload holds."""

    schema_version: StrictInt = SCHEMA_VERSION
    nodes: list[NodeModel] = []
    constants: list[Constant] = []
    invokes: list[InvokeModel] = []
    optional: list[Count] = []
    method: StrictStr = "trace"
    options: dict[str, Arg] = {}
    # torch.no_grad() or torch.inference_mode() around the sender's trace; absent: grad enabled
    grad_mode: Literal["no_grad", "inference"] | None = None


class SessionTraceModel(_Model):
    """One trace of a session: its graph, and the saved nodes kept only for later traces
    (a server does not send those back)."""

    graph: GraphModel
    keep: list[Count] = []


class SessionModel(_Model):
    """A whole session: its traces in the order they run (what a session payload holds)."""

    schema_version: StrictInt = SCHEMA_VERSION
    kind: Literal["session"]
    traces: list[SessionTraceModel]




def build_validators() -> None:
    """Build the validators now rather than at the first payload (a server calls this at
    start, so that no job pays for it)."""
    for model in (GraphModel, SessionModel):
        model.model_rebuild()


def json_schema() -> dict[str, Any]:
    """The JSON schema of a graph payload's header (pydantic's schema of GraphModel)."""
    return GraphModel.model_json_schema()


def session_json_schema() -> dict[str, Any]:
    """The JSON schema of a session payload's header (pydantic's schema of SessionModel)."""
    return SessionModel.model_json_schema()
