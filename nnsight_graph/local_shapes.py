"""The declared shapes of what `nnsight.local()` blocks send back to the server.

When a trace that runs elsewhere has blocks whose values later nodes use, the client learns
what each such value is without running the real model: a shape pass runs the graph the
server will run as a scan (fake tensors; the client's model needs no weights for it), and
each LOCAL node there runs its block's nodes on the fake values it reads. Effects do not
happen in the pass: the graph's print and save nodes are left out, the block runs only the
nodes its returned values need, and what those print goes nowhere. Each value the server
needs back is declared in the LOCAL node (kwargs["declared"], one entry per output id): a
tensor's shape and dtype ("floating" for any floating dtype, as the server may run the model
in another precision), a builtin scalar's type, or "unknown" (a data-dependent op, an op fake
tensors refuse, another kind of value; then only the size caps apply). The pass never fails
the trace: what it cannot decide is unknown. The client (nnsight_graph.local) and the server
(backends.local_blocks) check the values against the declaration with the same `mismatch`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .backends.apply import apply
from .backends.local_blocks import dtype_name, serving_local_blocks
from .backends.values import arg_value
from .ir import Graph, Op
from .ir.op_table import DECLARED_DTYPES, DECLARED_TYPES

if TYPE_CHECKING:
    from .local import LocalBlock, LocalBlocks
    from .model import NNsight

_EFFECTS = frozenset({Op.LOG, Op.SAVE})  # left out of the pass: nothing the user sees happens
_PLAN_KEY = ("nnsight.local() shape pass",)  # the model's plan cache slot for the pass


class _Undecided(Exception):
    """A value the run needs from a block has no fake value: the pass stops there."""


def declare(model: NNsight, graph: Graph, blocks: LocalBlocks, total_rows: int) -> Graph:
    """`graph` (what the server runs) with each LOCAL node that asks values back declaring
    them; the blocks learn their declarations too. No pass when no block value is used."""
    asked = [n for n in graph.nodes if n.op is Op.LOCAL and n.kwargs["outputs"]]
    if not asked:
        return graph  # blocks that only print or plot: nothing comes back, nothing to declare
    found: dict[int, dict[str, Any]] = {}
    if graph.method == "trace":  # a generation's steps have other shapes than one forward
        try:
            _run_pass(model, graph, blocks, total_rows, found)
        except Exception:  # noqa: BLE001  (never the trace's failure: undecided is unknown)
            pass
    nodes = []
    for node in graph.nodes:
        if node.op is Op.LOCAL and node.kwargs["outputs"]:
            declared = [found.get(id) or {"id": id, "kind": "unknown"}
                        for id in node.kwargs["outputs"]]
            blocks.blocks[node.kwargs["block"]].declared = {e["id"]: e for e in declared}
            node = node._replace(kwargs={**node.kwargs, "declared": declared})
        nodes.append(node)
    return graph.with_nodes(nodes)


def _run_pass(
    model: NNsight, graph: Graph, blocks: LocalBlocks, total_rows: int,
    found: dict[int, dict[str, Any]],
) -> None:
    """Run `graph` as a scan with its effects left out; each LOCAL node's block runs on the
    fake values it reads and puts what it returns into `found` (by node id)."""
    def handle(block: int, downloads: dict[int, Any], outputs: list[int]) -> dict[int, Any]:
        env = _run_block(blocks.blocks[block], downloads, outputs)
        values = {}
        for id in outputs:
            if id not in env:
                raise _Undecided(id)
            found[id] = describe(id, env[id])
            values[id] = env[id]
        return values

    merged = model._for_server(graph)  # the model's edits first, as the server runs them
    kept = [n for n in merged.nodes if n.op not in _EFFECTS]
    scan = replace(merged.with_nodes(kept), method="scan")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            warnings.catch_warnings(), serving_local_blocks(handle):
        warnings.simplefilter("ignore")
        model._execute(scan, total_rows, _PLAN_KEY, edits=False)


def _run_block(block: LocalBlock, downloads: dict[int, Any], outputs: list[int]) -> dict[int, Any]:
    """The fake values of the block's nodes that `outputs` need (its other nodes do not run);
    a node that fails, or reads one that did, has none."""
    needed = set(outputs)
    for node in reversed(block.nodes):
        if node.id in needed:
            needed.update(r.id for r in node.inputs())
    env = dict(downloads)
    constants = block.constants
    for node in block.nodes:
        if node.id not in needed or node.op in _EFFECTS:
            continue
        try:
            if node.guard is not None and not env[node.guard.id]:
                continue  # a plain false condition; a fake one raises: undecided
            args = tuple(arg_value(a, env, constants) for a in node.args)
            kwargs = {k: arg_value(v, env, constants) for k, v in node.kwargs.items()}
            env[node.id] = apply(node, args, kwargs, {})
        except Exception:  # noqa: BLE001, S112  (undecided: this node and its users have no value)
            continue
    return env


def describe(id: int, value: Any) -> dict[str, Any]:
    """The declaration entry of a block's (fake) value."""
    if isinstance(value, torch.Tensor):
        shape = list(value.shape)
        dtype = "floating" if value.is_floating_point() else dtype_name(value.dtype)
        if all(type(size) is int for size in shape) and dtype in DECLARED_DTYPES:
            return {"id": id, "kind": "tensor", "shape": shape, "dtype": dtype}
    elif type(value).__name__ in DECLARED_TYPES and type(value).__module__ == "builtins":
        return {"id": id, "kind": "value", "type": type(value).__name__}
    return {"id": id, "kind": "unknown"}


__all__ = ["declare", "describe"]
