"""NNsight: wraps any torch module so that its internals can be traced and changed."""

from __future__ import annotations

from typing import Any

import torch

from .backends import execute
from .backends.batching import batch_size, concatenate
from .backends.observe import observed
from .config import CONFIG
from .envoy import Envoy
from .ir import BatchError, Const, Graph
from .passes import ModelFacts, run_passes
from .tracer import Tracer


class NNsight(Envoy):
    """A torch module wrapped for tracing: `with NNsight(net).trace(x): ...`.

    Attribute access mirrors the module tree (`model.layer1`, `model.h[0]`); the module itself
    is never changed: hooks exist only while a trace runs.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NNsight wraps a torch.nn.Module, not {type(module).__name__}")
        super().__init__(module, "")
        object.__setattr__(self, "_facts", None)

    def trace(self, *args: Any, **kwargs: Any) -> Tracer:
        """A tracing context: `with model.trace(input) as tracer:`. The model runs on exit."""
        return Tracer(self, args, kwargs)

    # what a backend needs from the model ----------------------------------------------------

    def _batch_rows(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """How many batch rows an invoke's inputs hold (dim 0 of their first tensor)."""
        return batch_size((args, kwargs))

    def _batched_inputs(self, graph: Graph) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The model's call arguments: every invoke's inputs concatenated on dim 0."""
        given = [inv for inv in graph.invokes if inv.args or inv.kwargs]
        if not given:
            raise BatchError(
                "no invoke has an input: pass one to model.trace(input) or tracer.invoke(input)"
            )
        decoded = [_decode((inv.args, inv.kwargs), graph.constants) for inv in given]
        if len(decoded) > 1 and any(inv.rows is None for inv in given):
            raise BatchError(
                "an invoke's inputs hold no tensor, so its batch rows are unknown; "
                "batch several invokes only with tensor inputs"
            )
        args, kwargs = concatenate(decoded)
        return args, kwargs

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._module(*args, **kwargs)

    def _execute(self, graph: Graph, total_rows: int) -> dict[int, Any]:
        """Validate and optimize the graph, then run the model with it; return saved values."""
        facts: ModelFacts | None = self._facts
        graph = run_passes(graph, facts)
        args, kwargs = self._batched_inputs(graph)
        rows = total_rows or None

        def call() -> Any:
            return self._call(args, kwargs)

        if facts is None:
            with observed(self._module, rows) as observation:
                saved = execute(graph, self._module, call, total_rows, CONFIG.APP.DEBUG)
            facts = ModelFacts.from_events(observation.events, observation.tensor_outputs)
            object.__setattr__(self, "_facts", facts)
            return saved
        return execute(graph, self._module, call, total_rows, CONFIG.APP.DEBUG)


def _decode(value: Any, constants: list[Any]) -> Any:
    if isinstance(value, Const):
        return constants[value.index]
    if isinstance(value, tuple):
        return tuple(_decode(v, constants) for v in value)
    if isinstance(value, list):
        return [_decode(v, constants) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v, constants) for k, v in value.items()}
    return value
