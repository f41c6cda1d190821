"""`model.session()`: several traces recorded together, run in order as one experiment.

Inside a session, each `with model.trace(...)` is recorded when its block ends but runs only
when the session ends, so a later trace can use any value of an earlier one, saved or not.
"""

from __future__ import annotations

from dataclasses import replace
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import capture, frames, saving
from .config import CONFIG
from .editing import with_edits
from .ir import GraphBuildError, NNsightError, SessionGraph
from .ir.grad_mode import current_grad_mode
from .ir.limits import SERVER
from .ir.results import loads_session_results
from .ir.wire import dumps_session
from .recorder import _STATE

if TYPE_CHECKING:
    from .model import NNsight
    from .remote.client import Job
    from .tracer import Tracer


def current() -> Session | None:
    """The session whose body this thread is recording, if any (each thread has its own)."""
    session: Session | None = _STATE.session
    return session


class Session(capture.CapturedBlock):
    """Groups traces; they run in the order written when the `with` block ends."""

    def __init__(self, model: NNsight, remote: str | None = None) -> None:
        self.model = model
        self.traces: list[Tracer] = []
        # "local": the traces go as one payload through the whole remote path in this process
        self.remote = remote if remote is not None else CONFIG.APP.FORCE_REMOTE
        self.job: Job | None = None  # the server's job, after a session ran remotely

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
        if self.remote:
            bind_session_results(self, _submit(self, session_payload(self)))
        else:
            earlier: list[dict[int, Any]] = []
            for tracer in self.traces:
                earlier.append(tracer._run_in_session(earlier))
        values = saving.bound_values(captured.stored, variables)
        for name, value in capture.target_values(captured, self).items():
            values.setdefault(name, value)
        frames.bind(frame, values, local_vars)


def session_graph(session: Session) -> SessionGraph:
    """The session's recorded traces as plain data (each with its model's edits merged in and
    this thread's autograd mode, as a remote trace sends them)."""
    grad_mode = current_grad_mode()
    traces = []
    for tracer in session.traces:
        if tracer.method == "edit":
            raise GraphBuildError("model.edit() cannot be used inside a session")
        assert tracer.graph is not None
        graph = tracer.graph
        edits = tracer.model._edits
        graph = with_edits(edits, graph) if edits and graph.invokes else graph
        traces.append(replace(graph, grad_mode=grad_mode))
    keep = [frozenset(t._recorder.kept if t._recorder else ()) for t in session.traces]
    return SessionGraph(traces, keep)


def session_payload(session: Session) -> bytes:
    """The one wire payload (ir.wire.dumps_session) that runs the session's traces in order:
    what a client sends for `model.session(remote=...)` once its block has ended."""
    return dumps_session(session_graph(session))


def bind_session_results(session: Session, results: bytes) -> None:
    """Hand each trace of the session its saved values from a session results payload
    (remote.execution.run_payload's answer), as a local session run does."""
    saved = loads_session_results(results, SERVER)
    if len(saved) != len(session.traces):
        raise NNsightError(
            f"the session's results hold {len(saved)} traces, but it sent {len(session.traces)}; "
            "use the same nnsight_graph version on the client and server"
        )
    for tracer, values in zip(session.traces, saved, strict=True):
        tracer._deliver_session_values(values)


def _submit(session: Session, payload: bytes) -> bytes:
    """Send a session payload where `session.remote` says ("local": this process; else a
    server's URL, as one job); its results payload."""
    if session.remote == "local":
        from .remote.execution import run_payload  # the remote package imports the model

        return run_payload(session.model, payload, SERVER)
    from .remote.submit import submit  # httpx and the client: remote runs only

    assert session.remote is not None  # _run sends only sessions that run elsewhere
    session.job = submit(session.model, payload, session.remote, {})
    return session.job.payload()


__all__ = ["Session", "bind_session_results", "current", "session_graph", "session_payload"]
