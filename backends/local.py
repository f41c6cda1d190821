"""The local executor: runs a Graph against a module by binding its nodes to torch hooks.

Each invoke is a cursor over its nodes in program order. Nodes run as soon as their inputs
exist; a node that reads or writes a hook site waits for that site's hook. At each hook the
invokes take their turns in the order they were written, each seeing only its rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..ir import GRADIENTS, HOOKED, READS, Const, Graph, Node, Op, Ref, mutates, ref
from ..ir.errors import (
    ExecutionError,
    ModuleNotCalledError,
    StepsSkippedWarning,
)
from ..ir.functions import SKIPPED
from .apply import apply
from .batching import merge, narrow
from .control import SkipCall, StopRun, skipped_modules
from .gradients import GradientSteps, gradient_work_end
from .guard import Guard
from .hooks import RunHooks
from .plan import (
    _CONTROL,
    GRAD,
    RESULT,
    Cursor,
    Plan,
    Site,
    SiteValue,
)
from .source import traced_sources
from .straight import execute_straight
from .values import (
    Missing,
    arg_value,
    describe,
    inject,
    not_called,
    out_of_order,
    project,
    with_location,
)


class Run(GradientSteps):
    """Run-time state of one execution: values, saves, hook counts, cursors."""

    def __init__(
        self,
        plan: Plan,
        constants: list[Any],
        total_rows: int,
        debug: bool,
        guard: Guard | None = None,
        module_at: Callable[[str], torch.nn.Module] | None = None,
    ) -> None:
        self.plan = plan
        self.module_at = module_at or _no_model  # for the model's modules the intervention calls
        self.apply = apply if guard is None else guard.apply  # an untrusted graph's checks
        self.graph = plan.graph
        self.constants = constants
        self.total = total_rows
        self.debug = debug
        self.env: dict[int, Any] = {}
        self.saved: dict[int, Any] = {}
        self.remaining = dict(plan.uses)
        self.fired: dict[Site, int] = {}
        self.skipped: set[int] = set()
        self.stopping = False  # a tracer.stop() was reached: the run ends after this hook
        self.stopped = False  # the run has ended at a tracer.stop()
        self.muted = 0  # > 0 while an intervention itself calls a module
        self.skip_calls: dict[str, SkipCall] = {}  # module path -> its skipped current call
        self.arrived: dict[str, set[int]] = {}
        self.released = False  # a barrier opened during this hook: give waiting invokes a turn
        self.cache: dict[int, dict[Site, list[Any]]] = (
            {id: {} for id in plan.caches} if plan.caches else {}
        )
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
        try:
            while True:
                for cursor in self.cursors:
                    if cursor.position < len(cursor.nodes):
                        self.advance(cursor, site, step, box)
                        if cursor.waiting_for is not None:
                            self.check_wait_can_end(cursor)
                if not self.released:
                    break
                self.released = False  # a barrier opened: the invokes waiting at it go on
        finally:
            if self.plan.cached:  # tracer.stop() ends the run after this site, not before it
                self.keep(site, box.full)
        if self.stopping:  # every invoke had its turn here; nothing after this site runs
            raise StopRun()
        return box.full

    def keep(self, site: Site, value: Any) -> None:
        """Give the caches listening at this site their rows of its final value."""
        for spec in self.plan.cached.get(site, ()):
            self.cache[spec.id].setdefault(site, []).append(spec.keep(value, self.total))

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
                except Missing as missing:
                    cursor.waiting_for = missing.ref
                    return
                cursor.waiting_for = None
            cursor.position += 1

    def run_control(self, cursor: Cursor, node: Node) -> bool:
        """STOP, BARRIER or BACKWARD; False when the cursor must wait here."""
        if node.op is Op.STOP:
            # the other invokes still take their turn at this hook (as in nnsight), then the
            # run ends: this invoke never goes past here
            cursor.position += 1
            cursor.fence = cursor.position
            self.release(node)
            self.stopping = True
            return False
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
        fence, cursor.fence = cursor.fence, gradient_work_end(cursor, node)
        try:
            self.run_backward(node)
        finally:
            cursor.fence = fence
        return True

    def guard_holds(self, node: Node) -> bool:
        """Whether the condition of the `if proxy:` branch holding this node is true."""
        value = self.env.get(node.guard.id, SKIPPED)  # type: ignore[union-attr]
        try:
            return value is not SKIPPED and bool(value)
        except Exception as error:  # a loaded graph may guard on any value (a 2-row tensor)
            with_location(error, node, self.debug)
            raise

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
        raise with_location(self.missing(cursor.waiting_for), waiting, self.debug)

    def check_not_passed(self, cursor: Cursor, node: Node, site: Site) -> None:
        """Raise OutOfOrderError when the site this node waits for has already fired."""
        if self.fired.get(site, 0) <= node.step:
            return
        raise out_of_order(node, cursor.last_hooked)

    def finish(self) -> None:
        """After the model returned: run what is left, and fail on nodes still waiting.

        Nodes of steps that may never happen (generation ended early) are skipped with a
        warning, along with everything computed from them.
        """
        for cursor in self.cursors:
            while True:
                if self.stopped:  # after tracer.stop() nothing runs, in any invoke
                    self.skip_rest(cursor)
                    break
                self.advance(cursor, None, 0, None)
                if self.stopping:  # a stop among the nodes that run after the model
                    self.stopped = True
                    continue
                if cursor.done:
                    break
                node = cursor.nodes[cursor.position]
                waiting = cursor.waiting_for
                if node.op is Op.BARRIER:
                    arrived = len(self.arrived.get(node.target, ()))
                    raise with_location(
                        ExecutionError(
                            f"barrier({node.args[0]}) reached by only {arrived} invoke(s): "
                            "call it in as many invokes as it has participants"
                        ),
                        node,
                        self.debug,
                    )
                if waiting is not None and waiting.id not in self.skipped:
                    raise with_location(self.missing(waiting), node, self.debug)
                if waiting is None and node.op in GRADIENTS:
                    raise ExecutionError(
                        f"the gradient requested at {node.loc} was never computed: the loss "
                        "does not depend on that value, or the backward pass never reached it"
                    )
                if waiting is None and node.site is not None and node.site.in_source:
                    raise ModuleNotCalledError(
                        f"{describe(node)} requested at {node.loc} was never reached: "
                        "that call site is in a branch the forward did not take this time (print "
                        "the module's .source to see the call sites and their lines)"
                    )
                if waiting is None and node.id not in self.graph.optional:
                    site, _ = self.plan.sites[node.id]
                    count = self.fired.get(site, 0)
                    raise not_called(node, count)
                self.skip(cursor, node)
        for id, values in self.cache.items():
            self.saved[id] = values
        for node in self.plan.tail_nodes:
            if not self.stopped:
                self.run_node(node)

    def skip_rest(self, cursor: Cursor) -> None:
        """Pass over the cursor's nodes that a tracer.stop() kept from running (no error).

        Saves of values computed before the stop still keep them (the saves of a saved list
        come last in the graph).
        """
        while not cursor.done:
            node = cursor.nodes[cursor.position]
            cursor.position += 1
            if node.op is Op.SAVE and node.args[0].id in self.env:
                self.run_node(node)
                continue
            self.skipped.add(node.id)
            self.release(node)

    def skip(self, cursor: Cursor, node: Node) -> None:
        """Pass over a node of a step that never happened (and what depends on it)."""
        if not self.skipped and node.op in HOOKED:
            site, _ = self.plan.sites[node.id]
            warnings.warn(
                f"{describe(node)} at {node.loc}: step {node.step} never happened "
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
            if node.op in READS:
                value = project(box.full, kind)
                if stop is not None and not whole:
                    value = narrow(value, cursor.start, stop, self.total)
                self.store(node, value)
                return
            new = self.value(node.args[-1])
            if kind == "skip":
                path = node.site.path  # type: ignore[union-attr]  # a skip is sited
                skip = self.skip_calls.get(path)
                if skip is None:
                    skip = self.skip_calls[path] = SkipCall(self.total)
                skip.add(new, cursor.start, None if whole else stop)
                return
            if stop is not None and not whole:
                new = merge(project(box.full, kind), new, cursor.start, stop, self.total)
            box.full = inject(box.full, kind, new)
        except Missing as missing:
            raise with_location(self.missing(missing.ref), node, self.debug) from None
        except Exception as error:
            with_location(error, node, self.debug)
            raise
        finally:
            self.release(node)

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
                raise Missing(Ref(error.args[0])) from None
            kwargs: dict[str, Any] = {}
        else:
            args = self.value(node.args)
            kwargs = self.value(node.kwargs) if node.kwargs else {}
        try:
            if node.op is Op.CALL_MODULE:
                result = self.call_module(self.module_at(node.target), args, kwargs)
            elif (
                node.op is Op.METHOD
                and node.target == "__call__"
                and isinstance(args[0], torch.nn.Module)
            ):
                result = self.call_module(args[0], args[1:], kwargs)
            else:
                result = self.apply(node, args, kwargs, self.saved)
        except Exception as error:
            with_location(error, node, self.debug)
            raise
        self.store(node, result)
        self.release(node)

    def call_module(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call a module for the intervention code: its hooks pass the call through, so it
        is not one of the module's steps."""
        self.muted += 1
        try:
            return module(*args, **kwargs)
        finally:
            self.muted -= 1

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
        """The run-time value of an argument; Missing when a Ref's value does not exist yet."""
        try:
            return arg_value(arg, self.env, self.constants)
        except KeyError as error:
            raise Missing(ref(error.args[0])) from None

    def missing(self, ref: Ref) -> ExecutionError:
        source = self.graph.node(ref.id)
        return ExecutionError(
            f"the value %{ref.id} from {source.loc} (invoke {source.invoke}) is not available "
            "yet: invokes take their turns at each module in the order they were written, so a "
            "value read in an earlier invoke at a later module does not exist here yet."
        )


def _no_model(path: str) -> torch.nn.Module:
    raise ExecutionError(f"this run was given no model, so it cannot call the module {path!r}")


def execute(
    plan: Plan,
    constants: list[Any],
    module_at: Callable[[str], torch.nn.Module],
    call: Callable[[], Any],
    total_rows: int,
    debug: bool = True,
    guard: Guard | None = None,
) -> dict[int, Any]:
    """Run `call()` with the plan's interventions; return saved values.

    `module_at(path)` finds the module of a hook site ("" is the root). A `guard` checks
    each node of a graph that was not recorded in this process (backends.guard).

    Hooks exist only while this runs, on the modules the plan needs, and are removed even on
    error. The result maps the id of each saved node to its value after the run.
    """
    straight = plan.straight
    if straight is not None:
        invoke = plan.graph.invokes[0]
        if invoke.start == 0 and (invoke.stop is None or invoke.stop == total_rows):
            return execute_straight(straight, constants, module_at, call, debug, guard)
    run = Run(plan, constants, total_rows, debug, guard, module_at)
    hooks = RunHooks()
    try:
        hooks.attach(plan.modules, module_at, run.fire)
        if plan.skips or plan.sources:
            sources = {path: module_at(path) for path in plan.sources}
            with (  # skips wrap the traced sources: a module can be both, at different steps
                traced_sources(sources, run.fire, plan.expanded),
                skipped_modules(plan.skips, module_at, run.skip_calls),
            ):
                _run_model(run, call)
        else:
            _run_model(run, call)
    except ModuleNotCalledError as error:
        hooks.explain(error)  # a note when the modules ran in other threads
        raise
    finally:
        hooks.remove()
    return run.saved


def _run_model(run: Run, call: Callable[[], Any]) -> None:
    """Advance every invoke, run the model, then let the invokes finish."""
    try:
        for cursor in run.cursors:
            run.advance(cursor, None, 0, None)
        if run.stopping:  # a stop before the model's first module
            raise StopRun()
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
