"""`envoy.source`: the call sites inside a module's forward, each readable and writable.

`print(model.h[0].attn.source)` shows the forward with a name on every call
(`attention_interface_0`); `model.h[0].attn.source.attention_interface_0.output` is the value
that call returned in a trace, and can be assigned like a module's output.
"""

from __future__ import annotations

import difflib
from typing import Any

from .backends.source import annotated, instrument
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
        path = self._envoy._path
        return OperationEnvoy(self._envoy._module, f"{path}.source.{name}" if path else
                              f"source.{name}")


class OperationEnvoy(Envoy):
    """One call inside a forward: `.output` (what it returned), `.input`, `.inputs`."""

    @property
    def source(self) -> Any:
        raise GraphBuildError(
            "the source of a call inside a forward is not traced yet; use the operation's "
            ".input/.output, or trace the called module's own .source"
        )

    def __repr__(self) -> str:
        return f"<operation {self._path}>"
