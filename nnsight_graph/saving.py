"""Saving values out of a trace: `save()`, and turning Proxies into their saved values."""

from __future__ import annotations

from typing import Any

from .ir import UnsavedValueError
from .ir.functions import SKIPPED, UNSET
from .proxy import Proxy
from .recorder import active

_CONTAINERS = (list, dict, set, tuple)


def save(value: Any) -> Any:
    """Keep `value` after the trace: a Proxy, or a container (list, dict, ...) of Proxies.

    Works on any object; outside a trace it returns the value unchanged.
    """
    if type(value) is Proxy or isinstance(value, Proxy):
        value._nn_recorder.save(value)
        return value
    recorder = active()
    if recorder is not None and isinstance(value, _CONTAINERS):
        recorder.keep_container(value)
        return value
    method = getattr(value, "save", None)
    if recorder is None and callable(method):
        return method()
    return value


class Unsaved:
    """Bound in place of a traced value that was not saved: any use says how to fix it."""

    __slots__ = ("_message",)

    def __init__(self, name: str, proxy: Proxy) -> None:
        node = proxy._nn_recorder.nodes[proxy._nn_node()]
        where = f" at {node.loc}" if node.loc else ""
        message = (
            f"`{name}` was assigned inside the trace{where} but not saved, so it has no value "
            f"after the trace. Write `{name} = (...).save()` or `{name} = nnsight.save(...)`."
        )
        object.__setattr__(self, "_message", message)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsavedValueError(object.__getattribute__(self, "_message"))

    def __getattr__(self, name: str) -> Any:
        return self._fail()

    def __repr__(self) -> str:
        return self._fail()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for value in (*args, *(kwargs or {}).values()):
            if isinstance(value, Unsaved):
                value._fail()
        return NotImplemented


for _dunder in (
    "__str__",
    "__format__",
    "__bool__",
    "__len__",
    "__iter__",
    "__getitem__",
    "__setitem__",
    "__call__",
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rtruediv__",
    "__matmul__",
    "__eq__",
    "__lt__",
    "__gt__",
    "__le__",
    "__ge__",
    "__neg__",
    "__float__",
    "__int__",
    "__index__",
    "__array__",
):
    setattr(Unsaved, _dunder, Unsaved._fail)
Unsaved.__hash__ = object.__hash__  # type: ignore[method-assign]


def resolve(name: str, value: Any, depth: int = 0) -> Any:
    """The object to bind for `value` after its trace ran: saved values replace Proxies.

    Each Proxy is looked up in its own trace's results (inside a session, traces differ). In
    lists, Proxies of steps that never happened (optional nodes with no saved value, as when
    generation ended early) are dropped rather than left as placeholders.
    """
    if isinstance(value, Proxy):
        node = value._nn_id
        results = value._nn_recorder.results or {}
        if node is not None and node in results:
            return results[node]
        return Unsaved(name, value)
    if depth > 50:
        return value
    if isinstance(value, list):
        value[:] = [resolve(name, v, depth + 1) for v in value if not _never_happened(v)]
        return value
    if type(value) is tuple:
        return tuple(resolve(name, v, depth + 1) for v in value)
    if type(value) is dict:
        for key in list(value):
            value[key] = resolve(name, value[key], depth + 1)
        return value
    return value


def _never_happened(value: Any) -> bool:
    if not isinstance(value, Proxy):
        return False
    recorder, node = value._nn_recorder, value._nn_id
    return node in recorder.optional and node not in (recorder.results or {})


def bound_values(names: tuple[str, ...], variables: dict[str, Any]) -> dict[str, Any]:
    """What to write back for the body's assigned `names`: resolved values, leaving out names
    set only on a path that did not run (an untaken `if proxy:` branch)."""
    values = {}
    for name in names:
        if name in variables:
            value = resolve(name, variables[name])
            if value is not SKIPPED and value is not UNSET:
                values[name] = value
    return values
