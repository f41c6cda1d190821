"""`if` on a traced value: both branches are recorded, each guarded by the condition.

The source transform turns `if proxy_test: A else: B` into calls on a Branch: nodes recorded
in A run only when the test is true, nodes in B only when it is false, and each variable
either branch assigns becomes a `select(test, value_in_A, value_in_B)` afterwards.
"""

from __future__ import annotations

from typing import Any

from .ir import GraphBuildError, Op, ref
from .ir.functions import UNSET
from .proxy import Proxy
from .recorder import active


class Branch:
    """One recorded `if proxy:` statement."""

    def __init__(self, test: Proxy, variables: dict[str, Any], names: tuple[str, ...]) -> None:
        recorder = active()
        if recorder is None:
            raise GraphBuildError("`if` on a traced value can only be used inside a trace")
        self.recorder = recorder
        self.outer = recorder.guard
        self.condition = recorder.proxy(Op.CALL, "builtins.bool", (test,))
        self.negation = recorder.proxy(Op.CALL, "operator.not_", (self.condition,))
        self.names = names
        self.before = {name: variables.get(name, UNSET) for name in names}
        self.after_then: dict[str, Any] = {}
        recorder.guard = ref(self.condition._nn_node())

    def orelse(self, variables: dict[str, Any]) -> None:
        """The true branch ended: remember its values, start the false branch."""
        self.after_then = {name: variables.get(name, UNSET) for name in self.names}
        self.recorder.guard = ref(self.negation._nn_node())

    def value_before(self, name: str) -> Any:
        """A variable's value before the `if` (what the false branch starts from)."""
        return self.before[name]

    def end(self, variables: dict[str, Any]) -> None:
        """The false branch ended: record a select for each variable the branches set."""
        self.after_else = {name: variables.get(name, UNSET) for name in self.names}
        self.recorder.guard = self.outer

    def merged(self, name: str) -> Any:
        """The variable after the `if`: the true branch's value when the test held."""
        if_true, if_false = self.after_then[name], self.after_else[name]
        if if_true is if_false:
            return if_true
        merged = self.recorder.proxy(Op.SELECT, "", (self.condition, if_true, if_false))
        saved = self.recorder.saved_ids
        if any(isinstance(v, Proxy) and v._nn_id in saved for v in (if_true, if_false)):
            self.recorder.save(merged)
        return merged


def is_proxy(value: Any) -> bool:
    """Whether an `if` test is a traced value (used by the source transform)."""
    return isinstance(value, Proxy)


def log(*args: Any, **kwargs: Any) -> None:
    """`print` inside a trace: deferred until the values exist when a Proxy is printed."""
    recorder = active()
    values = (*args, *kwargs.values())
    if recorder is None or not any(isinstance(v, Proxy) for v in values):
        print(*args, **kwargs)
        return
    recorder.add(Op.LOG, "print", args, **kwargs)
