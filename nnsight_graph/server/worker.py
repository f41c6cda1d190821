"""A model's worker process: loads the model once, then runs jobs one at a time.

The dispatcher (nnsight_graph.server.models) sends `("run", job_id, payload_path,
result_path)` on the inbox; the worker answers on the outbox with `("ready",)` once the model
loaded, then per job `("log", job_id, text)` for the trace's print() output, and
`("done", job_id)` (the result written to result_path) or `("error", job_id, error)`.
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

LOG_CAP = 64 << 10  # characters of print() output a job may send


def describe_error(error: BaseException) -> dict[str, Any]:
    """A job's error as the API reports it: the type where the client has it (a builtin or
    one of ours), the message and the notes (the user's file:line and source text), never a
    traceback or a path of the server."""
    cls = type(error)
    module = cls.__module__
    if module == "builtins" or module.startswith("nnsight_graph"):
        name, message = cls.__name__, str(error)
    else:  # a library's own type (torch, transformers): the client may not have it
        name, module, message = "RuntimeError", "builtins", f"{cls.__name__}: {error}"
    return {
        "type": name,
        "module": module,
        "message": message,
        "notes": [str(note) for note in getattr(error, "__notes__", ())],
    }


class _LogStream(io.TextIOBase):
    """stdout while a job runs: what it prints goes to the client as LOG events, capped."""

    def __init__(self, outbox: Any, job: str) -> None:
        self.outbox, self.job, self.left = outbox, job, LOG_CAP
        self.line = ""  # sent a line at a time: one LOG event per printed line

    def write(self, text: str) -> int:
        if self.left > 0 and text:
            part = text[: self.left]
            self.left -= len(part)
            if self.left <= 0:
                part += f"\n[nnsight_graph: print output cut at {LOG_CAP} characters]\n"
            self.line += part
            if "\n" in self.line:
                lines, _, self.line = self.line.rpartition("\n")
                self.outbox.put(("log", self.job, lines + "\n"))
        return len(text)

    def flush(self) -> None:
        if self.line:
            self.outbox.put(("log", self.job, self.line))
            self.line = ""


def load_model(spec: str, device: str, dtype: str | None) -> Any:
    from nnsight_graph import LanguageModel

    from .hosting import is_factory, load_factory_model

    if is_factory(spec):
        return load_factory_model(spec, device, dtype)
    kwargs: dict[str, Any] = {}
    if dtype:
        import torch

        kwargs["dtype"] = getattr(torch, dtype)
    device_map = None if device == "cpu" else device
    model = LanguageModel(spec, dispatch=True, device_map=device_map, **kwargs)
    return model


def main(spec: str, device: str, dtype: str | None, limits: Any, inbox: Any, outbox: Any) -> None:
    """The worker's loop (the target of its process)."""
    from nnsight_graph.remote.execution import run_payload

    try:
        model = load_model(spec, device, dtype)
    except Exception as error:  # the model does not load: the server says so and exits
        outbox.put(("failed", describe_error(error)))
        return
    outbox.put(("ready",))
    while True:
        message = inbox.get()
        if message is None:
            return
        _, job, payload_path, result_path = message
        try:
            payload = Path(payload_path).read_bytes()
            stream = _LogStream(outbox, job)
            try:
                with redirect_stdout(stream):
                    result = run_payload(model, payload, limits)
            finally:
                stream.flush()
            Path(result_path).write_bytes(result)
        except Exception as error:
            outbox.put(("error", job, describe_error(error)))
        else:
            outbox.put(("done", job))
        sys.stdout.flush()


__all__ = ["describe_error", "main"]
