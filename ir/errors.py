"""The exception hierarchy shared by the API, the passes and the backends."""

from __future__ import annotations

import sys


class NNsightError(Exception):
    """Base class of every error nnsight_graph raises on its own account."""


class TraceCaptureError(NNsightError):
    """The body of a `with model.trace(...)` block could not be captured from source."""


class GraphBuildError(NNsightError):
    """Code inside a trace did something that cannot be recorded as a graph node."""


class InvokeError(GraphBuildError, ValueError):
    """Inputs and invokes do not fit together: a module's value used outside an invoke (or
    outside a trace), an invoke inside an invoke or inside a trace that has its own input, a
    trace with no input at all. nnsight raises these as ValueError, so this one is one too."""


class StepError(GraphBuildError, ValueError):
    """`tracer.iter[...]` was given steps that cannot exist: negative ones (a ValueError, as in
    nnsight)."""


class BarrierError(GraphBuildError, ValueError):
    """A barrier is called outside an invoke, or by fewer invokes than it waits for (a
    ValueError, as in nnsight)."""


class TraceLayoutError(TraceCaptureError, ValueError):
    """The `with` block is written in a shape whose body cannot be captured (its body on the
    `with` line); a ValueError, as in nnsight."""


class ValidationError(NNsightError):
    """A pass found the graph invalid before the model ran."""


class OutOfOrderError(ValidationError):
    """A module was read after it had already run in this invoke and step."""


class BatchError(ValidationError):
    """An invoke's inputs or values do not fit the batch (rows, sizes, shapes)."""


class ExecutionError(NNsightError):
    """The graph could not be executed as written (for example a hook that never fired)."""


class ModuleNotCalledError(ExecutionError):
    """A node waited for a module call that never happened."""


class UnsavedValueError(NNsightError):
    """A value from inside a trace was used after it without `.save()`."""


class BatchIndexError(BatchError, IndexError):
    """An index into an invoke's value is outside the rows that invoke owns."""


class StepsSkippedWarning(UserWarning):
    """Some steps of an iteration never happened (generation ended early) and were skipped."""


class WireFormatError(NNsightError):
    """A graph could not be written to, or read from, the wire format (bad or hostile bytes)."""


def append_note(error: BaseException, note: str) -> None:
    """Add `note` to `error` where Python (3.10) has no `BaseException.add_note`: PEP 678 says
    to append to `__notes__`, which tests and 3.11's traceback read."""
    notes = getattr(error, "__notes__", None)
    if notes is None:
        notes = []
        error.__notes__ = notes  # type: ignore[attr-defined]  # no such attribute before 3.11
    notes.append(note)


if sys.version_info >= (3, 11):

    def add_note(error: BaseException, note: str) -> None:
        """Add `note` to `error` (PEP 678: printed under its traceback)."""
        error.add_note(note)

else:
    add_note = append_note
