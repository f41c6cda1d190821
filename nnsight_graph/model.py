"""NNsight: wraps any torch module so that its internals can be traced and changed."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from . import failures, renaming
from .backends import Plan, execute
from .backends.batching import batch_size, concatenate
from .backends.guard import Guard
from .backends.observe import observed
from .config import CONFIG
from .editing import with_edits
from .envoy import Envoy
from .ir import BatchError, Const, ExecutionError, Graph, Invoke, NNsightError, Node, Op, map_args
from .ir.grad_mode import current_grad_mode, grad_mode_context
from .ir.limits import LOCAL, SERVER, Limits
from .passes import ModelFacts, run_passes
from .passes.trust import check_untrusted
from .session import Session
from .tracer import Tracer

if TYPE_CHECKING:
    from .local import LocalBlocks


class NNsight(Envoy):
    """A torch module wrapped for tracing: `with NNsight(net).trace(x): ...`.

    Attribute access mirrors the module tree (`model.layer1`, `model.h[0]`); the module itself
    is never changed: hooks exist only while a trace runs.

    `rename={"transformer.h": "layers", "attn": "attention"}` gives modules extra names (the
    real ones keep working; graphs, caches and errors use the real paths). `envoys=` picks
    Envoy subclasses for modules, by module class or by path suffix:
    `envoys={torch.nn.Linear: LinearEnvoy, "h.*": BlockEnvoy}` (or one class for all).
    `remote_name="net"` names the model a server hosts for this one (`serve --model
    net=package.module:factory`), so that `trace(x, remote=True)` runs there.
    """

    _alias_table: renaming.AliasTable = {}  # a model without rename= has none; never mutated
    _rename: Any = None
    _envoys: Any = None
    _remote_name: str | None = None

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        rename: Any = None,
        envoys: Any = None,
        remote_name: str | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NNsight wraps a torch.nn.Module, not {type(module).__name__}")
        super().__init__(module, "")
        object.__setattr__(self, "_root", self)
        object.__setattr__(self, "_facts", None)
        object.__setattr__(self, "_plans", {})
        object.__setattr__(self, "_edits", [])
        if remote_name is not None:
            object.__setattr__(self, "_remote_name", remote_name)
        if envoys is not None:
            object.__setattr__(self, "_envoys", renaming.check_envoys(envoys, Envoy))
        if rename:
            object.__setattr__(self, "_rename", renaming.check_rename(rename))
            self._bind_aliases()

    # the module tree ------------------------------------------------------------------------

    def _bind_aliases(self) -> None:
        """Resolve `rename=` over the whole module tree (conflicts raise here, at once)."""

        def taken(path: str, module: torch.nn.Module) -> set[str]:
            cls = type(self) if not path else self._envoy_class(path, module)
            return set(dir(cls))

        table = renaming.build_alias_table(self._module, self._rename, taken)
        object.__setattr__(self, "_alias_table", table)
        object.__setattr__(self, "_aliases", table.get("", {}))

    def _envoy_class(self, path: str, module: torch.nn.Module) -> type[Envoy]:
        """The Envoy class that wraps the module at `path` (`envoys=`)."""
        if self._envoys is None:
            return Envoy
        return renaming.envoy_class(self._envoys, self._rename, path, module, Envoy)

    def _change_module(
        self, path: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """`module.to(...)`, `.eval()`, ... on the module at `path`, from an envoy's method."""
        getattr(self._module_at(path), method)(*args, **kwargs)

    def _before_direct_call(self) -> None:
        """Called before `model(x)` outside a trace runs the module (lazy models load here)."""

    def _prepare(self, method: str) -> None:
        """Called before a graph of `method` runs on the model (lazy models load here)."""

    def trace(self, *args: Any, **kwargs: Any) -> Tracer:
        """A tracing context: `with model.trace(input) as tracer:`. The model runs on exit."""
        return Tracer(self, args, kwargs)

    def session(self, remote: bool | str = False) -> Session:
        """Group traces: `with model.session():` runs them in order when the block ends, and
        a later trace can use any value of an earlier one.

        `remote=True` (or `remote="http://host:port"`) sends all the traces to the server as
        one job; only values saved with `.save()` come back. `remote="local"` takes that
        whole path (session.session_payload, remote.execution.run_payload,
        session.bind_session_results) in this process.
        """
        from .tracer import remote_mode  # the tracer module imports this one

        return Session(self, remote_mode(remote, "session") if remote else None)

    def edit(self, *, inplace: bool = False) -> Tracer:
        """Record interventions that every later trace applies first.

        `with model.edit() as edited:` binds a new model sharing the weights, inside the
        block and after it (the original is untouched; `as (tracer, edited)` binds both);
        `model.edit(inplace=True)` edits this model. `clear_edits()` undoes.
        """
        return Tracer(self, (), {"inplace": inplace}, method="edit")

    def clear_edits(self) -> None:
        """Remove the edits made with `edit(inplace=True)`."""
        object.__setattr__(self, "_edits", [])

    def _edit_copy(self) -> NNsight:
        """A copy for `edit()`: it shares the weights and the edits so far, no plans."""
        edited = copy.copy(self)
        object.__setattr__(edited, "_edits", list(self._edits))
        object.__setattr__(edited, "_plans", {})
        return edited

    def _add_edit(self, graph: Graph) -> None:
        """Apply `graph` first in every later trace of this model."""
        object.__setattr__(self, "_edits", [*self._edits, graph])

    def scan(self, *args: Any, **kwargs: Any) -> Tracer:
        """Like trace(), but computes only shapes and dtypes (fake tensors), no real compute.

        Every name assigned in the body is bound afterwards, without `.save()`.
        """
        return Tracer(self, args, kwargs, method="scan")

    # what a tracer needs from the model ------------------------------------------------------

    def _split_kwargs(
        self, method: str, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split trace() keywords into the implicit invoke's inputs and the call's options."""
        if method == "edit":
            return {}, kwargs
        return kwargs, {}

    def _step_limit(self, method: str, call_kwargs: dict[str, Any]) -> int | None:
        """How many steps `tracer.iter[:]` covers: one forward pass for a plain trace."""
        return 1

    def _site_paths(self) -> set[str]:
        """The module paths a graph may name: the model's `named_modules()`."""
        return {name for name, _ in self._module.named_modules()}

    def _module_at(self, path: str) -> torch.nn.Module:
        """The module a hook site's path names ("" is the root)."""
        module = self._module
        if path:
            for name in path.split("."):  # faster than get_submodule, which runs on each trace
                child = module._modules.get(name)
                if child is None:
                    return self._submodule(path)
                module = child
        return module

    def _submodule(self, path: str) -> torch.nn.Module:
        try:
            return self._module.get_submodule(path)
        except AttributeError as error:  # a graph built or loaded by hand names any path
            raise ExecutionError(
                f"the graph names the module {path!r}, which this model does not have ({error}); "
                "use a path from the model's named_modules()"
            ) from None

    # what a backend needs from the model ----------------------------------------------------

    def _batch_rows(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """How many batch rows an invoke's inputs hold (dim 0 of their first tensor)."""
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            return int(args[0].shape[0])
        return batch_size((args, kwargs))

    def _batched_inputs(self, graph: Graph) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The model's call arguments: every invoke's inputs concatenated on dim 0."""
        invokes = graph.invokes
        if len(invokes) == 1 and (invokes[0].args or invokes[0].kwargs):
            constants = graph.constants
            args = tuple(
                constants[a.index] if type(a) is Const else _decode(a, constants)
                for a in invokes[0].args
            )
            kwargs = invokes[0].kwargs
            return args, _decode(kwargs, constants) if kwargs else {}
        given = [inv for inv in invokes if inv.args or inv.kwargs]
        if not given:
            raise BatchError(
                "no invoke has an input: pass one to model.trace(input) or tracer.invoke(input)"
            )
        decoded = [_decode((inv.args, inv.kwargs), graph.constants) for inv in given]
        if len(decoded) > 1 and any(inv.rows is None for inv in given):
            raise BatchError(
                "an invoke's inputs hold no tensor, so its batch rows are unknown; "
                "batch several invokes only with tensor inputs"
            )
        args, kwargs = concatenate(decoded)
        return args, kwargs

    def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Run the model on the batched inputs."""
        return self._module(*args, **kwargs, **options)

    def _plan(self, graph: Graph, key: Any) -> Plan:
        """The validated, optimized plan for this graph, reused while the structure repeats."""
        facts: ModelFacts | None = self._facts
        cached: _CachedPlan | None = self._plans.get(key)
        if cached is not None and cached.matches(graph, facts):
            return cached.plan
        plan = Plan.build(run_passes(graph, facts, debug=CONFIG.APP.DEBUG))
        self._plans[key] = _CachedPlan.of(graph, facts, plan)
        return plan

    def run(self, graph: Graph, limits: Limits = LOCAL) -> dict[int, Any]:
        """Run a recorded (or loaded) graph on this model; return saved values by node id.

        A loaded graph runs only what `ir.registry` allows, within `limits` (ir.limits).
        """
        rows = max((inv.stop or 0 for inv in graph.invokes), default=0)  # remote.execution.rows_of
        return self._execute(graph, rows, None, limits)

    def _execute(
        self,
        graph: Graph,
        total_rows: int,
        key: Any = None,
        limits: Limits = LOCAL,
        edits: bool = True,
    ) -> dict[int, Any]:
        """Validate and optimize the graph, then run the model with it; return saved values.

        An error the model itself raises (not our own, not the intervention code's, which
        carry their lines already) gets a note naming the module that failed and the inputs.
        A graph with a grad_mode (a sender's `torch.no_grad()`) runs in that mode.
        """
        self._prepare(graph.method)
        try:
            with grad_mode_context(graph.grad_mode):
                return self._execute_graph(graph, total_rows, key, limits, edits)
        except Exception as error:
            if not isinstance(error, NNsightError):
                failures.note_model_error(error, self._module, graph, key, self._input_hint())
            raise

    def _input_hint(self) -> str:
        """What a note on an error of the model says about the inputs it takes."""
        return (
            "The trace passes its input to the module's forward unchanged: give it what "
            f"{type(self._module).__name__}.forward takes"
        )

    def _execute_remote_local(
        self, graph: Graph, total_rows: int, blocks: LocalBlocks | None = None
    ) -> dict[int, Any]:
        """The whole remote path in this process (`remote="local"`): the graph, with this
        model's edits, is serialized, read back as a server reads it (untrusted, with the
        server's limits), run, and its saved values return through the results format.
        The values of nnsight.local() `blocks` go both ways through the results format too."""
        from .backends.local_blocks import serving_local_blocks
        from .ir.results import dumps_results, loads_results
        from .ir.wire import dumps
        from .remote.execution import run_payload

        def through_wire(block: int, downloads: dict[int, Any], outputs: list[int]) -> dict[int, Any]:
            assert blocks is not None
            values = blocks.handle(block, loads_results(dumps_results(downloads)), outputs)
            return loads_results(dumps_results(values), SERVER)  # as a server reads them

        with serving_local_blocks(through_wire):
            return loads_results(run_payload(self, dumps(self._for_server(graph)), SERVER))

    def _for_server(self, graph: Graph) -> Graph:
        """What a server runs: the graph with this model's edits first (it applies none), in
        the autograd mode of this thread now (`torch.no_grad()` around the trace)."""
        graph = with_edits(self._edits, graph) if self._edits else graph
        return replace(graph, grad_mode=current_grad_mode())

    def _remote_key(self) -> str:
        """The name a server hosts this model under (`X-NNsight-Graph-Model`)."""
        if self._remote_name is not None:
            return self._remote_name
        raise NNsightError(
            f"remote runs need a model a server hosts by name, not a {type(self._module).__name__} "
            "built in this process: load it with LanguageModel(NAME) for a NAME the server "
            "lists in GET /v1/models, give NNsight(net, remote_name=NAME) the name the server "
            "hosts the same net under, or run the trace locally (leave out remote=)"
        )

    def _execute_graph(
        self, graph: Graph, total_rows: int, key: Any, limits: Limits, edits: bool
    ) -> dict[int, Any]:
        guard = None
        if not graph.trusted:  # not recorded here: refuse before anything of it runs
            check_untrusted(graph, self._site_paths(), limits)
            guard = Guard(limits)
        if edits and self._edits:
            graph = with_edits(self._edits, graph)
        plan = self._plan(graph, key)
        args, kwargs = self._batched_inputs(graph)
        options = _decode(graph.options, graph.constants) if graph.options else {}
        call = partial(self._call, graph.method, args, kwargs, options)
        debug = CONFIG.APP.DEBUG
        module_at = self._module_at
        method = graph.method
        constants = graph.constants
        if method == "scan":
            with _fake_tensors():
                return execute(plan, constants, module_at, call, total_rows, debug, guard)
        if self._facts is not None:
            return execute(plan, constants, module_at, call, total_rows, debug, guard)
        with observed(self._module, total_rows or None) as observation:
            saved = execute(plan, constants, module_at, call, total_rows, debug, guard)
        facts = ModelFacts.from_events(observation.events, observation.tensor_outputs)
        object.__setattr__(self, "_facts", facts)
        return saved


@dataclass(frozen=True)
class _CachedPlan:
    """A plan and the recorded structure it was built for.

    Validation also looked at the shapes of the constants written into the model, so those
    are part of the structure; other constants (the inputs) may change freely.
    """

    nodes: list[Node]
    invokes: list[Invoke]
    checked: tuple[int, ...]
    shapes: tuple[Any, ...]
    facts: ModelFacts | None
    plan: Plan

    @classmethod
    def of(cls, graph: Graph, facts: ModelFacts | None, plan: Plan) -> _CachedPlan:
        checked = tuple(
            arg.index
            for node in graph.nodes
            if node.op is Op.WRITE or node.op is Op.WRITE_GRAD
            for arg in node.args
            if isinstance(arg, Const)
        )
        shapes = _shapes(graph, checked)
        return cls(graph.nodes, graph.invokes, checked, shapes, facts, plan)

    def matches(self, graph: Graph, facts: ModelFacts | None) -> bool:
        return (
            facts is self.facts
            and graph.nodes == self.nodes
            and graph.invokes == self.invokes
            and _shapes(graph, self.checked) == self.shapes
        )


def _shapes(graph: Graph, indices: tuple[int, ...]) -> tuple[Any, ...]:
    return tuple(getattr(graph.constants[i], "shape", None) for i in indices)


def _fake_tensors() -> Any:
    """A context in which torch computes shapes and dtypes only (real inputs become fake)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _decode(value: Any, constants: list[Any]) -> Any:
    """A recorded call argument with its Consts replaced by their objects."""
    return map_args(value, lambda leaf: constants[leaf.index] if type(leaf) is Const else leaf)
