"""Run a recorded graph on a server: what `remote=True` does when a trace's block ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..ir.graph import Graph
from ..ir.wire import dumps
from .client import Client, Job
from .display import Progress

if TYPE_CHECKING:
    from ..local import LocalBlocks
    from ..model import NNsight


def submit(model: NNsight, payload: bytes, host: str, names: dict[int, str]) -> Job:
    """Send a wire payload for `model` to the server at `host`; the job, queued."""
    client = Client.shared(host)
    answer = client.submit(payload, model._remote_key(), names)
    job = Job(client, str(answer["job_id"]), names)
    job.on_event = Progress(job.id)
    return job


def run_graph(
    model: NNsight, graph: Graph, host: str, names: dict[int, str], blocking: bool = True,
    blocks: LocalBlocks | None = None,
) -> tuple[Job, dict[int, Any]]:
    """Run `graph` (with the model's edits merged in, as a server applies none of its own,
    and this thread's autograd mode) on the server; the job and, when `blocking`, its saved
    values by node id. The job runs the trace's nnsight.local() `blocks` here when the
    server reaches them."""
    job = submit(model, dumps(model._for_server(graph)), host, names)
    job.local_blocks = blocks if blocks else None
    if not blocking:
        return job, {}
    return job, job.saved()


__all__ = ["run_graph", "submit"]
