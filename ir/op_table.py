"""The op table: for each Op, what its target names, how many arguments it takes and of what
kind, whether it has effects, waits for a hook or makes a value, how it prints and is drawn,
and the check `verify` runs on its payload. Everything keyed by op reads this table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from .node import Const, Ref
from .ops import Op
from .sites import SITED_OPS

if TYPE_CHECKING:
    from .node import Node

Check = Callable[["Node"], str]
"""Why a node's payload is not what the executor reads ("" when it is)."""


class OpSpec(NamedTuple):
    """One row of the op table."""

    target: str  # what the target names: "site", "function", "method", "attribute", "module",
    # "name" (a label the executor ignores or keys by: "print", "stop", a barrier's name),
    # "none" (nothing: RESULT, READ_GRAD, WRITE_GRAD)
    arity: tuple[int, int | None]  # (fewest, most) positional arguments; None: no upper bound
    first: str  # what args[0] must be: "ref" (a node's value), "count" (an int >= 1), "any"
    keywords: bool  # whether it takes keyword arguments
    effectful: bool  # it must run even when nothing uses its value
    hooked: bool  # it runs at a hook site and waits for it
    valued: bool  # it has a value that other nodes may use
    style: Mapping[str, str]  # how `ir.visualize` draws it (Graphviz node attributes)
    check: Check | None = None  # what else verify checks on its payload (for a site: all)
    needs: str = ""  # the message when the arity or args[0] is wrong ("" : a generic one)


_BOX: Final = {"shape": "box", "style": "rounded,filled"}
_READ: Final = {"shape": "invhouse", "style": "filled"}  # from the model: a house pointing in
_WRITE: Final = {"shape": "house", "style": "filled,bold", "penwidth": "2.5"}  # into it
_NOTE: Final = {"shape": "note", "style": "filled"}


# payload checks --------------------------------------------------------------------------

_SITE_KINDS: Final = {
    Op.READ: frozenset({"input", "inputs", "output"}),
    Op.WRITE: frozenset({"input", "inputs", "output"}),
    Op.SKIP: frozenset({"skip"}),
}


def _site_problem(node: Node) -> str:
    """Why the executor could not bind this hooked node to a hook site ("" when it can)."""
    target = node.target
    if target in _OLD_TARGETS and node.op is not Op.SKIP:  # schema version 2's sites
        return (
            f"has target {target!r}: {_OLD_TARGETS[target]} now (ir.wire reads a payload of "
            "schema version 2 or older as such)"
        )
    site = node.site
    if site is None:  # built from a tuple without its site: only Node() and the recorder make one
        return f"has target {target!r} but no hook site (make nodes with Node(...))"
    kinds = _SITE_KINDS[node.op]
    if site.kind not in kinds:
        allowed = ", ".join(sorted(kinds))
        return f"has target {target!r}, which does not end in one of: {allowed}"
    if site.empty_part:
        return f"has target {target!r}, whose module path has an empty part"
    if node.op is Op.READ:
        return f"has {len(node.args)} argument(s), but a module read takes none" * bool(node.args)
    if not node.args:
        return "has no value to put at its hook site"
    if len(node.args) > 1:
        return f"has {len(node.args)} arguments, but takes one: the value to put at the site"
    return ""


_OLD_TARGETS: Final = {
    "grad": "a gradient is a read_grad or write_grad node",
    "result": "the model's result is a result node",
}


def _grad_problem(node: Node) -> str:
    if not all(type(a) is Ref for a in node.args[:2]):
        return f"is a gradient {node.op.value[:-5]} but its arguments are not (value, backward" + (
            ", new value)" if node.op is Op.WRITE_GRAD else ")"
        )
    return ""


_PRINT_KEYWORDS: Final = frozenset({"sep", "end", "flush"})


def _log_problem(node: Node) -> str:
    unknown = sorted(set(node.kwargs) - _PRINT_KEYWORDS)
    if unknown:
        return f"passes print() the keywords {unknown}; a log node takes only sep, end, flush"
    return ""


_CACHE_KINDS: Final = frozenset({"output", "input"})


def _cache_problem(node: Node) -> str:
    kwargs = node.kwargs
    paths, kinds = kwargs.get("paths"), kwargs.get("kinds")
    if not _strings(paths) or not _strings(kinds) or not set(kinds or ()) <= _CACHE_KINDS:
        return (
            "must have no arguments, paths= a list of module paths and kinds= a list of "
            '"output" and "input"'
        )
    for key in ("device", "dtype"):
        if not (kwargs.get(key) is None or type(kwargs[key]) is str):
            return f"has {key}={kwargs[key]!r}; a cache names its {key} by a str, or None"
    return ""


def _local_problem(node: Node) -> str:
    kwargs = node.kwargs
    inputs, outputs = kwargs.get("inputs") or (), kwargs.get("outputs")
    if (
        not {"block", "inputs", "outputs"} <= set(kwargs) <= _LOCAL_KEYWORDS
        or type(kwargs["block"]) is not int
        or not _ints(inputs)
        or not _ints(outputs)
        or len(inputs) != len(node.args)
        or not all(type(a) is Ref and a.id == i for a, i in zip(node.args, inputs, strict=True))
    ):
        return (
            "must have block= an int, inputs= the ids of its arguments (each a node's value) "
            "and outputs= a list of node ids"
        )
    if "declared" in kwargs:
        return _declared_problem(kwargs["declared"], kwargs["outputs"])
    return ""


_LOCAL_KEYWORDS: Final = frozenset({"block", "inputs", "outputs", "declared"})
# what a LOCAL node's declaration may name (backends.local_blocks.mismatch checks values
# against it): torch's non-floating dtypes by name, "floating" for any floating one
DECLARED_DTYPES: Final = frozenset(
    {"floating", "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
     "int64", "complex32", "complex64", "complex128"}
)
DECLARED_TYPES: Final = frozenset({"bool", "int", "float", "complex", "str", "NoneType"})
_MAX_DIMS: Final = 64  # torch's own limit on a tensor's dimensions
_MAX_SIZE: Final = 2**63 - 1


def _declared_problem(declared: object, outputs: Sequence[int]) -> str:
    """Why a LOCAL node's declared= is not one entry per output id, in order, each a
    tensor (shape, dtype), a builtin value (its type) or unknown ("" when it is)."""
    if not isinstance(declared, list) or len(declared) != len(outputs):
        return "has declared= that is not a list of one entry per id in outputs="
    for entry, id in zip(declared, outputs, strict=True):
        if not _declared_entry(entry, id):
            return (
                f"has declared= entry {entry!r} for node %{id}, which is not "
                '{"id": ID, "kind": "tensor", "shape": [SIZES], "dtype": NAME}, '
                '{"id": ID, "kind": "value", "type": NAME} or {"id": ID, "kind": "unknown"}'
            )
    return ""


def _declared_entry(entry: object, id: int) -> bool:
    if not isinstance(entry, dict) or entry.get("id") != id or type(entry["id"]) is not int:
        return False
    kind = entry.get("kind")
    if kind == "unknown":
        return set(entry) == {"id", "kind"}
    if kind == "value":
        name = entry.get("type")
        return (
            set(entry) == {"id", "kind", "type"} and type(name) is str and name in DECLARED_TYPES
        )
    shape = entry.get("shape")
    return (
        kind == "tensor"
        and set(entry) == {"id", "kind", "shape", "dtype"}
        and isinstance(shape, list)
        and len(shape) <= _MAX_DIMS
        and all(type(size) is int and 0 <= size <= _MAX_SIZE for size in shape)
        and type(entry["dtype"]) is str
        and entry["dtype"] in DECLARED_DTYPES
    )


def _ints(value: object) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is int for v in value)


def _strings(value: object) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is str for v in value)


# the table -------------------------------------------------------------------------------

_BACKWARD_NEEDS: Final = (
    "has no loss: its first argument must be the node whose .backward() it runs"
)

OPS: Final[Mapping[Op, OpSpec]] = {
    # op:         target    arity  args[0] keywords effect hooked valued style check needs
    Op.READ: OpSpec("site", (0, 0), "any", False, False, True, True, _READ, _site_problem),
    Op.WRITE: OpSpec("site", (1, 1), "any", False, True, True, False, _WRITE, _site_problem),
    Op.RESULT: OpSpec("none", (0, 0), "any", False, False, True, True, _READ),
    Op.READ_GRAD: OpSpec(
        "none", (2, 2), "any", False, False, True, True, _READ, _grad_problem,
        "is a gradient read but its arguments are not (value, backward)",
    ),
    Op.WRITE_GRAD: OpSpec(
        "none", (3, 3), "any", False, True, True, False, _WRITE, _grad_problem,
        "is a gradient write but its arguments are not (value, backward, new value)",
    ),
    Op.CALL: OpSpec("function", (0, None), "any", True, False, False, True, _BOX),
    Op.METHOD: OpSpec(
        "method", (1, None), "any", True, False, False, True, _BOX, None,
        "calls a method on nothing: args[0] must be the value it is on",
    ),
    Op.GETATTR: OpSpec("attribute", (1, 1), "any", False, False, False, True, _BOX),
    Op.GETITEM: OpSpec("name", (2, 2), "any", False, False, False, True, _BOX),
    Op.SETITEM: OpSpec("name", (3, 3), "any", False, True, False, False, _WRITE),
    Op.SAVE: OpSpec(
        "name", (1, 1), "ref", False, True, False, False, _NOTE, None,
        "saves no node: its first argument must be a Ref",
    ),
    Op.LOG: OpSpec(
        "name", (0, None), "any", True, True, False, False,
        {"shape": "note", "style": "filled,dashed"}, _log_problem,
    ),
    Op.BACKWARD: OpSpec(
        "name", (1, None), "ref", True, True, False, False, _BOX, None, _BACKWARD_NEEDS
    ),
    Op.SKIP: OpSpec("site", (1, 1), "any", False, True, True, False, _WRITE, _site_problem),
    Op.STOP: OpSpec("name", (0, 0), "any", False, True, False, False, _BOX),
    Op.BARRIER: OpSpec(
        "name", (1, 1), "count", False, True, False, False, _BOX, None,
        "must have one argument: how many invokes (at least 1) it waits for",
    ),
    Op.CACHE: OpSpec(
        "name", (0, 0), "any", True, True, False, False, _BOX, _cache_problem,
        'must have no arguments, paths= a list of module paths and kinds= a list of '
        '"output" and "input"',
    ),
    # a module may keep state (running statistics) or change its input
    Op.CALL_MODULE: OpSpec("module", (0, None), "any", True, True, False, True, _BOX),
    # the `if` merge: a variable after `if proxy:` (nnsight_graph.conditions)
    Op.SELECT: OpSpec(
        "none", (3, 3), "any", False, False, False, True,
        {"shape": "diamond", "style": "filled"}, None,
        "must have three arguments: the condition, the value if it holds, the value if not",
    ),
    # the client runs its block (prints, plots) even when nothing uses its value
    Op.LOCAL: OpSpec("name", (0, None), "any", True, True, False, True, _BOX, _local_problem),
}  # fmt: skip
"""Op -> its row. A new op lands here with everything it needs, or the import fails."""

_missing = set(Op) - set(OPS)
if _missing:  # a new Op without a row would slip past verify and the executors' tables
    raise AssertionError(f"ops without a row in the op table: {sorted(map(str, _missing))}")

EFFECTFUL: Final = frozenset(op for op, spec in OPS.items() if spec.effectful)
"""Ops that must run even when nothing uses their value."""

HOOKED: Final = frozenset(op for op, spec in OPS.items() if spec.hooked)
"""Ops that run at a hook site and wait for it."""

VALUED: Final = frozenset(op for op, spec in OPS.items() if spec.valued)
"""Ops whose node has a value that other nodes may use; a BACKWARD is named only by the
gradient sites of its backward pass (args[1] of a READ_GRAD or WRITE_GRAD)."""

SITED: Final = frozenset(op for op, spec in OPS.items() if spec.target == "site")
"""Ops whose target is a module's hook site (READ, WRITE, SKIP): their nodes carry `site`."""
if SITED != SITED_OPS:  # Node() and the recorder make a site for exactly these ops
    raise AssertionError(f"ir.sites.SITED_OPS is not the op table's sited ops: {sorted(SITED)}")

GRADIENTS: Final = frozenset({Op.READ_GRAD, Op.WRITE_GRAD})
"""Ops at a gradient site: args[0] is the value, args[1] the BACKWARD node of its pass."""

READS: Final = HOOKED - EFFECTFUL
"""Hooked ops that read their site's value (the others replace it)."""


def payload_problem(node: Node) -> str:
    """Why the node's arguments do not have the shape its executor case reads ("" when they
    do): a hook site's own check, else the arity, args[0]'s kind, keywords, the op's check."""
    spec = OPS[node.op]
    if spec.target == "site":
        return spec.check(node) if spec.check is not None else ""
    fewest, most = spec.arity
    count = len(node.args)
    if count < fewest or (most is not None and count > most):
        if spec.needs:
            return spec.needs
        takes = (
            str(fewest) if fewest == most
            else f"at least {fewest}" if most is None
            else f"{fewest} to {most}"
        )  # fmt: skip
        return f"has {count} argument(s), but a {node.op.value} node takes {takes}"
    if count and spec.first != "any":
        first = node.args[0]
        if (spec.first == "ref" and type(first) is not Ref) or (
            spec.first == "count" and (type(first) is not int or first < 1)
        ):
            return spec.needs or f"cannot take {_kind(first)} as its first argument"
    if node.kwargs and not spec.keywords:
        return f"has keyword arguments, but a {node.op.value} node takes none"
    return spec.check(node) if spec.check is not None else ""


def _kind(value: object) -> str:
    return "a constant" if type(value) is Const else f"a {type(value).__name__}"


def names_its_backward(node: Node, ref: Ref) -> bool:
    """Whether `node` is a gradient site of the backward pass `ref` (its only allowed use)."""
    return node.op in GRADIENTS and len(node.args) > 1 and node.args[1] == ref


__all__ = [
    "DECLARED_DTYPES",
    "DECLARED_TYPES",
    "EFFECTFUL",
    "GRADIENTS",
    "HOOKED",
    "READS",
    "SITED",
    "OPS",
    "VALUED",
    "OpSpec",
    "names_its_backward",
    "payload_problem",
]
