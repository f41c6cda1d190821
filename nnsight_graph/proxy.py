"""Proxy: stands for a value that will exist when the model runs; each use records a Node."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .gradients import Backward, read_grad, write_grad
from .ir import GraphBuildError, Op
from .ir.functions import qualified_name

if TYPE_CHECKING:
    from .recorder import Recorder

_NOT_KNOWN = (
    "is only known when the model runs, after the trace body has been recorded, so it cannot "
    "be used as a Python {what}. {instead}"
)


class Proxy:
    """A value inside a trace. Operations on it are recorded, not computed.

    `proxy.save()` keeps the value: after the `with` block the variable holds the real object.
    """

    __slots__ = ("_nn_recorder", "_nn_id", "_nn_parent", "_nn_attr", "__weakref__")
    # the slots' types (annotations only: __slots__ makes the attributes)
    _nn_recorder: Recorder
    _nn_id: int | None
    _nn_parent: Proxy | None
    _nn_attr: str

    def __init__(
        self,
        recorder: Recorder,
        node: int | None,
        parent: Proxy | None = None,
        attr: str = "",
    ) -> None:
        _set_recorder(self, recorder)
        _set_id(self, node)
        _set_parent(self, parent)
        _set_attr(self, attr)

    def _nn_node(self) -> int:
        """The id of the node this proxy stands for (an attribute read is recorded lazily)."""
        node = self._nn_id
        if node is None:
            node = self._nn_recorder.add(Op.GETATTR, self._nn_attr, (self._nn_parent,))
            _set_id(self, node)
        return node

    # recording ---------------------------------------------------------------------------

    def save(self) -> Proxy:
        """Keep this value after the trace; returns the proxy itself."""
        self._nn_recorder.save(self)
        return self

    def backward(self, *args: Any, **kwargs: Any) -> Backward:
        """Run the backward pass from this value; `with loss.backward():` gives access to .grad."""
        return Backward(self, args, kwargs)

    @property
    def grad(self) -> Proxy:
        """The gradient of this value (inside `with loss.backward():` only)."""
        return read_grad(self)

    def __getattr__(self, name: str) -> Proxy:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Proxy(self._nn_recorder, None, self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "grad":
            write_grad(self, value)
            return
        raise GraphBuildError(
            f"cannot set attribute {name!r} on a traced value; use an in-place method instead "
            f"(for example .requires_grad_(True)) or assign to a module's .output"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        recorder = self._nn_recorder
        if self._nn_id is None and self._nn_parent is not None:
            return recorder.proxy(Op.METHOD, self._nn_attr, (self._nn_parent, *args), **kwargs)
        return recorder.proxy(Op.METHOD, "__call__", (self, *args), **kwargs)

    def __getitem__(self, key: Any) -> Proxy:
        recorder = self._nn_recorder
        return Proxy(recorder, recorder.add_item(Op.GETITEM, (self, key)))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._nn_recorder.add_item(Op.SETITEM, (self, key, value))

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Proxy:
        recorder = _find_recorder((args, kwargs or {}))
        name = getattr(func, "__name__", "")
        if args and getattr(torch.Tensor, name, None) is func:
            return recorder.proxy(Op.METHOD, name, tuple(args), **(kwargs or {}))
        return recorder.proxy(Op.CALL, qualified_name(func), tuple(args), **(kwargs or {}))

    # what cannot be deferred -------------------------------------------------------------

    def __bool__(self) -> bool:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(
                what="bool (if, while, and, or, not)",
                instead="Use tensor operations such as torch.where, or save the value and "
                "decide after the trace.",
            )
        )

    def __len__(self) -> int:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(what="length", instead="Use .shape or .size(), which are traced.")
        )

    def __iter__(self) -> Any:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(
                what="iterable", instead="Index it instead: value[0], value[1], ..."
            )
        )

    def __index__(self) -> int:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(what="int or index", instead="Save it and use it after the trace.")
        )

    __int__ = __index__

    def __float__(self) -> float:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(what="float", instead="Save it and use it after the trace.")
        )

    def __contains__(self, item: Any) -> bool:
        raise GraphBuildError(
            _describe(self) + _NOT_KNOWN.format(what="container (in)", instead="")
        )

    def __format__(self, spec: str) -> str:
        raise GraphBuildError(
            _describe(self)
            + _NOT_KNOWN.format(what="string", instead="Save it and format it after the trace.")
        )

    def __repr__(self) -> str:
        if self._nn_id is None:
            return f"<Proxy {self._nn_parent!r}.{self._nn_attr}>"
        node = self._nn_recorder.nodes[self._nn_id]
        return f"<Proxy {node}>"

    __str__ = __repr__
    # kept hashable (proxies are dict keys); the __eq__ set below does not unset it
    __hash__ = object.__hash__


def _describe(proxy: Proxy) -> str:
    if proxy._nn_id is None:
        return f"The value of {proxy!r} "
    node = proxy._nn_recorder.nodes[proxy._nn_id]
    where = f" (created at {node.loc})" if node.loc else ""
    return f"The value of %{node.id}{where} "


def _find_recorder(value: Any) -> Recorder:
    if isinstance(value, Proxy):
        return value._nn_recorder
    if isinstance(value, (tuple, list)):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        items = ()
    for item in items:
        found = _find_recorder_or_none(item)
        if found is not None:
            return found
    raise GraphBuildError("internal error: a traced call had no traced argument")


def _find_recorder_or_none(value: Any) -> Recorder | None:
    try:
        return _find_recorder(value)
    except GraphBuildError:
        return None


def _binary(function: Callable[[Any, Any], Any]) -> Callable[[Proxy, Any], Proxy]:
    name = f"operator.{function.__name__}"

    def method(self: Proxy, other: Any) -> Proxy:
        return self._nn_recorder.proxy(Op.CALL, name, (self, other))

    return method


def _reflected(function: Callable[[Any, Any], Any]) -> Callable[[Proxy, Any], Proxy]:
    name = f"operator.{function.__name__}"

    def method(self: Proxy, other: Any) -> Proxy:
        return self._nn_recorder.proxy(Op.CALL, name, (other, self))

    return method


def _unary(function: Callable[[Any], Any]) -> Callable[[Proxy], Proxy]:
    name = f"operator.{function.__name__}"

    def method(self: Proxy) -> Proxy:
        return self._nn_recorder.proxy(Op.CALL, name, (self,))

    return method


_ARITHMETIC: tuple[str, ...] = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul")
_ARITHMETIC += ("and", "or", "xor", "lshift", "rshift")
for _name in _ARITHMETIC:
    _function = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    setattr(Proxy, f"__{_name}__", _binary(_function))
    setattr(Proxy, f"__r{_name}__", _reflected(_function))
    setattr(Proxy, f"__i{_name}__", _binary(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Proxy, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Proxy, f"__{_name}__", _unary(getattr(operator, _name)))

# slot setters, bypassing Proxy.__setattr__ (which refuses user attribute writes)
_set_recorder: Callable[[Proxy, Recorder], None] = Proxy.__dict__["_nn_recorder"].__set__
_set_id: Callable[[Proxy, int | None], None] = Proxy.__dict__["_nn_id"].__set__
_set_parent: Callable[[Proxy, Proxy | None], None] = Proxy.__dict__["_nn_parent"].__set__
_set_attr: Callable[[Proxy, str], None] = Proxy.__dict__["_nn_attr"].__set__
