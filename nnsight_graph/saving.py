"""Saving values out of a trace: `save()`, and turning Proxies into their saved values."""

from __future__ import annotations

from typing import Any

from .ir import Op, UnsavedValueError
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

    __slots__ = ("_message", "_cut_off")

    def __init__(self, name: str, proxy: Proxy) -> None:
        node = proxy._nn_recorder.nodes[proxy._nn_node()]
        where = f" at {node.loc}" if node.loc else ""
        cut_off = _cut_off(proxy)
        object.__setattr__(self, "_cut_off", cut_off)  # saved, but the run stopped first
        if cut_off:
            message = (
                f"`{name}` was saved inside the trace{where}, but tracer.stop() ended the run "
                "before its value was computed, so it has no value after the trace. Read it "
                "before the stop point, or stop later."
            )
        else:
            message = (
                f"`{name}` was assigned inside the trace{where} but not saved, so it has no "
                f"value after the trace. Write `{name} = (...).save()` or "
                f"`{name} = nnsight.save(...)`."
            )
        object.__setattr__(self, "_message", message)

    @classmethod
    def pending(cls, name: str, job_id: str) -> Unsaved:
        """Bound for a saved value of a non-blocking remote trace: its job has it."""
        value = object.__new__(cls)
        object.__setattr__(value, "_cut_off", False)
        object.__setattr__(value, "_message", (
            f"`{name}` is computed by the remote job {job_id}, which may still run: use "
            f"`tracer.job.result()['{name}']` (or nnsight.Job.attach('{job_id}')), or trace "
            "with blocking=True"))
        return value

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
    if node in (recorder.results or {}):
        return False
    return node in recorder.optional or _cut_off(value)


def _cut_off(proxy: Proxy) -> bool:
    """Whether the proxy's value was saved but never computed because `tracer.stop()` ended
    the run first (a stop that depends on a traced value, or one in an earlier invoke)."""
    recorder, node = proxy._nn_recorder, proxy._nn_id
    if node not in recorder.saved_ids or node in (recorder.results or {}):
        return False
    return any(n.op is Op.STOP for n in recorder.nodes)


def bound_values(names: tuple[str, ...], variables: dict[str, Any]) -> dict[str, Any]:
    """What to write back for the body's assigned `names`: resolved values, leaving out names
    set only on a path that did not run (an untaken `if proxy:` branch, or saved values that
    `tracer.stop()` cut off)."""
    values = {}
    for name in names:
        if name in variables:
            value = resolve(name, variables[name])
            if type(value) is Unsaved and object.__getattribute__(value, "_cut_off"):
                continue  # the run stopped before it: not bound, as after an untaken `if`
            if value is not SKIPPED and value is not UNSET:
                values[name] = value
    return values
