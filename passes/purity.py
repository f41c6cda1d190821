"""Which nodes the optimizing passes may merge, fold or drop: pure calls, random calls, and
calls that may change values other than their own result."""

from __future__ import annotations

from ..ir import Node, Op, mutates
from ..ir.effects import CONTAINER_MUTATORS
from ..ir.functions import split_name

RANDOM_NAMES = frozenset(
    {
        "bernoulli",
        "multinomial",
        "normal",
        "log_normal",
        "poisson",
        "uniform",
        "exponential",
        "cauchy",
        "geometric",
        "gumbel_softmax",
        "rrelu",
        "seed",
        "manual_seed",
    }
)
"""Random functions and methods (in-place ones without their `_`) besides those whose name
contains "rand" or "dropout"; `empty*` counts too (uninitialized memory differs per call)."""

PURE_NAMESPACES = frozenset(
    {"torch", "torch.nn.functional", "torch.linalg", "torch.special", "torch.fft", "operator"}
    | {"math"}
)
"""Modules whose functions compute a value from their arguments and do nothing else."""

IMPURE_WORDS = ("save", "load", "set_", "use_", "compile", "grad_enabled", "inference", "print")
"""Functions in the pure namespaces that change global state or touch files."""

IMPURE_METHODS = frozenset(
    {"__call__", "backward", "register_hook", "retain_grad", "record_stream"}
)
"""Methods with effects beyond their result, or calls of arbitrary objects."""


def is_random(node: Node) -> bool:
    """Whether the node calls a random function: each run gives a new value, and advances the
    random number generator."""
    if node.op is not Op.CALL and node.op is not Op.METHOD:
        return False
    name = split_name(node.target)[1].lower()
    if "rand" in name or "dropout" in name or name.startswith(("empty", "new_empty")):
        return True
    return name.rstrip("_") in RANDOM_NAMES


def is_pure_call(node: Node) -> bool:
    """Whether a CALL's function is known to compute only its result from its arguments."""
    namespace, name = split_name(node.target)
    if namespace not in PURE_NAMESPACES:
        return False
    return not any(word in name.lower() for word in IMPURE_WORDS)


def may_change_values(node: Node) -> bool:
    """Whether running the node may change a value that exists already (a site's value, an
    argument, a container), or let other code do so (barriers, backward passes).

    Stricter than `ir.mutates`: a call of a function outside the pure namespaces may do
    anything to its arguments, and so may a method that mutates a list or dict.
    """
    if node.op is Op.LOG or node.op is Op.SAVE:
        return False  # they read values and change none
    if node.op is Op.CALL_MODULE:
        return True  # a module may change its input in place (ReLU(inplace=True))
    if mutates(node):
        return True
    if node.op is Op.CALL:
        return not is_pure_call(node)
    if node.op is Op.METHOD:
        return node.target in CONTAINER_MUTATORS or node.target in IMPURE_METHODS
    return False
