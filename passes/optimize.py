"""Optimization passes: make the graph cheaper to run without changing its results."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ..ir import GRADIENTS, HOOKED, Const, Graph, Node, Op, Ref, has_effect, ref, refs
from .purity import is_pure_call, is_random, may_change_values

# dead nodes -------------------------------------------------------------------------------------


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes whose value is never used and that have no effect.

    Besides `ir.has_effect`, two kinds of unused nodes are kept: random calls (each advances
    the random number generator, so dropping one would change every random value drawn after
    it under a fixed seed), and nodes that may change a value in place without `ir` knowing
    (`values.append(x)` on a traced list, a call of a function outside torch and operator).
    """
    live: set[int] = set()
    for node in reversed(graph.nodes):
        if node.id in live or has_effect(node) or is_random(node) or may_change_values(node):
            live.add(node.id)
            live.update(ref.id for ref in node.inputs())
    if len(live) == len(graph.nodes):
        return graph
    return graph.keep(live)


# rewriting references ---------------------------------------------------------------------------


def replace_refs(value: Any, replacements: Mapping[int, Any]) -> Any:
    """`value` with each Ref in `replacements` replaced, however deeply nested; the same
    object when nothing changed."""
    kind = type(value)
    if kind is Ref:
        return replacements.get(value.id, value)
    if kind is tuple or kind is list:
        items = [replace_refs(item, replacements) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return kind(items)
    if kind is dict:
        changed = {key: replace_refs(item, replacements) for key, item in value.items()}
        if all(changed[key] is item for key, item in value.items()):
            return value
        return changed
    if kind is slice:
        parts = (value.start, value.stop, value.step)
        new_parts = [replace_refs(part, replacements) for part in parts]
        if all(new is old for new, old in zip(new_parts, parts, strict=True)):
            return value
        return slice(*new_parts)
    return value


def _rewrite(node: Node, replacements: Mapping[int, Any], args_from: int = 0) -> Node:
    """The node with its inputs replaced (arguments before `args_from` and a guard that
    would not stay a Ref are left as they are)."""
    if not replacements:
        return node
    tail = node.args[args_from:] if args_from else node.args
    new_tail = replace_refs(tail, replacements)
    kwargs = replace_refs(node.kwargs, replacements) if node.kwargs else node.kwargs
    guard = node.guard
    if guard is not None and type(replacements.get(guard.id)) is Ref:
        guard = replacements[guard.id]
    if new_tail is tail and kwargs is node.kwargs and guard is node.guard:
        return node
    args = node.args[:args_from] + new_tail if args_from else new_tail
    return node._replace(args=args, kwargs=kwargs, guard=guard)


# common subexpressions --------------------------------------------------------------------------


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Merge repeated identical pure nodes: later uses point to the first, the repeat is dropped.

    Two nodes are merged only when nothing between them could make their values differ:

    - no node in between may change a value (`purity.may_change_values`: writes, setitems,
      in-place methods, skips, barriers, backward passes, calls of unknown functions);
    - no node of the same invoke in between waits (a read of another hook site, during which
      the model runs on; a value from another invoke, during which the others take turns);
    - neither node feeds anything that changes a value or hands it to the model (`a.clone()`
      twice, then one clone edited in place, must stay two tensors);
    - neither is random, effectful, a save, a log, or a read of a gradient;
    - a saved node keeps its id (saved values are bound by it), so it is never the one dropped.
    """
    shared = _shares_its_value(graph)
    saved = _saved_ids(graph)
    invoke_of = {node.id: node.invoke for node in graph.nodes}
    several_invokes = len(set(invoke_of.values())) > 1
    replacements: dict[int, Ref] = {}
    first_of: dict[tuple[Any, ...], int] = {}
    changes = 0  # nodes seen so far that may change values
    segments: dict[int, int] = {}  # per invoke: nodes seen so far that wait
    nodes: list[Node] = []
    for node in graph.nodes:
        node = _rewrite(node, replacements)
        if may_change_values(node):
            changes += 1
            nodes.append(node)
            continue
        mergeable = node.id not in shared and _can_merge(node)
        key = _key(node, node.id in graph.optional) if mergeable else None
        if key is not None:
            first = first_of.get((*key, changes, segments.get(node.invoke, 0)))
            if first is not None and node.id not in saved:
                replacements[node.id] = ref(first)
                continue
        if node.op in HOOKED or (
            several_invokes
            and any(invoke_of.get(id, node.invoke) != node.invoke for id in _input_ids(node))
        ):
            segments[node.invoke] = segments.get(node.invoke, 0) + 1
        if key is not None:
            first_of.setdefault((*key, changes, segments.get(node.invoke, 0)), node.id)
        nodes.append(node)
    if not replacements:
        return graph
    return graph.with_nodes(nodes)


def _can_merge(node: Node) -> bool:
    match node.op:
        case Op.READ | Op.RESULT:
            return True
        case Op.CALL:
            return is_pure_call(node) and not has_effect(node) and not is_random(node)
        case Op.METHOD:
            return not has_effect(node) and not is_random(node)
        case Op.GETATTR | Op.GETITEM | Op.SELECT:
            return True
        case _:
            return False


def _shares_its_value(graph: Graph) -> set[int]:
    """Nodes whose value (or a value computed from it) is changed in place, handed to the
    model, or passed to code that may do either: merging such a node would alias two values
    that must stay apart."""
    shared: set[int] = set()
    for node in reversed(graph.nodes):
        if node.id in shared or may_change_values(node):
            shared.add(node.id)
            shared.update(input.id for input in _value_inputs(node))
    return shared


def _value_inputs(node: Node) -> list[Ref]:
    """The Refs among the node's arguments (not its guard, which it only tests)."""
    if not node.kwargs and all(type(arg) in _FLAT for arg in node.args):
        return [arg for arg in node.args if type(arg) is Ref]
    return list(refs((node.args, node.kwargs)))


def _input_ids(node: Node) -> list[int]:
    """The ids of every value the node needs: its arguments' and its guard's."""
    ids = [input.id for input in _value_inputs(node)]
    if node.guard is not None:
        ids.append(node.guard.id)
    return ids


_FLAT = frozenset({Ref, Const, int, float, bool, str, type(None)})


def _saved_ids(graph: Graph) -> set[int]:
    return {
        node.args[0].id
        for node in graph.nodes
        if node.op is Op.SAVE and node.args and type(node.args[0]) is Ref
    }


def _key(node: Node, optional: bool) -> tuple[Any, ...]:
    """What two nodes must share to compute the same value (besides what lies between them)."""
    args, kwargs = _freeze(node.args), _freeze(node.kwargs)
    guard = -1 if node.guard is None else node.guard.id
    return (node.op.value, node.target, args, kwargs, node.invoke, node.step, guard, optional)


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an argument, equal only for arguments that are the same.

    Types are part of it (`x * 1` and `x * 1.0` differ), floats compare by repr (`0.0` and
    `-0.0` differ), and other objects by identity.
    """
    kind = type(value)
    if kind is Ref:
        return ("ref", value.id)  # plain tuples hash in C; Ref's dataclass hash is Python
    if kind is Const:
        return ("const", value.index)
    if kind in (int, bool, str, bytes, type(None), type(Ellipsis)):
        return (kind, value)
    if kind is float or kind is complex:
        return (kind, repr(value))
    if kind is tuple or kind is list:
        return (kind, tuple(_freeze(item) for item in value))
    if kind is dict:
        return (kind, tuple((_freeze(key), _freeze(item)) for key, item in value.items()))
    if kind is slice:
        return (kind, _freeze(value.start), _freeze(value.stop), _freeze(value.step))
    return (kind, id(value))  # the graph holds the object, so its id stays its own


# constants ------------------------------------------------------------------------------------

_FOLDABLE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{
        f"operator.{name}": getattr(operator, name)
        for name in (
            "add",
            "sub",
            "truediv",
            "floordiv",
            "mod",
            "neg",
            "pos",
            "abs",
            "invert",
            "not_",
            "truth",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "and_",
            "or_",
            "xor",
            "getitem",
            "index",
        )
    },
    "operator.mul": operator.mul,  # numbers only: see _fold
    **{f"math.{name}": getattr(math, name) for name in ("floor", "ceil", "trunc", "sqrt")},
    **{f"builtins.{f.__name__}": f for f in (len, abs, min, max, round, int, float, bool, str)},
}
"""Functions evaluated at pass time when their arguments are literals: they compute only their
result, cheaply (no `pow` or shifts, whose results can be huge)."""

_FOLDABLE_METHODS = frozenset(
    {"bit_length", "conjugate", "is_integer", "lower", "upper", "strip", "startswith", "endswith"}
)
_FOLDABLE_ATTRIBUTES = frozenset({"real", "imag", "numerator", "denominator"})
_NUMBERS = (int, float, bool)
_MAX_LENGTH = 256  # longest str or tuple folded, in or out
_MAX_BITS = 1024  # largest int folded, in or out
_NOT_FOLDED = object()


def fold_constants(graph: Graph) -> Graph:
    """Evaluate pure operator nodes whose inputs are all literals; their uses get the result.

    Conservative: only the functions in `_FOLDABLE_FUNCTIONS` (and a few methods and attributes
    of plain numbers and strings), only on literal arguments (ints, floats, bools, strs, None,
    small tuples of them; never an entry of the constant table), only outside an `if proxy:`
    branch, and only when the result is such a literal too. A call that raises is left to
    raise at run time, with the user's line. A folded node stays where its value is saved or
    used as a condition (those need a node); otherwise it is dropped.
    """
    literals: dict[int, Any] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        node = _rewrite(node, literals, _ref_positions(node))
        value = _fold(node)
        if value is not _NOT_FOLDED:
            literals[node.id] = value
        nodes.append(node)
    if not literals:
        return graph
    still_used = {input.id for node in nodes for input in node.inputs()}
    return graph.with_nodes([n for n in nodes if n.id not in literals or n.id in still_used])


def _ref_positions(node: Node) -> int:
    """How many leading arguments of the node must stay Refs (what they refer to matters)."""
    if node.op is Op.SAVE:
        return len(node.args)
    if node.op in GRADIENTS:
        return 2  # the value whose gradient it is, and the backward pass
    return 0


def _fold(node: Node) -> Any:
    """The node's value, if it can be computed now; else _NOT_FOLDED."""
    if node.guard is not None or node.kwargs or not all(_is_input(a) for a in node.args):
        return _NOT_FOLDED
    args = node.args
    function: Callable[..., Any] | None
    match node.op:
        case Op.CALL if node.target in _FOLDABLE_FUNCTIONS:
            if node.target == "operator.mul" and not all(type(a) in _NUMBERS for a in args):
                return _NOT_FOLDED  # "ab" * n can be any size
            function = _FOLDABLE_FUNCTIONS[node.target]
        case Op.METHOD if node.target in _FOLDABLE_METHODS and args:
            function = getattr(type(args[0]), node.target, None)
        case Op.GETATTR if node.target in _FOLDABLE_ATTRIBUTES and len(args) == 1:
            function = operator.attrgetter(node.target)
        case Op.GETITEM if len(args) == 2:
            function = operator.getitem
        case _:
            return _NOT_FOLDED
    if function is None:
        return _NOT_FOLDED
    try:
        value = function(*args)
    except Exception:  # noqa: BLE001 - the executor raises it again, with the user's line
        return _NOT_FOLDED
    return value if _is_literal(value) else _NOT_FOLDED


def _is_literal(value: Any) -> bool:
    """Whether a value can stand in a node's arguments in place of a node: small primitives."""
    kind = type(value)
    if kind is int:
        return value.bit_length() <= _MAX_BITS
    if kind in (float, bool, type(None)):
        return True
    if kind is str:
        return len(value) <= _MAX_LENGTH
    if kind is tuple:
        return len(value) <= _MAX_LENGTH and all(_is_literal(item) for item in value)
    return False


def _is_input(value: Any) -> bool:
    if type(value) is slice:
        return all(_is_literal(part) for part in (value.start, value.stop, value.step))
    return _is_literal(value)
