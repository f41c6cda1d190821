"""Tracer and Invoker: the `with model.trace(...)` and `with tracer.invoke(...)` contexts."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import capture, conditions, frames, saving, session, transform
from .extras import Barrier, Cache
from .ir import Graph, GraphBuildError, NNsightError, Op
from .proxy import Proxy
from .recorder import _STATE, Recorder, active, recording
from .steps import IterIndexer, StepRange, is_steps

if TYPE_CHECKING:
    from .model import NNsight


class Invoker:
    """One input's worth of interventions; its inputs join the trace's batch."""

    def __init__(self, tracer: Tracer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.tracer = tracer
        self.args = args
        self.kwargs = kwargs

    def __enter__(self) -> Invoker:
        recorder = self.tracer._require_recorder("tracer.invoke()")
        if self.args or self.kwargs:
            rows = self.tracer.model._batch_rows(self.args, self.kwargs)
        else:
            rows = None
        recorder.open_invoke(self.args, self.kwargs, rows)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.tracer._recorder is not None:
            self.tracer._recorder.close_invoke()


class Tracer(capture.CapturedBlock):
    """Records the body of a `with model.trace(...)` block as a Graph, then runs it."""

    def __init__(
        self,
        model: NNsight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        method: str = "trace",
    ) -> None:
        self.model = model
        self.method = method
        self.args = args
        self.run = True  # run=False: record and validate, no compute
        if kwargs:
            self.run = kwargs.pop("run", True)
            if kwargs.pop("remote", False):
                raise NNsightError(
                    "remote=True needs the nnsight_graph server, which this version does not "
                    "have yet; run the trace locally (leave out remote=True)"
                )
            self.kwargs, self.call_kwargs = model._split_kwargs(method, kwargs)
        else:  # no keywords: nothing to split into inputs and options
            self.kwargs, self.call_kwargs = kwargs, {}

    # Set while the `with` block is entered, recorded or run (class-level defaults: a trace
    # sets only the ones it uses).
    graph: Graph | None = None
    _recorder: Recorder | None = None
    _session: session.Session | None = None
    _recording: recording | None = None

    # the user's API -----------------------------------------------------------------------

    def invoke(self, *args: Any, **kwargs: Any) -> Invoker:
        """A context for one input (or, with no input, the whole batch)."""
        return Invoker(self, args, kwargs)

    @property
    def iter(self) -> IterIndexer:
        """Steps of a multi-step run: `with tracer.iter[:] as step:`, `iter[0]`, `iter[1:3]`."""
        return IterIndexer(self)

    def all(self) -> StepRange:
        """Every step: the same as `tracer.iter[:]`."""
        return self.iter[:]

    def next(self, count: int = 1) -> None:
        """Move this invoke's following module accesses `count` steps (calls) further on."""
        self._require_recorder("tracer.next()").step += count

    def _step_limit(self) -> int | None:
        return self.model._step_limit(self.method, self.call_kwargs)

    def stop(self) -> None:
        """End the model's run here: nothing after this point runs; saves so far are kept."""
        recorder = self._require_recorder("tracer.stop()")
        recorder.add(Op.STOP, "stop")

    def barrier(self, participants: int) -> Barrier:
        """A barrier for `participants` invokes: call the returned object in each of them."""
        return Barrier(self._require_recorder("tracer.barrier()"), participants)

    def cache(
        self,
        modules: list[Any] | None = None,
        include_inputs: bool = False,
        include_output: bool = True,
    ) -> Cache:
        """Keep every value of the given modules (default: all) while the model runs.

        Returns a mapping from module path ("model.transformer.h.0") to entries with
        `.output`, `.input`, `.inputs`, filled when the trace has run.
        """
        recorder = self._require_recorder("tracer.cache()")
        if modules is None:
            paths = [envoy._path for envoy in self.model.modules()]
        else:
            paths = [getattr(m, "_path", None) for m in modules]
            if any(p is None for p in paths):
                raise GraphBuildError("tracer.cache(modules=...) takes module envoys (model.h[0])")
        kinds = (["output"] if include_output else []) + (["input"] if include_inputs else [])
        if not kinds:
            raise GraphBuildError("tracer.cache() with neither outputs nor inputs caches nothing")
        node = recorder.add(Op.CACHE, "cache", (), paths=paths, kinds=kinds)
        cache = Cache(self.model, paths)  # type: ignore[arg-type]
        recorder.add_cache(node, cache)
        return cache

    def result(self) -> Proxy:
        """The value the traced call returned (the model's output)."""
        recorder = self._require_recorder("tracer.result()")
        if recorder.invoke < 0:
            raise GraphBuildError("call tracer.result() inside an invoke")
        return recorder.once(Op.READ, "result")

    # the with statement -------------------------------------------------------------------

    def __enter__(self) -> Tracer:
        state = _STATE  # this thread's: traces in other threads are no concern of this one
        if state.recorder is not None:
            raise GraphBuildError(
                "a trace cannot be opened inside another trace; close the first one, or group "
                "traces with model.session()"
            )
        if state.session is not None:
            return self._enter_in_session()
        self._capture()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if self._session is not None:
            return self._exit_in_session(exc_type)
        return self._finish(exc_type, exc)

    # inside model.session() ----------------------------------------------------------------

    def _enter_in_session(self) -> Tracer:
        """In a session the body runs inline (the session captured it); record only."""
        self._session = session.current()
        recorder = Recorder()
        recorder.session = self._session
        self._recorder = recorder
        self._recording = recording(recorder)
        self._recording.__enter__()
        if self.args or self.kwargs:
            rows = self.model._batch_rows(self.args, self.kwargs)
            recorder.open_invoke(self.args, self.kwargs, rows)
        return self

    def _exit_in_session(self, exc_type: type[BaseException] | None) -> bool:
        recorder = self._recorder
        assert recorder is not None and self._recording is not None
        self._recording.__exit__(None, None, None)
        if exc_type is not None:
            return False
        recorder.close_invoke()
        self.graph = self._finish_recording(recorder)
        assert self._session is not None
        self._session.traces.append(self)
        return False

    def _run_in_session(self) -> None:
        """Run this trace of a session (after the traces before it)."""
        from dataclasses import replace

        recorder = self._recorder
        assert recorder is not None and self.graph is not None
        graph = replace(self.graph, constants=session.resolve_session_values(self.graph.constants))
        if self.method == "edit":
            raise GraphBuildError("model.edit() cannot be used inside a session")
        saved = self.model._execute(graph, recorder.total_rows) if graph.invokes else {}
        _deliver(recorder, saved)

    # recording and running ----------------------------------------------------------------

    def _finish_recording(self, recorder: Recorder) -> Graph:
        """The recorded graph, after the record-time checks, with this call's method."""
        for barrier in recorder.barriers:
            barrier.check()
        graph = recorder.finish()
        graph.method = self.method
        if self.call_kwargs:
            graph.options = {k: recorder.encode(v) for k, v in self.call_kwargs.items()}
        return graph

    def _require_recorder(self, what: str) -> Recorder:
        recorder = self._recorder
        if recorder is None or active() is not recorder:
            raise GraphBuildError(f"{what} can only be used inside its `with` block")
        return recorder

    def _run(self, frame: FrameType) -> None:
        captured = self._captured
        assert captured is not None
        body, namespace, local_vars = compiled_body(self, captured, frame)
        global_vars = frame.f_globals
        recorder = self._recorder = Recorder()
        state = _STATE
        state.recorder = recorder  # what `with recording(recorder):` does, without its calls
        try:
            if self.method == "edit":
                recorder.open_invoke((), {}, None)  # an edit sees every row of each trace
            elif self.args or self.kwargs:
                rows = self.model._batch_rows(self.args, self.kwargs)
                recorder.open_invoke(self.args, self.kwargs, rows)
            variables = body(namespace)
            recorder.close_invoke()
            if self.method == "scan":
                _save_everything(captured, variables, recorder)
            if captured.mutated:
                _keep_outer_containers(captured, local_vars, global_vars, recorder)
        finally:
            state.recorder = None  # `__enter__` found none active, and the body was skipped
            self._recorder = None
        self.graph = graph = self._finish_recording(recorder)
        key = (captured.file, captured.line)
        result: Any = self
        if self.method == "edit":
            result = self.model._add_edit(graph, bool(self.call_kwargs.get("inplace")))
            saved: dict[int, Any] = {}
        elif graph.invokes and not self.run:
            self.model._plan(graph, key)  # validation raises here; the model does not run
            saved = {}
        elif graph.invokes:
            saved = self.model._execute(graph, recorder.total_rows, key)
        else:
            saved = {}
        _deliver(recorder, saved)
        values = saving.bound_values(captured.stored, variables)
        if captured.attribute_stores:
            _resolve_attributes(captured, variables, global_vars)
        if captured.target is not None:
            values.setdefault(captured.target, result)
        frames.bind(frame, values, local_vars)


def _deliver(recorder: Recorder, saved: dict[int, Any]) -> None:
    """Hand a trace's saved values to its recorder, its caches and its saved containers."""
    recorder.results = saved
    for node, cache in recorder.caches:
        cache._fill(saved.get(node, {}))
    for container in recorder.saved_containers:
        saving.resolve("a saved container", container)


def _save_everything(
    captured: capture.CapturedBody, variables: dict[str, Any], recorder: Recorder
) -> None:
    """In a scan, every name the body assigns is kept: its value is cheap (shapes only)."""
    for name in captured.stored:
        value = variables.get(name)
        if isinstance(value, Proxy):
            recorder.save(value)
        elif isinstance(value, (list, tuple, dict)):
            recorder.keep_container(value)


def _resolve_attributes(
    captured: capture.CapturedBody, variables: dict[str, Any], global_vars: dict[str, Any]
) -> None:
    """Replace Proxies the body stored as attributes (`self.out = ...`) by their values."""
    for name, attribute in captured.attribute_stores:
        owner = variables[name] if name in variables else global_vars.get(name)
        value = getattr(owner, attribute, None)
        if isinstance(value, Proxy):
            setattr(owner, attribute, saving.resolve(f"{name}.{attribute}", value))


def _keep_outer_containers(
    captured: capture.CapturedBody,
    local_vars: dict[str, Any],
    global_vars: dict[str, Any],
    recorder: Recorder,
) -> None:
    """Save the Proxies put into lists and dicts that existed before the trace.

    Those objects outlive the trace, so leaving Proxies in them would be silently wrong.
    """
    for name in captured.mutated:
        value = local_vars.get(name, global_vars.get(name))
        if isinstance(value, (list, dict)):
            recorder.keep_container(value)


# The transform's helpers, which every compiled body receives first in its namespace.
_HELPERS: dict[str, Any] = {
    transform.SAVE_HELPER: saving.save,
    transform.STEPS_HELPER: is_steps,
    transform.PROXY_HELPER: conditions.is_proxy,
    transform.BRANCH_HELPER: conditions.Branch,
    transform.PRINT_HELPER: conditions.log,
}


def compiled_body(
    block: capture.CapturedBlock, captured: capture.CapturedBody, frame: FrameType
) -> tuple[Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The block's compiled body, the namespace to call it with (its `as` name bound to
    `block`), and the caller's variables, read once: on a function frame each read copies."""
    local_vars = frame.f_locals
    namespace = _namespace(captured, local_vars, frame.f_globals)
    if captured.target is not None:
        namespace[captured.target] = block
    return capture.compile_body(captured, tuple(namespace), frame.f_globals), namespace, local_vars


def _namespace(
    captured: capture.CapturedBody, local_vars: dict[str, Any], global_vars: dict[str, Any]
) -> dict[str, Any]:
    """The transform's helpers, then the caller's variables the body must receive as locals."""
    namespace = _HELPERS.copy()
    # at module level the body's assignments must start from the module's current values
    names = captured.stored if local_vars is global_vars else captured.names
    for name in names:
        if name in local_vars and name not in namespace:
            namespace[name] = local_vars[name]
    return namespace
