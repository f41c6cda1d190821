"""`model.session()`: several traces recorded together, run in order as one experiment.

Inside a session, each `with model.trace(...)` is recorded when its block ends but runs only
when the session ends, so a later trace can use any value of an earlier one, saved or not.
"""

from __future__ import annotations

from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import capture, frames, saving
from .ir import GraphBuildError
from .recorder import _STATE, SessionValue

if TYPE_CHECKING:
    from .model import NNsight
    from .tracer import Tracer


def current() -> Session | None:
    """The session whose body this thread is recording, if any (each thread has its own)."""
    session: Session | None = _STATE.session
    return session


class Session(capture.CapturedBlock):
    """Groups traces; they run in the order written when the `with` block ends."""

    def __init__(self, model: NNsight) -> None:
        self.model = model
        self.traces: list[Tracer] = []

    def __enter__(self) -> Session:
        if _STATE.recorder is not None or _STATE.session is not None:
            raise GraphBuildError("a session cannot be opened inside a trace or another session")
        self._capture()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return self._finish(exc_type, exc)

    def _run(self, frame: FrameType) -> None:
        from .tracer import compiled_body  # the tracer module imports this one

        captured = self._captured
        assert captured is not None
        body, namespace, local_vars = compiled_body(self, captured, frame)
        state = _STATE
        state.session = self  # `__enter__` found none: sessions do not nest
        try:
            variables = body(namespace)
        finally:
            state.session = None
        for tracer in self.traces:
            tracer._run_in_session()
        values = saving.bound_values(captured.stored, variables)
        for name, value in capture.target_values(captured, self).items():
            values.setdefault(name, value)
        frames.bind(frame, values, local_vars)


def resolve_session_values(constants: list[Any]) -> list[Any]:
    """The constants of a session trace, with values of earlier traces filled in."""
    return [c.value() if isinstance(c, SessionValue) else c for c in constants]


__all__ = ["Session", "current", "resolve_session_values"]
