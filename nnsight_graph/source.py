"""`envoy.source`: the call sites inside a module's forward, each readable and writable.

`print(model.h[0].attn.source)` shows the forward with a name on every call
(`attention_interface_0`); `model.h[0].attn.source.attention_interface_0.output` is the value
that call returned in a trace, and can be assigned like a module's output.
"""

from __future__ import annotations

import difflib
import inspect

import torch

from .backends.source import Instrumented, annotated, instrument, resolve_callee
from .envoy import Envoy
from .ir import GraphBuildError


class SourceView:
    """The named call sites of one module's forward."""

    def __init__(self, envoy: Envoy) -> None:
        self._envoy = envoy
        self._instrumented = instrument(type(envoy._module).forward)

    def __repr__(self) -> str:
        return annotated(self._instrumented)

    __str__ = __repr__

    def __dir__(self) -> list[str]:
        return list(self._instrumented.sites)

    def __getattr__(self, name: str) -> OperationEnvoy:
        if name.startswith("__"):
            raise AttributeError(name)
        sites = self._instrumented.sites
        if name not in sites:
            close = difflib.get_close_matches(name, list(sites), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise AttributeError(
                f"{type(self._envoy._module).__name__}.forward has no call site {name!r}.{hint} "
                "print(envoy.source) lists them."
            )
        return _operation(self._envoy, self._instrumented, name)


def _operation(owner: Envoy, instrumented: Instrumented, name: str) -> OperationEnvoy:
    path = f"{owner._path}.source.{name}" if owner._path else f"source.{name}"
    operation = OperationEnvoy(owner._module, path)
    object.__setattr__(operation, "_root", owner._root)  # reads check the traced model
    callee = resolve_callee(instrumented, name, owner._module)
    object.__setattr__(operation, "_callee", callee)
    return operation


class OperationEnvoy(Envoy):
    """One call inside a forward: `.output` (what it returned), `.input`, `.inputs`, and
    `.source`: the call sites inside the function it calls, one level deeper."""

    @property
    def source(self) -> NestedSourceView:
        return NestedSourceView(self)

    def __repr__(self) -> str:
        return f"<operation {self._path}>"


class NestedSourceView:
    """The call sites of the function a call site calls (`site.source.<name>`)."""

    def __init__(self, operation: OperationEnvoy) -> None:
        self._operation = operation
        callee = operation.__dict__.get("_callee")
        if isinstance(callee, torch.nn.Module):
            raise GraphBuildError(
                f"{operation._path} calls a module: use that module's own .source"
            )
        function = getattr(callee, "__func__", callee)
        self._instrumented = (
            instrument(function, nested=True) if inspect.isfunction(function) else None
        )

    def __repr__(self) -> str:
        if self._instrumented is None:
            raise GraphBuildError(
                f"the function called at {self._operation._path} is only known when the model "
                "runs (it is chosen at run time), so its source cannot be shown; its call sites "
                "can still be used by name, callee_index as elsewhere (for example "
                ".source.torch_matmul_0)"
            )
        return annotated(self._instrumented)

    __str__ = __repr__

    def __getattr__(self, name: str) -> OperationEnvoy:
        if name.startswith("__"):
            raise AttributeError(name)
        instrumented = self._instrumented
        if instrumented is not None and name not in instrumented.sites:
            close = difflib.get_close_matches(name, list(instrumented.sites), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise AttributeError(f"{self._operation._path} calls no {name!r}.{hint}")
        path = f"{self._operation._path}.source.{name}"
        operation = OperationEnvoy(self._operation._module, path)
        object.__setattr__(operation, "_root", self._operation._root)
        callee = None
        if instrumented is not None:
            callee = resolve_callee(instrumented, name, None)
        object.__setattr__(operation, "_callee", callee)
        return operation
