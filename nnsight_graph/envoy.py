"""Envoy: a wrapper around one module of the model, giving `.output`, `.input`, `.inputs`."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import renaming
from .ir import GraphBuildError, InvokeError, Op
from .proxy import Proxy
from .recorder import _STATE, NO_KWARGS, Recorder, active, user_location

_READ = Op.READ  # a module-level name: `Op.X` is slow on Python 3.11 (EnumType.__getattr__)
_VALUES = ("output", "input", "inputs")  # what `.output`, `.input`, `.inputs` read
_NO_ALIASES: Mapping[str, str] = {}  # the aliases of every envoy that has none; never mutated
_PACKAGE = os.path.dirname(__file__) + os.sep


def _module_method(name: str) -> Callable[..., Any]:
    """An Envoy method that calls `module.<name>(...)` and returns the envoy (to chain)."""

    def method(self: Envoy, *args: Any, **kwargs: Any) -> Any:
        root = self._root
        if root is None:
            getattr(self._module, name)(*args, **kwargs)
        else:
            root._change_module(self._path, name, args, kwargs)
        return self

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (
        f"`module.{name}(...)` on the wrapped module, in place; returns this envoy, so "
        f"`NNsight(net).{name}(...).trace(x)` keeps the wrapper."
    )
    return method


class Envoy:
    """Mirrors a torch module and its named submodules.

    Inside a trace, `.output`, `.input` and `.inputs` are Proxies for the module's values at
    run time; assigning to them replaces those values. Outside a trace, calling an envoy calls
    its module, and `.to()`, `.eval()`, `.half()`, ... change the module and return the envoy.
    """

    _nnsight_envoy = True  # lets the recorder recognise envoys without importing this module
    # Class-level defaults: an envoy sets only what differs (an envoy outside a model's tree
    # has no root; most envoys have no aliases).
    _root: Any = None  # the model (NNsight) whose tree this envoy belongs to
    _aliases: Mapping[str, str] = _NO_ALIASES  # rename= aliases here: alias -> relative path
    _open_attributes = False  # a user's subclass may set attributes of its own

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__module__.startswith("nnsight_graph"):
            cls._open_attributes = True

    def __init__(self, module: torch.nn.Module, path: str = "") -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_children", {})
        # hook-site names ("output" -> "layer1.output"), built once; `_site` adds others
        sites = {what: f"{path}.{what}" if path else what for what in _VALUES}
        object.__setattr__(self, "_sites", sites)

    # hierarchy ----------------------------------------------------------------------------

    def _child(self, name: str) -> Envoy:
        children: dict[str, Envoy] = self._children
        child = children.get(name)
        module = self._module._modules[name]
        if child is None or child._module is not module:
            path = f"{self._path}.{name}" if self._path else name
            root = self._root
            if root is None:
                child = Envoy(module, path)
            else:
                child = root._envoy_class(path, module)(module, path)
                child._attach(root)
            children[name] = child
        return child

    def _attach(self, root: Any) -> None:
        """Make this envoy part of `root`'s tree (its model, its aliases)."""
        object.__setattr__(self, "_root", root)
        aliases = root._alias_table.get(self._path)
        if aliases:
            object.__setattr__(self, "_aliases", aliases)

    def _descend(self, relative: str) -> Envoy:
        envoy = self
        for name in relative.split("."):
            envoy = envoy._child(name)
        return envoy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        module = self._module
        child = self._children.get(name)
        if child is not None and module._modules.get(name) is child._module:
            return child  # the common case: a submodule seen before
        if name in module._modules and module._modules[name] is not None:
            return self._child(name)
        relative = self._aliases.get(name)
        if relative is not None:
            return self._descend(relative)
        try:
            return getattr(module, name)
        except AttributeError:
            pass
        raise AttributeError(self._no_attribute(name)) from None

    def _no_attribute(self, name: str) -> str:
        """The message for a name this envoy and its module lack, with close names."""
        module = self._module
        choices = dict.fromkeys(
            [
                *_VALUES,
                *module._modules,
                *self._aliases,
                *(n for n in dir(type(self)) if not n.startswith("_")),
                *(n for n in dir(module) if not n.startswith("_")),
            ]
        )
        close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        children = ", ".join([*module._modules, *self._aliases]) or "none"
        return (
            f"{self._describe()} ({type(module).__name__}) has no submodule or attribute "
            f"{name!r}.{hint} Its submodules: {children}."
        )

    def __getitem__(self, index: int | str) -> Envoy:
        names = list(self._module._modules)
        if isinstance(index, str):
            if index in self._aliases:
                return self._descend(self._aliases[index])
            if index not in names:
                raise KeyError(f"{self._describe()} has no submodule {index!r}")
            return self._child(index)
        if not isinstance(index, int):
            raise TypeError(f"index modules with an int, not {type(index).__name__}")
        try:
            return self._child(names[index])
        except IndexError:
            raise IndexError(
                f"{self._describe()} has {len(names)} submodules; index {index} is out of range"
            ) from None

    def __len__(self) -> int:
        return len(self._module._modules)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._module._modules, *self._aliases})

    def __iter__(self) -> Iterator[Envoy]:
        return (self._child(name) for name in self._module._modules)

    def modules(self) -> Iterator[Envoy]:
        """This envoy and every envoy below it, depth first."""
        yield self
        for child in self:
            yield from child.modules()

    def __repr__(self) -> str:
        root = self._root
        if root is not None and root._alias_table:
            return renaming.render(self._module, self._path, root._alias_table)
        return repr(self._module)

    def _describe(self) -> str:
        return f"model.{self._path}" if self._path else "the model"

    # values at run time -------------------------------------------------------------------

    def _recorder(self, what: str, same_model: bool = True) -> Recorder:
        recorder = active()
        if recorder is None:
            raise InvokeError(
                f"{self._describe()}.{what} is only available inside `with model.trace(...):`"
            )
        if (
            same_model
            and recorder.root is not self._root
            and None
            not in (
                recorder.root,
                self._root,
            )
        ):
            raise GraphBuildError(_other_model(self, what, recorder.root))
        if recorder.invoke < 0:
            raise InvokeError(
                f"{self._describe()}.{what} was used outside an invoke: pass an input to "
                "model.trace(input) or wrap this code in `with tracer.invoke(input):`"
            )
        return recorder

    def _site(self, what: str) -> str:
        sites: dict[str, str] = self._sites
        site = sites.get(what)
        if site is None:
            site = sites[what] = f"{self._path}.{what}" if self._path else what
        return site

    def _read(self, what: str) -> Proxy:
        recorder = _STATE.recorder  # this thread's
        if recorder is None or recorder.invoke < 0 or recorder.root is not self._root:
            recorder = self._recorder(what)  # raises, saying what to do (or allows no root)
        # no arguments to encode: `append` directly (`_read` is called by the properties)
        return Proxy(recorder, recorder.append(_READ, self._sites[what], (), NO_KWARGS))

    def _write(self, what: str, value: Any) -> None:
        self._recorder(what).add(Op.WRITE, self._site(what), (value,))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module: on traced values inside a trace (`model.lm_head(hidden)`), on real
        values outside one (`model(x)` is `net(x)`).

        Inside a trace the call runs when its inputs exist; the module's own hooks do not see
        it, so it does not count as one of the module's steps. Any model's module may be
        called this way: it is a function applied to a value, not a read of the traced model.
        """
        if _STATE.recorder is None:
            root = self._root
            if root is not None:
                root._before_direct_call()
            return self._module(*args, **kwargs)
        recorder = self._recorder("__call__", same_model=False)
        if recorder.root is self._root:  # the traced model's module: by its path, as data
            return recorder.proxy(Op.CALL_MODULE, self._path, args, **kwargs)
        # another model's module is a function of this trace: it lives only in this process
        return recorder.proxy(Op.METHOD, "__call__", (self._module, *args), **kwargs)

    @property
    def source(self) -> Any:
        """The call sites of this module's forward (print it to see their names)."""
        from .source import SourceView

        return SourceView(self)

    def skip(self, value: Any) -> None:
        """Do not run this module in the trace; use `value` as its output instead."""
        recorder = self._recorder("skip()")
        output = self._site("output")
        for node in reversed(recorder.nodes):
            if node.invoke != recorder.invoke:
                continue
            if node.op is Op.READ and node.target == output and node.step == recorder.step:
                raise GraphBuildError(
                    f"{self._describe()}.skip() comes after its output was read at {node.loc}; "
                    "once the output exists the module has run. Skip it before reading it"
                )
        recorder.add(Op.SKIP, self._site("skip"), (value,))

    @property
    def grad(self) -> Any:
        """Not available: gradients belong to values, not modules."""
        raise GraphBuildError(
            f"{self._describe()} is a module; gradients belong to values. Use "
            f"{self._describe()}.output.grad inside `with loss.backward():`"
        )

    @property
    def output(self) -> Proxy:
        """The module's return value."""
        return self._read("output")

    @output.setter
    def output(self, value: Any) -> None:
        self._write("output", value)

    @property
    def input(self) -> Proxy:
        """The module's first positional argument (or first keyword argument)."""
        return self._read("input")

    @input.setter
    def input(self, value: Any) -> None:
        self._write("input", value)

    @property
    def inputs(self) -> Proxy:
        """All of the module's inputs as `(args_tuple, kwargs_dict)`."""
        return self._read("inputs")

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._write("inputs", value)

    def __setattr__(self, name: str, value: Any) -> None:
        # a property's setter (.output, .input, .inputs, a subclass's own), a private name,
        # or any attribute of a user's Envoy subclass; anything else is most likely a typo
        if (
            hasattr(getattr(type(self), name, None), "__set__")
            or name.startswith("_")
            or self._open_attributes
        ):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(
            f"cannot set {name!r} on {self._describe()}: only .output, .input and .inputs can "
            "be assigned inside a trace"
        )

    # the module outside a trace -----------------------------------------------------------

    to = _module_method("to")
    cpu = _module_method("cpu")
    cuda = _module_method("cuda")
    half = _module_method("half")
    float = _module_method("float")
    double = _module_method("double")
    bfloat16 = _module_method("bfloat16")
    eval = _module_method("eval")
    train = _module_method("train")
    requires_grad_ = _module_method("requires_grad_")

    @property
    def device(self) -> torch.device | None:
        """The device of the module's first parameter (None if it has none)."""
        for parameter in self._module.parameters():
            return parameter.device
        return None


def _other_model(envoy: Envoy, what: str, traced: Any) -> str:
    """The error for a value of another model's module read or written inside a trace."""
    owner = envoy._root
    owner_name = _name_of(owner) or "other_model"
    traced_name = _name_of(traced) or "model"
    path = f".{envoy._path}" if envoy._path else ""
    return (
        f"{owner_name}{path}.{what} at {user_location()} is a value of `{owner_name}` "
        f"({type(owner).__name__} of {type(owner._module).__name__}), but this trace runs "
        f"`{traced_name}` "
        f"({type(traced).__name__} of {type(traced._module).__name__}): a trace reads and "
        f"writes only the modules of the model it traces. Use {traced_name}{path}.{what}, or "
        f"read it in `with {owner_name}.trace(...)` (model.session() shares values between "
        "traces)"
    )


def _name_of(model: Any) -> str | None:
    """The name the user's code gives `model` (for messages), found in the calling frames."""
    frame = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_PACKAGE):
            for scope in (frame.f_locals, frame.f_globals):
                for name, value in scope.items():
                    if value is model and not name.startswith("_"):
                        return name
        frame = frame.f_back  # type: ignore[assignment]
    return None
