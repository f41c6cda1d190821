"""What a server does with one job: read the payload as untrusted, run it, return the results.

This is the one entry point both the server's workers and `remote="local"` use, so the
in-process path proves exactly what a server runs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from ..ir.graph import Graph
from ..ir.limits import SERVER, Limits
from ..ir.results import dumps_results
from ..ir.wire import loads
from ..passes.trust import check_untrusted

if TYPE_CHECKING:
    from ..model import NNsight


def rows_of(graph: Graph) -> int:
    """The batch rows a graph's invokes own (a prompt-less invoke owns none)."""
    return max((inv.stop or 0 for inv in graph.invokes), default=0)


def check_payload(payload: bytes, module_paths: Collection[str], limits: Limits = SERVER) -> Graph:
    """The graph in a wire payload, refused (an NNsightError naming why) unless it reads
    within `limits` and uses only what ir.registry allows and modules in `module_paths`.

    What a server runs on submit, before a job is queued; the worker checks again when it
    runs the payload (so a payload is never run unchecked).
    """
    graph = loads(payload, limits=limits)
    check_untrusted(graph, module_paths, limits)
    return graph


def run_payload(model: NNsight, payload: bytes, limits: Limits = SERVER) -> bytes:
    """Run a wire payload on `model` under `limits`; the saved values as a results payload.

    The graph is untrusted (it runs only what ir.registry allows). The sender already merged
    its model's edits into it, so the server model's own edits are not applied.
    """
    graph = loads(payload, limits=limits)
    saved = model._execute(graph, rows_of(graph), None, limits, edits=False)
    return dumps_results(saved)


__all__ = ["check_payload", "rows_of", "run_payload"]
