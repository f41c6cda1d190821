"""Steps: which call of a module a node refers to (`tracer.iter[...]`, `.all()`, `.next()`).

A module called several times in one run (once per generated token) has a step per call.
Iteration is unrolled while the trace is recorded, so the step is a plain `int`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from .ir import GraphBuildError, StepError

if TYPE_CHECKING:
    from .tracer import Tracer


class StepRange:
    """The steps of one `tracer.iter[...]`: iterate it, or use it as a `with` block.

    Inside a trace body `with tracer.iter[:] as step:` runs its body once per step (the
    source transform turns it into a loop); outside a body it can be iterated directly.
    """

    def __init__(self, tracer: Tracer, steps: list[int], open_ended: bool = False) -> None:
        self.tracer = tracer
        self.steps = steps
        self.open_ended = open_ended  # `iter[a:]`: every step there is

    def __iter__(self) -> Iterator[int]:
        recorder = self.tracer._require_recorder("tracer.iter")
        before = recorder.step
        optional = recorder.optional_from
        last = before
        first_node = len(recorder.nodes)
        try:
            for step in self.steps:
                recorder.step = step
                if step > 0 and optional is None:  # generation may end before this step
                    recorder.optional_from = step
                last = step
                yield step
            if self.open_ended and self.steps and self._reads_late_site(first_node):
                # a site called once more than the model (generate()'s streamer, which sees
                # the prompt first): an open range runs one more step, to reach its last call
                last = recorder.step = self.steps[-1] + 1
                if optional is None:
                    recorder.optional_from = last
                yield last
        finally:
            # after the loop, generation goes on at the next step; in one forward pass the
            # steps are calls of a module, and other modules' reads refer to their own calls
            generating = self.tracer.method == "generate"
            recorder.step = last + 1 if generating and self.steps else before
            recorder.optional_from = optional

    def _reads_late_site(self, first_node: int) -> bool:
        tracer = self.tracer
        late = getattr(type(tracer.model), "_LATE_SITES", None)
        if not late or tracer.method != "generate":
            return False
        nodes = tracer._require_recorder("tracer.iter").nodes
        return any(node.target in late for node in nodes[first_node:])

    def __enter__(self) -> int:
        raise GraphBuildError(
            "`with tracer.iter[...]` must be written directly inside the trace's `with` block "
            "(it is unrolled from source); elsewhere write `for step in tracer.iter[...]:`"
        )

    def __exit__(self, *exc_info: Any) -> None:
        return None


class IterIndexer:
    """`tracer.iter`: index it with a step, a slice or a list of steps."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def __getitem__(self, key: int | slice | list[int]) -> StepRange:
        _check_not_negative(key)
        limit = self.tracer._step_limit()
        if isinstance(key, slice):
            if key.stop is None and limit is None:
                raise GraphBuildError(
                    "tracer.iter[:] needs to know how many steps there are: pass "
                    "max_new_tokens=... to generate(), or give explicit steps (iter[0:3])"
                )
            stop = key.stop if key.stop is not None else cast(int, limit)  # known: above
            steps = list(range(stop))[key.start : None : key.step]
            return StepRange(
                self.tracer, steps, open_ended=key.stop is None and key.step in (None, 1)
            )
        if isinstance(key, int):
            return StepRange(self.tracer, [key])
        if isinstance(key, (list, tuple)) and all(isinstance(k, int) for k in key):
            return StepRange(self.tracer, list(key))
        raise TypeError(f"index tracer.iter with an int, a slice or a list of ints, not {key!r}")


def _check_not_negative(key: Any) -> None:
    """Steps count from the first call on; a negative one has no meaning before the run."""
    if isinstance(key, slice):
        values = [v for v in (key.start, key.stop, key.step) if v is not None]
    elif isinstance(key, (list, tuple)):
        values = list(key)
    else:
        values = [key]
    negative = [v for v in values if isinstance(v, int) and v < 0]
    if negative:
        raise StepError(
            f"tracer.iter[{_describe(key)}] has a negative step ({negative[0]}): steps count "
            "calls from the first on, and how many there will be is not known while the trace "
            "is recorded. Give steps from 0 (iter[0:3], iter[2], iter[[0, 2]])"
        )


def _describe(key: Any) -> str:
    if isinstance(key, slice):
        parts = ["" if v is None else str(v) for v in (key.start, key.stop, key.step)]
        return ":".join(parts[:2] if key.step is None else parts)
    return repr(key)


def is_steps(value: Any) -> bool:
    """Whether a `with` statement's context is a StepRange (used by the source transform)."""
    return isinstance(value, StepRange)
