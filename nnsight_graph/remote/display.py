"""What a user sees while a remote job runs: a status line and the trace's own print() output.

The status line (queue position, generation step, elapsed time) rewrites itself in a
terminal, updates one output area in a notebook, and is a plain line per change otherwise
(logs, CI). `CONFIG.APP.REMOTE_LOGGING` switches it, `CONFIG.APP.REMOTE_PRINT` the lines the
trace printed on the server.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..config import CONFIG


class Progress:
    """Called with each event of one job, in order."""

    def __init__(
        self,
        job_id: str,
        status: bool | None = None,
        logs: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.job_id = job_id
        self.show_status = CONFIG.APP.REMOTE_LOGGING if status is None else status
        self.show_logs = CONFIG.APP.REMOTE_PRINT if logs is None else logs
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last = ""
        self.mode = _mode(self.stream)
        self.handle: Any = None  # a notebook's display handle
        self.open_line = False  # a terminal line waiting to be rewritten

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "LOG" and self.show_logs:
            self.end_line()
            print(event.get("text", ""), end="", flush=True)
        elif kind == "STATUS" and self.show_status:
            self.show(self.describe(event), final=event.get("status") in _FINAL)

    def describe(self, event: dict) -> str:
        status = str(event.get("status"))
        parts = [f"job {self.job_id}", status]
        if status == "QUEUED" and event.get("position") is not None:
            parts.append(f"position {event['position']}")
        if event.get("step") is not None and event.get("steps"):
            parts.append(f"step {event['step']} of {event['steps']}")
        parts.append(f"{time.monotonic() - self.start:.1f}s")
        return "[nnsight_graph] " + " | ".join(parts)

    def show(self, line: str, final: bool) -> None:
        if self.mode == "notebook":
            self.show_in_notebook(line)
            return
        if self.mode == "terminal":
            self.stream.write("\r" + line.ljust(len(self.last)))
            self.open_line = not final
            if final:
                self.stream.write("\n")
        else:
            state = line.rsplit(" | ", 1)[0]  # one line per change, not per elapsed tick
            if state == self.last.rsplit(" | ", 1)[0]:
                return
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def show_in_notebook(self, line: str) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(line, display_id=True)
        else:
            self.handle.update(line)
        self.last = line

    def end_line(self) -> None:
        """End a terminal status line so that printed output starts on its own line."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False
            self.last = ""


_FINAL = frozenset({"COMPLETED", "ERROR", "CANCELLED"})


def _mode(stream: TextIO) -> str:
    shell = sys.modules.get("IPython")
    if shell is not None:
        ipython = shell.get_ipython()
        if ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell":
            return "notebook"
    isatty = getattr(stream, "isatty", None)
    return "terminal" if callable(isatty) and isatty() else "plain"


__all__ = ["Progress"]
