"""`with nnsight.local():` (also `tracer.local()`): a block of a remote trace that runs on the
client, never on the server.

A local trace runs the block in this process anyway, so there the block is only a marker. In
a trace that runs elsewhere (`remote=True`, `remote="local"`), the block's nodes stay here:
the server runs the model's hooks (a `.output` read inside the block is one), and at the
block's LOCAL node sends the values the block reads; this process runs the block's nodes on
them (print, plot, any Python) and, when later nodes of the trace use values the block made,
sends those back. Proxies the trace body holds after the block are pointed at those values.

Inside a block nothing may change the model's run (writes, skips, stop, backward, barriers,
caches, in-place changes of the run's values): do those after the block.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .backends.apply import apply
from .backends.local_blocks import mismatch
from .backends.values import arg_value
from .ir import Graph, GraphBuildError, NNsightError, Node, Op, Ref, SourceLoc, mutates, ref
from .ir.errors import add_note
from .proxy import _set_id
from .recorder import Recorder, _proxies_in, active

_SERVER_ONLY = frozenset(
    {Op.STOP, Op.BARRIER, Op.BACKWARD, Op.CACHE, Op.SKIP, Op.WRITE, Op.WRITE_GRAD}
)


@dataclass
class LocalBlock:
    """One recorded `nnsight.local()` block: its nodes (run here) and its LOCAL node."""

    index: int
    nodes: list[Node]
    constants: list[Any]
    local: int  # the LOCAL node's id
    loc: SourceLoc | None = None  # the LOCAL node's: where the user's block is
    outputs: dict[int, int] = field(default_factory=dict)  # GETITEM node id -> block node id
    # block node id -> what the shape pass declared it is (nnsight_graph.local_shapes)
    declared: dict[int, dict[str, Any]] = field(default_factory=dict)

    def run(self, downloads: dict[int, Any], saved: dict[int, Any]) -> dict[int, Any]:
        """Run the block's nodes on the values the server sent (by node id); every value
        the block computed, by node id. Values it saves go into `saved`."""
        env = dict(downloads)
        constants = self.constants
        for node in self.nodes:
            if node.guard is not None and not env.get(node.guard.id):
                continue  # inside an `if` on a traced value that was false
            try:
                args = tuple(arg_value(a, env, constants) for a in node.args)
                kwargs = {k: arg_value(v, env, constants) for k, v in node.kwargs.items()}
                env[node.id] = apply(node, args, kwargs, saved)
            except Exception as error:
                where = f" at {node.loc}" if node.loc else ""
                add_note(error, f"  in the nnsight.local() block{where}: {node}")
                raise
        return env

    def refusal(self, id: int, problem: str) -> str:
        """Why the client does not send block value `id`, which is not what was declared."""
        made = next((n for n in self.nodes if n.id == id), None)
        by = f" (made at {made.loc}: {made.loc.text.strip()})" if made and made.loc else ""
        where = f" at {self.loc}" if self.loc else ""
        return (
            f"the nnsight.local() block{where} returned for %{id}{by} {problem} (the shape "
            "pass ran the trace on fake values of the same inputs before it was sent), so it "
            "was not sent and the run stops. Make the value depend only on the values "
            "the block reads, not on other state of this process; if the server hosts another "
            "model than this client's, load this one with LanguageModel(NAME) of the name it "
            "hosts"
        )


class LocalBlocks:
    """The `nnsight.local()` blocks of one trace and what they saved while it ran."""

    def __init__(self, blocks: list[LocalBlock]) -> None:
        self.blocks = {block.index: block for block in blocks}
        self.saved: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def handle(self, block: int, downloads: dict[int, Any], outputs: list[int]) -> dict[int, Any]:
        """Run block `block` on the values the server sent; the values it asked back."""
        found = self.blocks.get(block)
        if found is None:
            raise NNsightError(
                f"the server ran nnsight.local() block {block}, which this trace has not"
            )
        env = found.run(downloads, self.saved)
        values = {id: env[id] for id in outputs}
        for id, value in values.items():
            entry = found.declared.get(id)
            problem = mismatch(entry, value) if entry is not None else ""
            if problem:
                raise NNsightError(found.refusal(id, problem))
        return values

    def bind(self, saved: dict[int, Any]) -> dict[int, Any]:
        """The run's saved values with what the blocks saved (also under the ids of the
        proxies that were pointed at block values)."""
        merged = {**saved, **self.saved}
        for block in self.blocks.values():
            for getitem, node in block.outputs.items():
                if node in self.saved and getitem not in merged:
                    merged[getitem] = self.saved[node]
        return merged


class LocalContext:
    """What `nnsight.local()` returns: the block's `with` statement."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.start = 0

    def __enter__(self) -> LocalContext:
        recorder = active()
        if recorder is None:
            raise GraphBuildError(
                "nnsight.local() marks part of a trace that runs on the client: use it inside "
                "`with model.trace(..., remote=True):`"
            )
        if recorder.local_start is not None:
            raise GraphBuildError("nnsight.local() blocks do not nest: remove the inner one")
        if recorder.session is not None and recorder.session.remote:
            raise GraphBuildError(
                "nnsight.local() inside a session that runs elsewhere is not supported yet: "
                "give the block a trace of its own with remote=True after the session, or run "
                "the session here (leave out remote=)"
            )
        recorder.local_start = self.start = len(recorder.nodes)
        self.recorder = recorder
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        recorder = self.recorder
        assert recorder is not None
        recorder.local_start = None
        if exc_type is not None or not recorder.remote:
            return  # a local run: the block runs here with the rest of the trace
        frame = sys._getframe(1)  # the trace body that holds the block's proxies
        _split(recorder, self.start, list(frame.f_locals.values()))


def _split(recorder: Recorder, start: int, held: list[Any]) -> None:
    """Make the nodes recorded since `start` a block run by the client: a LOCAL node that
    sends the values they read, and a GETITEM per block value a proxy in `held` stands for
    (the proxy is pointed at it)."""
    for proxy in [p for value in held for p in _proxies_in(value) if p._nn_id is None]:
        root = proxy
        while root._nn_id is None and root._nn_parent is not None:
            root = root._nn_parent
        if root._nn_id is not None and root._nn_id >= start:
            proxy._nn_node()  # `x = value.shape` in the block: recorded in the block
    span = recorder.nodes[start:]
    block_ids: set[int] = set()
    for node in span:
        if _runs_on_server(node, block_ids):
            continue
        block_ids.add(node.id)
    block_nodes = [n for n in span if n.id in block_ids]
    inputs = sorted({r.id for n in block_nodes for r in n.inputs() if r.id not in block_ids})
    index = len(recorder.local_blocks)
    local = recorder.append(
        Op.LOCAL,
        "",
        tuple(ref(i) for i in inputs),
        {"block": index, "inputs": inputs, "outputs": []},
    )
    block = LocalBlock(index, block_nodes, recorder.constants, local, recorder.nodes[local].loc)
    for proxy in {id(p): p for value in held for p in _proxies_in(value)}.values():
        made = proxy._nn_id
        if proxy._nn_recorder is recorder and made is not None and made in block_ids:
            getitem = recorder.append(Op.GETITEM, "", (ref(local), made), {})
            block.outputs[getitem] = made
            _set_id(proxy, getitem)
    recorder.local_ids = recorder.local_ids | block_ids
    recorder.local_blocks = [*recorder.local_blocks, block]


def _runs_on_server(node: Node, block_ids: set[int]) -> bool:
    """Whether a node recorded inside a block stays in the graph the server runs (a hook
    read, a module call, a save of the run's value); refuse what a block may not do."""
    uses_block = any(r.id in block_ids for r in node.inputs())
    op = node.op
    if op in _SERVER_ONLY:  # of the hook ops only READ is left, and it reads no block value
        where = f" at {node.loc}" if node.loc else ""
        raise GraphBuildError(
            f"{node.op.value} {node.target}{where} changes the model's run, which happens on "
            "the server, inside an nnsight.local() block that runs on the client: move it "
            "after the block"
        )
    if op is Op.CALL_MODULE and uses_block:
        raise GraphBuildError(
            f"calling {node.target} on a value of an nnsight.local() block runs the model's "
            "module on the client, which has no weights: call it after the block"
        )
    if op is Op.READ or op is Op.RESULT or op is Op.READ_GRAD or op is Op.CALL_MODULE:
        return True
    if op is Op.SAVE:
        return not uses_block
    first = node.args[0] if node.args else None
    if mutates(node) and type(first) is Ref and first.id not in block_ids:
        where = f" at {node.loc}" if node.loc else ""
        raise GraphBuildError(
            f"{node.op.value} {node.target}{where} changes a value of the model's run inside an "
            "nnsight.local() block, which runs on the client and would change only its copy: "
            "make the change after the block"
        )
    return False


def shipped(graph: Graph, recorder: Recorder) -> tuple[Graph, LocalBlocks]:
    """The graph a server runs for a trace with nnsight.local() blocks (their nodes taken
    out, each LOCAL node asking back the block values later nodes use), and the blocks."""
    blocks = LocalBlocks(recorder.local_blocks)
    if not blocks:
        return graph, blocks
    local_ids = recorder.local_ids
    kept = [n for n in graph.nodes if n.id not in local_ids]
    used = {r.id for n in kept for r in n.inputs()}
    getitems = {g: b for b in recorder.local_blocks for g in b.outputs}
    for node in kept:
        stray = [r.id for r in node.inputs() if r.id in local_ids]
        if stray:
            where = f" at {node.loc}" if node.loc else ""
            raise GraphBuildError(
                f"{node.op.value} {node.target}{where} uses a value made inside an "
                "nnsight.local() block that the trace body no longer names; assign it to a "
                "variable in the block and use that variable after it"
            )
    nodes = []
    for node in kept:
        if node.id in getitems and node.id not in used:
            continue  # a block value nothing on the server uses: never sent back
        if node.op is Op.LOCAL:
            block = blocks.blocks[node.kwargs["block"]]
            outputs = sorted({v for g, v in block.outputs.items() if g in used})
            node = node._replace(kwargs={**node.kwargs, "outputs": outputs})
        nodes.append(node)
    return graph.with_nodes(nodes), blocks


def local() -> LocalContext:
    """`with nnsight.local():` inside a remote trace: the block runs on the client."""
    return LocalContext()


__all__ = ["LocalBlock", "LocalBlocks", "LocalContext", "local", "shipped"]
