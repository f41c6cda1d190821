"""Envoy: a wrapper around one module of the model, giving `.output`, `.input`, `.inputs`."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import torch

from .ir import GraphBuildError, Op
from .proxy import Proxy
from .recorder import _STATE, NO_KWARGS, Recorder, active

_READ = Op.READ  # a module-level name: `Op.X` is slow on Python 3.11 (EnumType.__getattr__)
_VALUES = ("output", "input", "inputs")  # what `.output`, `.input`, `.inputs` read


class Envoy:
    """Mirrors a torch module and its named submodules.

    Inside a trace, `.output`, `.input` and `.inputs` are Proxies for the module's values at
    run time; assigning to them replaces those values.
    """

    _nnsight_envoy = True  # lets the recorder recognise envoys without importing this module

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
        if child is None:
            path = f"{self._path}.{name}" if self._path else name
            child = Envoy(self._module._modules[name], path)  # type: ignore[arg-type]
            children[name] = child
        return child

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        module = self._module
        child = self._children.get(name)
        if child is not None and module._modules.get(name) is child._module:
            return child  # the common case: a submodule seen before
        if name in module._modules and module._modules[name] is not None:
            return self._child(name)
        try:
            return getattr(module, name)
        except AttributeError:
            pass
        choices = [*module._modules, *(n for n in dir(module) if not n.startswith("_"))]
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        children = ", ".join(module._modules) or "none"
        raise AttributeError(
            f"{self._describe()} ({type(module).__name__}) has no submodule or attribute "
            f"{name!r}.{hint} Its submodules: {children}."
        )

    def __getitem__(self, index: int | str) -> Envoy:
        names = list(self._module._modules)
        if isinstance(index, str):
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

    def __iter__(self) -> Iterator[Envoy]:
        return (self._child(name) for name in self._module._modules)

    def modules(self) -> Iterator[Envoy]:
        """This envoy and every envoy below it, depth first."""
        yield self
        for child in self:
            yield from child.modules()

    def __repr__(self) -> str:
        return repr(self._module)

    def _describe(self) -> str:
        return f"model.{self._path}" if self._path else "the model"

    # values at run time -------------------------------------------------------------------

    def _recorder(self, what: str) -> Recorder:
        recorder = active()
        if recorder is None:
            raise GraphBuildError(
                f"{self._describe()}.{what} is only available inside `with model.trace(...):`"
            )
        if recorder.invoke < 0:
            raise GraphBuildError(
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
        if recorder is None or recorder.invoke < 0:
            recorder = self._recorder(what)  # raises, saying what to do
        # no arguments to encode: `append` directly (`_read` is called by the properties)
        return Proxy(recorder, recorder.append(_READ, self._sites[what], (), NO_KWARGS))

    def _write(self, what: str, value: Any) -> None:
        self._recorder(what).add(Op.WRITE, self._site(what), (value,))

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        """Call the module on traced values inside a trace (`model.lm_head(hidden)`).

        The call runs when its inputs exist; the module's own hooks do not see it, so it does
        not count as one of the module's steps.
        """
        recorder = self._recorder("__call__")
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
        if name in ("output", "input", "inputs"):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(
            f"cannot set {name!r} on {self._describe()}: only .output, .input and .inputs can "
            "be assigned inside a trace"
        )
