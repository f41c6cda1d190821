"""The local executor: runs a Graph against a module by binding its nodes to torch hooks.

Each invoke is a cursor over its nodes in program order. Nodes run as soon as their inputs
exist; a node that reads or writes a hook site waits for that site's hook. At each hook the
invokes take their turns in the order they were written, each seeing only its rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..ir import HOOKED, Const, Graph, Node, Op, Ref, mutates
from ..ir.errors import (
    ExecutionError,
    ModuleNotCalledError,
    OutOfOrderError,
    StepsSkippedWarning,
)
from ..ir.functions import SKIPPED, resolve
from .batching import merge, narrow
from .control import StopRun, skipped_modules
from .source import traced_sources

INPUT = "input"
OUTPUT = "output"
RESULT = "result"
GRAD = "grad"
Site = tuple[str, str]  # (module path, hook kind): ("layer1", "output"), ("", "result")


def parse_target(target: str) -> tuple[Site, str]:
    """Split "h.0.inputs" into its site ("h.0", "input") and what it projects ("inputs")."""
    if target == RESULT:
        return ("", RESULT), RESULT
    path, _, kind = target.rpartition(".")
    return (path, INPUT if kind in ("input", "inputs", "skip") else OUTPUT), kind


@dataclass
class Plan:
    """What a graph needs from the model: its hook sites and, per invoke, its nodes.

    A plan depends on the graph's structure only, not on its constants, so it can be reused
    by every trace that records the same graph.
    """

    graph: Graph
    sites: dict[int, tuple[Site, str]] = field(default_factory=dict)
    modules: dict[str, set[str]] = field(default_factory=dict)
    invoke_nodes: list[list[Node]] = field(default_factory=list)
    tail_nodes: list[Node] = field(default_factory=list)
    uses: dict[int, int] = field(default_factory=dict)
    inputs: dict[int, tuple[int, ...]] = field(default_factory=dict)
    flat: set[int] = field(default_factory=set)
    reads_result: bool = False
    grads: dict[int, dict[int, Site]] = field(default_factory=dict)  # backward -> tensor -> site
    skips: set[str] = field(default_factory=set)  # modules whose forward may be skipped
    sources: set[str] = field(default_factory=set)  # modules whose call sites are read
    expanded: set[str] = field(default_factory=set)  # call sites whose callee is traced too
    caches: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    cached: dict[Site, list[int]] = field(default_factory=dict)  # site -> CACHE nodes

    @classmethod
    def build(cls, graph: Graph) -> Plan:
        """Group the nodes by invoke, find the hook sites and count each value's uses."""
        plan = cls(graph, invoke_nodes=[[] for _ in graph.invokes])
        for node in graph.nodes:
            if node.op in HOOKED and node.target == GRAD:
                tensor, backward = node.args[0].id, node.args[1].id
                site = (f"{tensor}/{backward}", GRAD)
                plan.sites[node.id] = (site, GRAD)
                plan.grads.setdefault(backward, {})[tensor] = site
            elif node.op in HOOKED:
                site, kind = parse_target(node.target)
                plan.sites[node.id] = (site, kind)
                if site[1] == RESULT:
                    plan.reads_result = True
                elif ".source." in site[0]:
                    parts = site[0].split(".source.")
                    plan.sources.add(parts[0])
                    for depth in range(2, len(parts)):
                        plan.expanded.add(".source.".join(parts[:depth]))
                else:
                    plan.modules.setdefault(site[0], set()).add(site[1])
                if kind == "skip":
                    plan.skips.add(site[0])
            elif node.op is Op.CACHE:
                paths, kinds = tuple(node.kwargs["paths"]), tuple(node.kwargs["kinds"])
                plan.caches[node.id] = (paths, kinds)
                for path in paths:
                    for kind in kinds:
                        plan.modules.setdefault(path, set()).add(kind)
                        plan.cached.setdefault((path, kind), []).append(node.id)
            ids = tuple(ref.id for ref in node.inputs())
            plan.inputs[node.id] = ids
            for id in ids:
                plan.uses[id] = plan.uses.get(id, 0) + 1
            if not node.kwargs and all(type(a) in _FLAT for a in node.args):
                plan.flat.add(node.id)
            if node.invoke < 0:
                plan.tail_nodes.append(node)
            else:
                plan.invoke_nodes[node.invoke].append(node)
        return plan


_FLAT = frozenset({Ref, Const, int, float, bool, str, type(None)})
_CONTROL = frozenset({Op.STOP, Op.BARRIER, Op.BACKWARD})


class SiteValue:
    """The value at one hook firing, shared by the invokes that take their turns on it."""

    __slots__ = ("full", "kind")

    def __init__(self, full: Any, kind: str) -> None:
        self.full = full
        self.kind = kind


class Cursor:
    """One invoke's position in its nodes, and the batch rows it owns."""

    __slots__ = (
        "index", "nodes", "start", "stop", "position", "last_hooked", "waiting_for", "fence"
    )

    def __init__(self, index: int, nodes: list[Node], start: int, stop: int | None) -> None:
        self.index = index
        self.nodes = nodes
        self.fence = len(nodes)  # during a backward pass: where its gradient work ends
        self.start = start
        self.stop = stop
        self.position = 0
        self.last_hooked: Node | None = None
        self.waiting_for: Ref | None = None  # a value from another invoke, not there yet

    @property
    def done(self) -> bool:
        return self.position >= len(self.nodes)


class Run:
    """Run-time state of one execution: values, saves, hook counts, cursors."""

    def __init__(self, plan: Plan, constants: list[Any], total_rows: int, debug: bool) -> None:
        self.plan = plan
        self.graph = plan.graph
        self.constants = constants
        self.total = total_rows
        self.debug = debug
        self.env: dict[int, Any] = {}
        self.saved: dict[int, Any] = {}
        self.remaining = dict(plan.uses)
        self.fired: dict[Site, int] = {}
        self.skipped: set[int] = set()
        self.stopped = False
        self.muted = 0  # > 0 while an intervention itself calls a module
        self.skip_values: dict[str, list[Any]] = {}
        self.arrived: dict[str, set[int]] = {}
        self.released = False  # a barrier opened during this hook: give waiting invokes a turn
        self.cache: dict[int, dict[Site, list[Any]]] = {id: {} for id in plan.caches}
        self.cursors = [
            Cursor(index, nodes, invoke.start, invoke.stop)
            for index, (nodes, invoke) in enumerate(
                zip(plan.invoke_nodes, self.graph.invokes, strict=True)
            )
        ]

    # hooks -------------------------------------------------------------------------------

    def fire(self, site: Site, value: Any) -> Any:
        """A hook site was reached: let every invoke take its turn, return the final value."""
        if self.muted:
            return value
        step = self.fired.get(site, 0)
        self.fired[site] = step + 1
        box = SiteValue(value, site[1])
        while True:
            for cursor in self.cursors:
                if cursor.position < len(cursor.nodes):
                    self.advance(cursor, site, step, box)
                    if cursor.waiting_for is not None:
                        self.check_wait_can_end(cursor)
            if not self.released:
                break
            self.released = False  # a barrier opened: the invokes waiting at it go on
        if self.plan.cached:
            for cache in self.plan.cached.get(site, ()):
                self.cache[cache].setdefault(site, []).append(box.full)
        return box.full

    def pre_hook(self, path: str, module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
        value = (args, kwargs)
        new = self.fire((path, INPUT), value)
        return None if new is value else new

    def post_hook(self, path: str, module: torch.nn.Module, args: Any, output: Any) -> Any:
        new = self.fire((path, OUTPUT), output)
        return None if new is output else new

    # cursors -----------------------------------------------------------------------------

    def advance(self, cursor: Cursor, site: Site | None, step: int, box: SiteValue | None) -> None:
        """Run the cursor's nodes until one waits for a hook other than this one."""
        nodes = cursor.nodes
        sites = self.plan.sites
        while cursor.position < cursor.fence:
            node = nodes[cursor.position]
            if node.guard is not None and not self.guard_holds(node):
                self.store(node, SKIPPED)  # inside `if proxy:` whose test was false
                self.release(node)
                cursor.position += 1
                continue
            if node.op in HOOKED:
                node_site, kind = sites[node.id]
                if node_site != site or node.step != step or box is None:
                    self.check_not_passed(cursor, node, node_site)
                    return
                self.run_hooked(cursor, node, kind, box)
                cursor.last_hooked = node
            elif node.op in _CONTROL:
                if not self.run_control(cursor, node):
                    return
                continue
            else:
                try:
                    self.run_node(node)
                except _Missing as missing:
                    cursor.waiting_for = missing.ref
                    return
                cursor.waiting_for = None
            cursor.position += 1

    def run_control(self, cursor: Cursor, node: Node) -> bool:
        """STOP, BARRIER or BACKWARD; False when the cursor must wait here."""
        if node.op is Op.STOP:
            cursor.position += 1
            self.release(node)
            raise StopRun()
        if node.op is Op.BARRIER:
            arrived = self.arrived.setdefault(node.target, set())
            if cursor.index not in arrived:
                arrived.add(cursor.index)
                self.released = len(arrived) == node.args[0] or self.released
            if len(arrived) < node.args[0]:
                return False  # wait for the other participants
            cursor.position += 1
            return True
        cursor.position += 1  # BACKWARD: its gradient hooks advance this cursor re-entrantly
        fence, cursor.fence = cursor.fence, _gradient_work_end(cursor, node)
        try:
            self.run_backward(node)
        finally:
            cursor.fence = fence
        return True

    def guard_holds(self, node: Node) -> bool:
        """Whether the condition of the `if proxy:` branch holding this node is true."""
        value = self.env.get(node.guard.id, SKIPPED)  # type: ignore[union-attr]
        return value is not SKIPPED and bool(value)

    def check_wait_can_end(self, cursor: Cursor) -> None:
        """Raise when a cursor waits for another invoke's value at a hook it cannot miss.

        The nodes up to its next module access belong to this hook's turn: an in-place edit
        among them would run after the hook returned and be silently lost; and if that next
        access has already fired, the cursor can never catch up. Either way, say which value
        was not ready instead.
        """
        waiting = cursor.nodes[cursor.position]
        assert cursor.waiting_for is not None
        for node in cursor.nodes[cursor.position :]:
            if node.op in HOOKED:
                site, _ = self.plan.sites[node.id]
                if self.fired.get(site, 0) <= node.step:
                    return
                break
            if mutates(node):
                break
        else:
            return
        raise _with_location(self.missing(cursor.waiting_for), waiting, self.debug)

    def check_not_passed(self, cursor: Cursor, node: Node, site: Site) -> None:
        """Raise OutOfOrderError when the site this node waits for has already fired."""
        if self.fired.get(site, 0) <= node.step:
            return
        previous = cursor.last_hooked
        if node.target == GRAD:
            raise OutOfOrderError(
                f"the .grad requested at {node.loc} was already computed and passed on: "
                "gradients arrive in reverse order of the forward pass, so read the .grad of "
                "later values first (for example layer 5 before layer 0)"
            )
        after = (
            f" after reading {_describe(previous.target)} at {previous.loc}"
            if previous is not None
            else ""
        )
        raise OutOfOrderError(
            f"{_describe(node.target)} was requested at {node.loc}{after}, but that module had "
            "already run in this forward pass. Access modules in the order the model calls "
            "them (for example layer 0 before layer 5), or use a separate invoke."
        )

    def finish(self) -> None:
        """After the model returned: run what is left, and fail on nodes still waiting.

        Nodes of steps that may never happen (generation ended early) are skipped with a
        warning, along with everything computed from them.
        """
        for cursor in self.cursors:
            while True:
                self.advance(cursor, None, 0, None)
                if cursor.done:
                    break
                node = cursor.nodes[cursor.position]
                waiting = cursor.waiting_for
                if self.stopped:
                    self.skipped.add(node.id)  # after tracer.stop(): never runs, no error
                    cursor.position += 1
                    self.release(node)
                    continue
                if node.op is Op.BARRIER:
                    arrived = len(self.arrived.get(node.target, ()))
                    raise _with_location(
                        ExecutionError(
                            f"barrier({node.args[0]}) reached by only {arrived} invoke(s): "
                            "call it in as many invokes as it has participants"
                        ),
                        node,
                        self.debug,
                    )
                if waiting is not None and waiting.id not in self.skipped:
                    raise _with_location(self.missing(waiting), node, self.debug)
                if waiting is None and node.target == GRAD:
                    raise ExecutionError(
                        f"the gradient requested at {node.loc} was never computed: the loss "
                        "does not depend on that value, or the backward pass never reached it"
                    )
                if waiting is None and ".source." in node.target:
                    raise ModuleNotCalledError(
                        f"{_describe(node.target)} requested at {node.loc} was never reached: "
                        "that call site is in a branch the forward did not take this time (print "
                        "the module's .source to see the call sites and their lines)"
                    )
                if waiting is None and node.id not in self.graph.optional:
                    site, _ = self.plan.sites[node.id]
                    count = self.fired.get(site, 0)
                    raise ModuleNotCalledError(
                        f"{_describe(node.target)} requested at {node.loc} was never reached: "
                        f"the module ran {count} time(s) in this run and step {node.step} was "
                        "asked for. Check the module path, the inputs, and any early stop."
                    )
                self.skip(cursor, node)
        for id, values in self.cache.items():
            self.saved[id] = values
        for node in self.plan.tail_nodes:
            if not self.stopped:
                self.run_node(node)

    def skip(self, cursor: Cursor, node: Node) -> None:
        """Pass over a node of a step that never happened (and what depends on it)."""
        if not self.skipped and node.op in HOOKED:
            site, _ = self.plan.sites[node.id]
            warnings.warn(
                f"{_describe(node.target)} at {node.loc}: step {node.step} never happened "
                f"(the module ran {self.fired.get(site, 0)} time(s), for example because "
                "generation ended early); that step's interventions were skipped",
                StepsSkippedWarning,
                stacklevel=2,
            )
        self.skipped.add(node.id)
        cursor.waiting_for = None
        cursor.position += 1
        self.release(node)

    # nodes -------------------------------------------------------------------------------

    def run_hooked(self, cursor: Cursor, node: Node, kind: str, box: SiteValue) -> None:
        """READ or WRITE at the site this hook is firing for, on this invoke's rows."""
        stop = cursor.stop
        whole = stop is None or kind == GRAD or (cursor.start == 0 and stop == self.total)
        try:
            if node.op is Op.READ:
                value = _project(box.full, kind)
                if stop is not None and not whole:
                    value = narrow(value, cursor.start, stop, self.total)
                self.store(node, value)
                return
            new = self.value(node.args[-1])
            if kind == "skip":
                if not whole:
                    raise ExecutionError(
                        "skip() in an invoke that owns only some of the batch rows cannot "
                        "stop the module from running for the others; skip it in every "
                        "invoke's place with one prompt-less tracer.invoke()"
                    )
                self.skip_values.setdefault(node.target.rpartition(".")[0], []).append(new)
                return
            if stop is not None and not whole:
                new = merge(_project(box.full, kind), new, cursor.start, stop, self.total)
            box.full = _inject(box.full, kind, new)
        except _Missing as missing:
            raise _with_location(self.missing(missing.ref), node, self.debug) from None
        except Exception as error:
            _with_location(error, node, self.debug)
            raise
        finally:
            self.release(node)

    def run_backward(self, node: Node) -> None:
        """Run `loss.backward()`, firing a gradient site for each value whose .grad is used."""
        try:
            loss, *rest = self.value(node.args)
            kwargs = self.value(node.kwargs) if node.kwargs else {}
        except _Missing as missing:
            raise _with_location(self.missing(missing.ref), node, self.debug) from None
        handles = []
        try:
            for tensor_id, site in self.plan.grads.get(node.id, {}).items():
                tensor = self.env[tensor_id]
                if not getattr(tensor, "requires_grad", False):
                    source = self.graph.node(tensor_id)
                    raise ExecutionError(
                        f"the .grad of the value from {source.loc} was requested, but that "
                        "value does not require grad: call .requires_grad_(True) on it "
                        "before computing the loss"
                    )
                handles.append(self.hook_grad(tensor, site))
            loss.backward(*rest, **kwargs)
        except Exception as error:
            _with_location(error, node, self.debug)
            raise
        finally:
            for handle in handles:
                handle.remove()
        self.release(node)

    def hook_grad(self, tensor: torch.Tensor, site: Site) -> Any:
        """Fire `site` with the gradient of `tensor` during the backward pass.

        A view (`output[0]`, an invoke's rows) is often not itself on the path to the loss:
        its gradient is then read from, and written into, the matching part of its base's.
        """
        base = tensor._base
        if base is None:
            return tensor.register_hook(partial(self.grad_hook, site))
        layout = (tensor.size(), tensor.stride(), tensor.storage_offset() - base.storage_offset())
        return base.register_hook(partial(self.view_grad_hook, site, layout, base.stride()))

    def grad_hook(self, site: Site, grad: Any) -> Any:
        new = self.fire(site, grad)
        return None if new is grad else new

    def view_grad_hook(
        self, site: Site, layout: tuple[Any, Any, int], base_stride: Any, grad: Any
    ) -> Any:
        if grad.stride() != base_stride:
            raise ExecutionError(
                "the gradient of a view could not be located in its base's gradient (their "
                "memory layouts differ); take .grad of the module's whole output instead"
            )
        size, stride, offset = layout
        view = grad.as_strided(size, stride, grad.storage_offset() + offset)
        new = self.fire(site, view)
        if new is not view:
            view.copy_(new)
        return grad

    def run_node(self, node: Node) -> None:
        """Run one node that needs no hook."""
        if node.id in self.plan.flat:
            env = self.env
            try:
                args = tuple(
                    env[a.id]
                    if type(a) is Ref
                    else self.constants[a.index]
                    if type(a) is Const
                    else a
                    for a in node.args
                )
            except KeyError as error:
                raise _Missing(Ref(error.args[0])) from None
            kwargs = {}
        else:
            args = self.value(node.args)
            kwargs = self.value(node.kwargs) if node.kwargs else {}
        try:
            match node.op:
                case Op.CALL:
                    result = resolve(node.target)(*args, **kwargs)
                case Op.METHOD if node.target == "__call__" and isinstance(
                    args[0], torch.nn.Module
                ):
                    self.muted += 1  # a module called by the intervention is not a step
                    try:
                        result = args[0](*args[1:], **kwargs)
                    finally:
                        self.muted -= 1
                case Op.METHOD:
                    result = getattr(args[0], node.target)(*args[1:], **kwargs)
                case Op.GETATTR:
                    result = getattr(args[0], node.target)
                case Op.GETITEM:
                    result = args[0][args[1]]
                case Op.SETITEM:
                    args[0][args[1]] = args[2]
                    result = None
                case Op.SAVE:
                    self.saved[node.args[0].id] = args[0]
                    result = None
                case Op.LOG:
                    print(*args, **kwargs)
                    result = None
                case Op.CACHE:
                    result = None  # values are captured at the hooks (see fire)
                case _:
                    raise ExecutionError(f"the local executor cannot run {node}")
        except Exception as error:
            _with_location(error, node, self.debug)
            raise
        self.store(node, result)
        self.release(node)

    def store(self, node: Node, value: Any) -> None:
        if self.remaining.get(node.id, 0) > 0:
            self.env[node.id] = value

    def release(self, node: Node) -> None:
        """Free each input of `node` at its last use."""
        remaining = self.remaining
        for id in self.plan.inputs[node.id]:
            left = remaining[id] - 1
            remaining[id] = left
            if left == 0:
                self.env.pop(id, None)

    def value(self, arg: Any) -> Any:
        """The run-time value of an argument: Refs and Consts replaced, containers rebuilt."""
        if isinstance(arg, Ref):
            try:
                return self.env[arg.id]
            except KeyError:
                raise _Missing(arg) from None
        if isinstance(arg, Const):
            return self.constants[arg.index]
        if isinstance(arg, tuple):
            return tuple(self.value(a) for a in arg)
        if isinstance(arg, list):
            return [self.value(a) for a in arg]
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.value(arg.start), self.value(arg.stop), self.value(arg.step))
        return arg

    def missing(self, ref: Ref) -> ExecutionError:
        source = self.graph.node(ref.id)
        return ExecutionError(
            f"the value %{ref.id} from {source.loc} (invoke {source.invoke}) is not available "
            "yet: invokes take their turns at each module in the order they were written, so a "
            "value read in an earlier invoke at a later module does not exist here yet."
        )


class _Missing(Exception):
    """A node's input does not exist yet; the cursor waits for it."""

    def __init__(self, ref: Ref) -> None:
        self.ref = ref


def _gradient_work_end(cursor: Cursor, backward: Node) -> int:
    """Where the nodes that use this backward pass's gradients end, in the cursor's nodes.

    They run inside the gradient hooks (where autograd records nothing); everything after
    them runs once the backward pass has returned.
    """
    derived: set[int] = set()
    end = cursor.position
    for index in range(cursor.position, len(cursor.nodes)):
        node = cursor.nodes[index]
        reads_grad = node.target == GRAD and node.args[1].id == backward.id
        if reads_grad or any(ref.id in derived for ref in node.inputs()):
            derived.add(node.id)
            end = index + 1
    return end


def _project(full: Any, kind: str) -> Any:
    """What a READ of `kind` sees of the site's value."""
    if kind == "input":
        args, kwargs = full
        if args:
            return args[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise ExecutionError("the module was called without arguments, so it has no .input")
    return full


def _inject(full: Any, kind: str, new: Any) -> Any:
    """The site's value after a WRITE of `kind` set it to `new`."""
    if kind == "input":
        args, kwargs = full
        if args:
            return ((new, *args[1:]), kwargs)
        first = next(iter(kwargs))
        return (args, {**kwargs, first: new})
    if kind == "inputs":
        if not (isinstance(new, tuple) and len(new) == 2 and isinstance(new[1], dict)):
            raise ExecutionError("set .inputs to a pair (args_tuple, kwargs_dict)")
        return (tuple(new[0]), new[1])
    return new


def _describe(target: str) -> str:
    if target == GRAD:
        return "a .grad"
    return "tracer.result()" if target == RESULT else f"model.{target}"


def _with_location(error: Exception, node: Node, debug: bool) -> Exception:
    """Add the user's file:line to an error raised by a node (once), keeping its type."""
    if getattr(error, "_nnsight_located", False) or node.loc is None:
        return error
    if debug:
        import linecache

        text = linecache.getline(node.loc.file, node.loc.line).strip()
        error.add_note(f"  in the intervention code at {node.loc}: {text}\n  graph node: {node}")
    else:
        error.add_note(f"  at {node.loc}")
    error._nnsight_located = True  # type: ignore[attr-defined]
    return error


def execute(
    plan: Plan,
    constants: list[Any],
    module_at: Callable[[str], torch.nn.Module],
    call: Callable[[], Any],
    total_rows: int,
    debug: bool = True,
) -> dict[int, Any]:
    """Run `call()` with the plan's interventions; return saved values.

    `module_at(path)` finds the module of a hook site ("" is the root).

    Hooks exist only while this runs, on the modules the plan needs, and are removed even on
    error. The result maps the id of each saved node to its value after the run.
    """
    run = Run(plan, constants, total_rows, debug)
    handles = []
    try:
        for path, kinds in plan.modules.items():
            module = module_at(path)  # looked up each run: submodules can be replaced
            if INPUT in kinds:
                hook = partial(run.pre_hook, path)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            if OUTPUT in kinds:
                handles.append(module.register_forward_hook(partial(run.post_hook, path)))
        if plan.skips or plan.sources:
            sources = {path: module_at(path) for path in plan.sources}
            with skipped_modules(plan.skips, module_at, run.skip_values), traced_sources(
                sources, run.fire, plan.expanded
            ):
                _run_model(run, call)
        else:
            _run_model(run, call)
    finally:
        for handle in handles:
            handle.remove()
    return run.saved


def _run_model(run: Run, call: Callable[[], Any]) -> None:
    """Advance every invoke, run the model, then let the invokes finish."""
    try:
        for cursor in run.cursors:
            run.advance(cursor, None, 0, None)
        result = call()
        if run.plan.reads_result:
            run.fire(("", RESULT), result)
    except StopRun:
        run.stopped = True
    run.finish()


def execute_graph(
    graph: Graph, root: torch.nn.Module, call: Callable[[], Any], total_rows: int
) -> dict[int, Any]:
    """Plan and execute a graph in one step (for tools and tests)."""
    return execute(Plan.build(graph), graph.constants, root.get_submodule, call, total_rows)
