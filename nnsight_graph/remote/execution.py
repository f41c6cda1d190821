"""What a server does with one job: read the payload as untrusted, run it, return the results.

This is the one entry point both the server's workers and `remote="local"` use, so the
in-process path proves exactly what a server runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir.graph import Graph
from ..ir.limits import SERVER, Limits
from ..ir.results import dumps_results
from ..ir.wire import loads

if TYPE_CHECKING:
    from ..model import NNsight


def rows_of(graph: Graph) -> int:
    """The batch rows a graph's invokes own (a prompt-less invoke owns none)."""
    return max((inv.stop or 0 for inv in graph.invokes), default=0)


def run_payload(model: NNsight, payload: bytes, limits: Limits = SERVER) -> bytes:
    """Run a wire payload on `model` under `limits`; the saved values as a results payload.

    The graph is untrusted (it runs only what ir.registry allows). The sender already merged
    its model's edits into it, so the server model's own edits are not applied.
    """
    graph = loads(payload, limits=limits)
    saved = model._execute(graph, rows_of(graph), None, limits, edits=False)
    return dumps_results(saved)


__all__ = ["rows_of", "run_payload"]
