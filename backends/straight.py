"""The straight-line executor: one invoke over the whole batch, no control flow.

Most traces are one input whose body reads, edits and saves modules' values at their first
call. Their nodes run in program order: no invokes taking turns at a hook, no values from
other invokes to wait for, no guards, steps, gradients or stops. For such a plan this
executor knows in advance which nodes run before the model, which run at each module access
(the access and the nodes after it, up to the next access) and which run after the model; and
which values each node is the last to use, so they are freed there.

`local.execute` uses it whenever the plan is straight; every other plan goes to the general
executor in `local.py`, which gives the same results (tests run traces through both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..ir import GRADIENTS, Const, Node, Op, Ref
from .apply import apply
from .guard import Guard
from .hooks import RunHooks
from .plan import _CONTROL, Site
from .values import arg_value, inject, not_called, out_of_order, project, with_location

if TYPE_CHECKING:
    from .plan import Plan


class Step(NamedTuple):
    """A node that needs no hook, with what the run does around it."""

    node: Node
    flat: bool  # its arguments are all Refs, Consts or literals (ir.is_literal), no kwargs
    keep: bool  # a later node uses its value
    frees: tuple[int, ...]  # the values whose last use it is


class Access(NamedTuple):
    """A module access (a READ or WRITE node) and the nodes that run right after it."""

    site: Site
    kind: str
    node: Node
    keep: bool
    frees: tuple[int, ...]
    then: tuple[Step, ...]


@dataclass(frozen=True)
class StraightPlan:
    """A straight plan: what runs before the model, at each module access, and after."""

    before: tuple[Step, ...]
    accesses: tuple[Access, ...]
    after: tuple[Step, ...]  # nodes recorded outside the invoke: they run after the model
    modules: dict[str, set[str]]  # module path -> hook kinds ("input", "output")

    @classmethod
    def of(cls, plan: Plan) -> StraightPlan | None:
        """The straight form of a plan, or None when the plan needs the general executor."""
        graph = plan.graph
        if (
            len(graph.invokes) != 1
            or graph.optional
            or plan.reads_result
            or plan.grads
            or plan.skips
            or plan.sources
            or plan.caches
        ):
            return None
        invoke_of = {node.id: node.invoke for node in graph.nodes}
        for node in graph.nodes:
            if node.guard is not None or node.step != 0 or node.op in _CONTROL:
                return None
            if node.op in GRADIENTS or node.op is Op.CALL_MODULE or node.target == "__call__":
                return None  # gradients, and modules called by the intervention
            if node.invoke == 0 and any(invoke_of[i] != 0 for i in plan.inputs[node.id]):
                return None
        order = [*plan.invoke_nodes[0], *plan.tail_nodes]
        last_use = {id: node.id for node in order for id in plan.inputs[node.id]}
        frees: dict[int, list[int]] = {}
        for id, user in last_use.items():
            frees.setdefault(user, []).append(id)

        def step(node: Node) -> Step:
            return Step(node, node.id in plan.flat, node.id in plan.uses, frees_of(node))

        def frees_of(node: Node) -> tuple[int, ...]:
            return tuple(frees.get(node.id, ()))

        before: list[Step] = []
        groups: list[tuple[Node, list[Step]]] = []  # each access and the nodes after it
        for node in plan.invoke_nodes[0]:
            if node.op is Op.READ or node.op is Op.WRITE:
                groups.append((node, []))
            elif groups:
                groups[-1][1].append(step(node))
            else:
                before.append(step(node))
        accesses = tuple(
            Access(*plan.sites[node.id], node, node.id in plan.uses, frees_of(node), tuple(then))
            for node, then in groups
        )
        return cls(tuple(before), accesses, tuple(map(step, plan.tail_nodes)), plan.modules)


def execute_straight(
    plan: StraightPlan,
    constants: list[Any],
    module_at: Callable[[str], torch.nn.Module],
    call: Callable[[], Any],
    debug: bool,
    guard: Guard | None = None,
) -> dict[int, Any]:
    """Run `call()` with a straight plan's interventions; return saved values by node id.

    Hooks exist only while this runs, on the modules the plan reads or writes, and are
    removed even on error. A `guard` checks each node of an untrusted graph (backends.guard).
    """
    run = StraightRun(plan, constants, debug, guard)
    hooks = RunHooks()
    try:
        hooks.attach(plan.modules, module_at, run.fire)
        if plan.before:
            run.run_steps(plan.before)
        call()
    finally:
        hooks.remove()
    accesses = plan.accesses
    if run.next < len(accesses):
        access = accesses[run.next]
        raise hooks.explain(not_called(access.node, run.fired.get(access.site, 0)))
    if plan.after:
        run.run_steps(plan.after)
    return run.saved


class StraightRun:
    """Run-time state of one straight execution."""

    __slots__ = ("plan", "constants", "debug", "env", "saved", "fired", "next", "last", "apply")

    def __init__(
        self, plan: StraightPlan, constants: list[Any], debug: bool, guard: Guard | None = None
    ) -> None:
        self.plan = plan
        self.apply = apply if guard is None else guard.apply
        self.constants = constants
        self.debug = debug
        self.env: dict[int, Any] = {}
        self.saved: dict[int, Any] = {}
        self.fired: dict[Site, int] = {}  # how many times each hook site has fired
        self.next = 0  # the index of the next module access
        self.last: Node | None = None  # the last module access that ran

    def fire(self, site: Site, value: Any) -> Any:
        """A hook site was reached: run the accesses due here; return the site's value."""
        fired = self.fired
        count = fired.get(site, 0)
        fired[site] = count + 1
        accesses = self.plan.accesses
        env = self.env
        while self.next < len(accesses):
            access = accesses[self.next]
            if access.site != site or count:
                if access.site == site or fired.get(access.site, 0):
                    raise out_of_order(access.node, self.last)  # its module already ran
                return value  # the next access is at a module that has not run yet
            node = access.node
            try:
                if node.op is Op.READ:
                    if access.keep:
                        env[node.id] = project(value, access.kind)
                else:
                    new = arg_value(node.args[-1], env, self.constants)
                    value = inject(value, access.kind, new)
            except Exception as error:
                with_location(error, node, self.debug)
                raise
            for id in access.frees:
                del env[id]
            self.last = node
            self.next += 1
            if access.then:
                self.run_steps(access.then)
        return value

    def run_steps(self, steps: tuple[Step, ...]) -> None:
        """Run nodes that need no hook, in order."""
        env = self.env
        constants = self.constants
        apply = self.apply
        for node, flat, keep, frees in steps:
            if flat:
                args = tuple(
                    env[a.id] if type(a) is Ref else constants[a.index] if type(a) is Const else a
                    for a in node.args
                )
                kwargs: dict[str, Any] = {}
            else:
                args = arg_value(node.args, env, constants)
                kwargs = arg_value(node.kwargs, env, constants) if node.kwargs else {}
            try:
                result = apply(node, args, kwargs, self.saved)
            except Exception as error:
                with_location(error, node, self.debug)
                raise
            if keep:
                env[node.id] = result
            for id in frees:
                del env[id]
