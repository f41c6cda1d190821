"""Co-batching: jobs of different users for the same model run as one forward pass.

A job's graph already says which batch rows each of its invokes owns, and every node runs on
its own invoke's rows. Jobs whose graphs stay within their rows (`merge_key` is not None) and
whose runs are alike (the same key: method, options and the token width of every input row)
are concatenated into one graph (`merge`): each job's invokes become invokes of the merged
graph with their rows shifted, its nodes and constants renumbered, so no node of one job can
name a value or a row of another. After the run, `split` hands each job its own saved values.

What a job may not do to be merged (each reaches beyond its own rows or its own output):
stop the run, skip a module, wait at a barrier, take gradients, cache modules, read the
call's whole result or a `.source` call site, call a module, print (its output is the job's
own), run an nnsight.local() block, or have a prompt-less invoke or a node outside any invoke.
A job whose rows differ in width is not merged either: padding would move its positions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..backends.guard import RunCancelled
from ..ir import Const, Graph, Invoke, Node, Op, Ref, const, map_args, ref
from ..ir.errors import WireFormatError
from ..ir.limits import Limits
from ..ir.results import dumps_results
from ..ir.session import SessionGraph
from ..ir.wire import loads_any
from .execution import rows_of, run_graph

if TYPE_CHECKING:
    from ..model import NNsight

_ALONE = frozenset({Op.STOP, Op.SKIP, Op.BARRIER, Op.BACKWARD, Op.CACHE, Op.CALL_MODULE,
                    Op.LOG, Op.LOCAL, Op.RESULT, Op.READ_GRAD, Op.WRITE_GRAD})
_ROW_SITES = frozenset({"output", "input", "inputs"})


def merge_key(graph: Graph, widths: list[int] | None) -> str | None:
    """What jobs must share to run merged (None: this one runs alone). `widths` are the token
    widths of the job's input rows (None when they are not known)."""
    if graph.method != "trace" or not graph.invokes or not widths or len(set(widths)) != 1:
        return None
    if any(invoke.stop is None for invoke in graph.invokes):
        return None
    for node in graph.nodes:
        if node.op in _ALONE or node.invoke < 0:
            return None
        if node.op in (Op.READ, Op.WRITE):
            site = node.site
            if site is None or site.kind not in _ROW_SITES or site.in_source or not site.path:
                return None
    options = json.dumps(graph.options, sort_keys=True, default=repr)
    return f"{graph.method}|{widths[0]}|{options}"


def merge(graphs: list[Graph]) -> tuple[Graph, list[tuple[int, int]]]:
    """One graph running every graph's invokes on its own rows; per graph, the (first id,
    end) range its nodes were moved to (for `split`)."""
    nodes: list[Node] = []
    constants: list[Any] = []
    invokes: list[Invoke] = []
    optional: set[int] = set()
    spans: list[tuple[int, int]] = []
    next_id = rows = 0
    for graph in graphs:
        ids, consts, first_invoke = next_id, len(constants), len(invokes)

        def moved(leaf: Ref | Const, ids: int = ids, consts: int = consts) -> Ref | Const:
            return ref(leaf.id + ids) if type(leaf) is Ref else const(leaf.index + consts)

        constants.extend(graph.constants)
        for invoke in graph.invokes:
            assert invoke.stop is not None  # merge_key let no prompt-less invoke through
            invokes.append(Invoke(
                len(invokes), map_args(invoke.args, moved), map_args(invoke.kwargs, moved),
                invoke.start + rows, invoke.stop + rows,
            ))
        for node in graph.nodes:
            nodes.append(node._replace(
                id=node.id + ids,
                args=map_args(node.args, moved),
                kwargs=map_args(node.kwargs, moved) if node.kwargs else node.kwargs,
                invoke=node.invoke + first_invoke,
                guard=None if node.guard is None else ref(node.guard.id + ids),
            ))
        optional.update(i + ids for i in graph.optional)
        end = ids + max((n.id for n in graph.nodes), default=-1) + 1
        spans.append((ids, end))
        next_id = end
        rows += max(invoke.stop or 0 for invoke in graph.invokes)
    first = graphs[0]
    merged = Graph(nodes, constants, invokes, frozenset(optional), first.method,
                   dict(first.options), trusted=False)
    return merged, spans


def split(saved: dict[int, Any], spans: list[tuple[int, int]]) -> list[dict[int, Any]]:
    """Each merged graph's saved values, under its own node ids again."""
    return [{id - start: value for id, value in saved.items() if start <= id < end}
            for start, end in spans]


def run_batch(model: NNsight, payloads: list[bytes], limits: Limits) -> list[bytes | BaseException]:
    """Run job payloads that share a merge key as one forward pass; per job its results
    payload, or its error. A payload that does not read fails only its own job; when the
    merged run fails, each job runs again alone, so an error of one job fails only that job.
    A cancelled run (backends.guard.RunCancelled) is raised: it stops every job."""
    results: list[bytes | BaseException | None] = []
    graphs: list[Graph] = []
    for payload in payloads:
        try:
            job = loads_any(payload, limits=limits)
            if not isinstance(job, Graph):
                raise WireFormatError("a session payload cannot run merged with other jobs")
        except Exception as error:
            results.append(error)
            continue
        results.append(None)
        graphs.append(job)
    keys = {merge_key(graph, input_widths(model, graph)) for graph in graphs}
    if len(graphs) > 1 and len(keys) == 1 and None not in keys:  # checked again, here
        ran = _merged(model, graphs, limits)
    else:
        ran = [_alone(model, graph, limits) for graph in graphs]
    outcomes = iter(ran)
    return [next(outcomes) if result is None else result for result in results]


def _merged(model: NNsight, graphs: list[Graph], limits: Limits) -> list[bytes | BaseException]:
    merged, spans = merge(graphs)
    try:
        saved = run_graph(model, merged, replace(limits, nodes=limits.nodes * len(graphs)))
    except RunCancelled:
        raise
    except Exception:
        return [_alone(model, graph, limits) for graph in graphs]
    return [dumps_results(values) for values in split(saved, spans)]


def _alone(model: NNsight, graph: Graph, limits: Limits) -> bytes | BaseException:
    try:
        return dumps_results(run_graph(model, graph, limits))
    except RunCancelled:
        raise
    except Exception as error:
        return error


def batch_key(shape: Any, job: Graph | SessionGraph) -> tuple[str | None, int]:
    """What the server stores with a checked job at submit: its merge key on the model
    `shape` (None: it runs alone; a session always does) and the batch rows it owns."""
    if not isinstance(job, Graph):
        return None, 0
    return merge_key(job, input_widths(shape, job)), rows_of(job)


def input_widths(model: Any, graph: Graph) -> list[int] | None:
    """The token width of every input row of the graph's invokes, for a LanguageModel
    (tokenized as its run would); None when rows are padded, inputs are not tokens, or an
    invoke's rows (start, stop) are not the rows its input makes, in order (a payload that
    claims other rows than it brings could otherwise reach another job's rows)."""
    token_rows = getattr(model, "_token_rows", None)
    if token_rows is None:
        return None
    from ..model import _decode  # the model module imports the remote package lazily

    widths: list[int] = []
    for invoke in graph.invokes:
        try:
            args, kwargs = _decode((invoke.args, invoke.kwargs), graph.constants)
            rows = token_rows(args, kwargs)
        except Exception:  # not tokens: the run will say so; it is not merged
            return None
        if invoke.start != len(widths) or invoke.stop != len(widths) + len(rows):
            return None  # the rows it claims are not the rows its input makes: never merged
        for ids, mask in rows:
            if not all(mask):
                return None
            widths.append(len(ids))
    return widths


__all__ = ["batch_key", "input_widths", "merge", "merge_key", "run_batch", "split"]
