"""`model.session()`: several traces recorded together, run in order as one experiment.

Inside a session, each `with model.trace(...)` is recorded when its block ends but runs only
when the session ends, so a later trace can use any value of an earlier one, saved or not.
"""

from __future__ import annotations

import sys
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import capture, frames, saving
from .ir import GraphBuildError
from .recorder import _ACTIVE, SessionValue

if TYPE_CHECKING:
    from .model import NNsight
    from .tracer import Tracer

_SESSIONS: list[Session] = []


def current() -> Session | None:
    """The session whose body is being recorded, if any."""
    return _SESSIONS[-1] if _SESSIONS else None


class Session:
    """Groups traces; they run in the order written when the `with` block ends."""

    def __init__(self, model: NNsight) -> None:
        self.model = model
        self.traces: list[Tracer] = []
        self._frame: FrameType | None = None
        self._captured: capture.CapturedBody | None = None

    def __enter__(self) -> Session:
        if _ACTIVE or _SESSIONS:
            raise GraphBuildError("a session cannot be opened inside a trace or another session")
        frame = sys._getframe(1)
        self._captured = capture.begin(frame)
        self._frame = frame
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        frame, self._frame = self._frame, None
        if frame is None or self._captured is None:
            return False
        if not capture.end(frame, self._captured, exc_type):
            return False
        capture.run_body(self._run, frame, exc)
        return True

    def _run(self, frame: FrameType) -> None:
        from .tracer import _namespace

        captured = self._captured
        assert captured is not None
        local_vars, global_vars = frame.f_locals, frame.f_globals
        namespace = _namespace(captured, local_vars, global_vars)
        if captured.target is not None:
            namespace[captured.target] = self
        body = capture.compile_body(captured, tuple(namespace), global_vars)
        _SESSIONS.append(self)
        try:
            variables = body(namespace)
        finally:
            _SESSIONS.pop()
        for tracer in self.traces:
            tracer._run_in_session()
        values = saving.bound_values(captured.stored, variables)
        if captured.target is not None:
            values.setdefault(captured.target, self)
        frames.bind(frame, values, local_vars)


def resolve_session_values(constants: list[Any]) -> list[Any]:
    """The constants of a session trace, with values of earlier traces filled in."""
    return [c.value() if isinstance(c, SessionValue) else c for c in constants]


__all__ = ["Session", "current", "resolve_session_values"]
