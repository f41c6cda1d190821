"""Tracer and Invoker: the `with model.trace(...)` and `with tracer.invoke(...)` contexts."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import capture, conditions, frames, saving, session, transform
from .cache import CacheView, cache_kinds, cache_options, cache_paths, new_cache
from .config import CONFIG, host_url
from .extras import Barrier
from .ir import Graph, GraphBuildError, InvokeError, NNsightError, Op
from .ir.session import resolve as resolve_trace_refs
from .local import LocalContext, shipped
from .local_shapes import declare
from .proxy import Proxy
from .recorder import _STATE, Recorder, active, recording, user_location
from .steps import IterIndexer, StepRange, is_steps

if TYPE_CHECKING:
    from .model import NNsight
    from .remote.client import Job


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
    ) -> bool:
        if self.tracer._recorder is not None:
            self.tracer._recorder.close_invoke()
        return exc_type is capture.BodyStopped  # the invoke ends at `tracer.stop()`


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
        self.remote = CONFIG.APP.FORCE_REMOTE if method in _REMOTE_METHODS else None
        self.blocking = True  # blocking=False: a remote trace returns at once; see .job
        self.job: Job | None = None  # the server's job, after a remote trace ran
        if kwargs:
            self.run = kwargs.pop("run", True)
            remote = kwargs.pop("remote", False)
            self.blocking = kwargs.pop("blocking", True)
            if remote:
                self.remote = remote_mode(remote, method)
            if not self.blocking and self.remote in (None, "local"):
                raise NNsightError(
                    "blocking=False is for traces that run on a server: add remote=True "
                    "(or remote='http://host:port'), or leave out blocking=False"
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
    _edited: NNsight | None = None  # `with model.edit() as edited:`: the copy being edited

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
        recorder = self._require_recorder("tracer.next()")
        if recorder.invoke < 0:
            raise InvokeError("call tracer.next() inside an invoke: steps belong to an invoke")
        recorder.step += count

    def _step_limit(self) -> int | None:
        return self.model._step_limit(self.method, self.call_kwargs)

    def stop(self) -> None:
        """End the model's run here: nothing after this point runs; saves so far are kept.

        The statements after it do not run either (they end the invoke's block, or the
        trace's), so the names they assign are not bound, unless the stop depends on a traced
        value (`if proxy: tracer.stop()`); then a saved value the run never reached is not
        bound.
        """
        recorder = self._require_recorder("tracer.stop()")
        if recorder.invoke < 0:
            raise InvokeError(
                "call tracer.stop() inside an invoke (the run stops where that invoke's code "
                "reaches it)"
            )
        recorder.add(Op.STOP, "stop")
        if recorder.guard is None:
            raise capture.BodyStopped()

    def local(self) -> LocalContext:
        """`with tracer.local():` the block runs on the client (as `nnsight.local()`)."""
        return LocalContext()

    def barrier(self, participants: int) -> Barrier:
        """A barrier for `participants` invokes: call the returned object in each of them."""
        return Barrier(self._require_recorder("tracer.barrier()"), participants)

    def cache(
        self,
        modules: list[Any] | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        detach: bool = True,
        include_output: bool = True,
        include_inputs: bool = False,
        non_blocking: bool = False,
    ) -> CacheView:
        """Keep every value of the given modules (envoys or keys; default: every module).

        After the trace, `cache["model.transformer.h.0"]` (or `cache.model.transformer.h[0]`)
        has `.output`, `.inputs` and `.input`: one value per call, a list when the module ran
        more than once (each step of generate()). Inside an invoke it keeps that invoke's
        rows. Tensors are detached and moved to `device` (None: left where they are) and,
        when floating point, cast to `dtype`. `non_blocking` is accepted for nnsight's
        signature; the copies here are synchronous.
        """
        recorder = self._require_recorder("tracer.cache()")
        try:
            if self.method == "edit":
                raise GraphBuildError(
                    "tracer.cache() cannot be part of an edit: call it in the trace of the "
                    "edited model instead"
                )
            paths = cache_paths(self.model, self.method, modules)
            kinds = cache_kinds(include_output, include_inputs)
            options = cache_options(device, dtype)
        except GraphBuildError as error:
            raise GraphBuildError(f"{user_location()}: {error}") from None
        node = recorder.add(
            Op.CACHE, "cache", (), paths=paths, kinds=kinds, detach=bool(detach), **options
        )
        cache, view = new_cache(self.model)
        recorder.add_cache(node, cache)
        return view

    @property
    def result(self) -> ResultProxy:
        """The value the traced call returned: the model's output, or the generated ids.

        Both `tracer.result.save()` (nnsight 0.8) and `tracer.result().save()` work.
        """
        recorder = self._require_recorder("tracer.result")
        if recorder.invoke < 0:
            raise InvokeError("use tracer.result inside an invoke")
        return ResultProxy(recorder, recorder.once(Op.RESULT, "")._nn_node())

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
        if self.method == "edit" and not self.call_kwargs.get("inplace"):
            self._edited = self.model._edit_copy()  # what the block's `as` name stands for
        self._capture()
        captured = self._captured
        if self._edited is None and (captured is None or type(captured.target) is not tuple):
            return self  # the common case
        value = self._as_value()
        if captured is not None and captured.empty:
            capture.target_values(captured, value)  # Python unpacks it: say what is wrong
        return value

    def _as_value(self) -> Any:
        """What the block's `as` name is bound to: this tracer; for `model.edit()`, the
        edited model (`as (tracer, edited)` gets both, as in nnsight 0.8)."""
        edited = self._edited
        if edited is None:
            return self
        captured = self._captured
        if captured is not None and isinstance(captured.target, tuple):
            return (self, edited)
        return edited

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
        recorder = Recorder(self.model._root)
        recorder.session = self._session
        assert self._session is not None
        recorder.trace_index = len(self._session.traces)
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
        stopped = exc_type is capture.BodyStopped  # the block ended at `tracer.stop()`
        if exc_type is not None and not stopped:
            return False
        recorder.close_invoke()
        self.graph = self._finish_recording(recorder)
        assert self._session is not None
        self._session.traces.append(self)
        return stopped

    def _run_in_session(self, earlier: list[dict[int, Any]]) -> dict[int, Any]:
        """Run this trace of a session, given the saved values of the traces before it."""
        from dataclasses import replace

        recorder = self._recorder
        assert recorder is not None and self.graph is not None
        if self.method == "edit":
            raise GraphBuildError("model.edit() cannot be used inside a session")
        graph = replace(self.graph, constants=resolve_trace_refs(self.graph, earlier))
        saved = self.model._execute(graph, recorder.total_rows) if graph.invokes else {}
        _deliver(recorder, saved)
        return saved

    def _deliver_session_values(self, saved: dict[int, Any]) -> None:
        """Hand this session trace the saved values a remote run sent back."""
        assert self._recorder is not None
        _deliver(self._recorder, saved)

    # recording and running ----------------------------------------------------------------

    def _finish_recording(self, recorder: Recorder) -> Graph:
        """The recorded graph, after the record-time checks, with this call's method."""
        if not recorder.invokes and self.method != "edit":
            raise InvokeError(
                f"{user_location() or 'this trace'}: the trace has no input, so the model has "
                f"nothing to run on: pass one to model.{self.method}(input), or open a "
                f"`with tracer.invoke(input):` block inside it"
            )
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
        recorder = self._recorder = Recorder(self.model._root)
        if self.remote is not None:
            recorder.remote = True  # nnsight.local() blocks split off (nnsight_graph.local)
        state = _STATE
        state.recorder = recorder  # what `with recording(recorder):` does, without its calls
        try:
            if self.method == "edit":
                recorder.open_invoke((), {}, None)  # an edit sees every row of each trace
            elif self.args or self.kwargs:
                rows = self.model._batch_rows(self.args, self.kwargs)
                recorder.open_invoke(self.args, self.kwargs, rows)
            try:
                variables = body(namespace)
            except capture.BodyStopped as stopped:
                variables = stopped.body_variables()
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
        if self.method == "edit":
            (self._edited or self.model)._add_edit(graph)
            saved: dict[int, Any] = {}
        elif graph.invokes and not self.run:
            self.model._plan(graph, key)  # validation raises here; the model does not run
            saved = {}
        elif graph.invokes and self.remote == "local":
            sent, blocks = shipped(graph, recorder)
            sent = declare(self.model, sent, blocks, recorder.total_rows)
            saved = blocks.bind(
                self.model._execute_remote_local(sent, recorder.total_rows, blocks))
        elif graph.invokes and self.remote is not None:
            from .remote.submit import run_graph  # httpx and the client: remote runs only

            sent, blocks = shipped(graph, recorder)
            if blocks and not self.blocking:
                raise NNsightError(
                    "a trace with an nnsight.local() block waits for the server to reach it, "
                    "so it cannot be left running: leave out blocking=False, or move the "
                    "block's work after the trace (save the values it reads)"
                )
            sent = declare(self.model, sent, blocks, recorder.total_rows)
            names = _saved_names(captured.stored, variables, recorder)
            self.job, saved = run_graph(self.model, sent, self.remote, names, self.blocking,
                                        blocks)
            if not self.blocking:  # nothing to bind yet: the values come from tracer.job
                _bind_pending(self, captured, frame, local_vars, names)
                return
            saved = blocks.bind(saved)
        elif graph.invokes:
            saved = self.model._execute(graph, recorder.total_rows, key)
        else:
            saved = {}
        _deliver(recorder, saved)
        values = saving.bound_values(captured.stored, variables)
        if captured.attribute_stores:
            _resolve_attributes(captured, variables, global_vars)
        target = captured.target
        if type(target) is str and self._edited is None:
            values.setdefault(target, self)
        elif target is not None:
            for name, value in capture.target_values(captured, self._as_value()).items():
                values.setdefault(name, value)
        frames.bind(frame, values, local_vars)


class ResultProxy(Proxy):
    """`tracer.result`: the call's return value. Calling it with no arguments gives itself,
    so the older `tracer.result()` spelling works too."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        if not args and not kwargs:
            return self
        return super().__call__(*args, **kwargs)


_REMOTE_METHODS = frozenset({"trace", "generate"})


def remote_mode(remote: Any, method: str) -> str:
    """What `remote=` asks for on `method` ("trace", "generate", "session", ...): a server's
    URL, or "local" to run the whole remote path in this process."""
    if method not in _REMOTE_METHODS and method != "session":
        raise NNsightError(
            f"{method}() runs on this machine only (a scan needs no weights; an edit changes "
            "this process's model): leave out remote="
        )
    if remote == "local":
        return "local"
    if remote is True:
        return host_url()
    if isinstance(remote, str) and re.match(r"^https?://[^/\s]+/?$", remote):
        return host_url(remote)
    raise NNsightError(
        f"remote={remote!r} is not a server: write remote=True (the server in CONFIG.API.HOST, "
        "env NNSIGHT_GRAPH_HOST), remote='http://host:port', or remote='local' to take the "
        "whole remote path (serialize, check, run, send the results back) in this process"
    )


def _saved_names(
    stored: tuple[str, ...], variables: dict[str, Any], recorder: Recorder
) -> dict[int, str]:
    """Node id -> the name its saved value is bound to (what `Job.result()` keys by)."""
    names = {}
    saved = recorder.saved_ids
    for name in stored:
        value = variables.get(name)
        if isinstance(value, Proxy) and value._nn_id in saved:
            names[value._nn_id] = name
    return names


def _bind_pending(
    tracer: Tracer, captured: Any, frame: FrameType, local_vars: dict[str, Any],
    names: dict[int, str],
) -> None:
    """After a non-blocking remote trace: the `as` target, and in place of each saved value
    an object that says to ask `tracer.job.result()` (the values are not computed yet)."""
    assert tracer.job is not None
    values: dict[str, Any] = {
        name: saving.Unsaved.pending(name, tracer.job.id) for name in names.values()
    }
    target = captured.target
    if type(target) is str:
        values[target] = tracer
    elif target is not None:
        values.update(capture.target_values(captured, tracer._as_value()))
    frames.bind(frame, values, local_vars)


def _deliver(recorder: Recorder, saved: dict[int, Any]) -> None:
    """Hand a trace's saved values to its recorder, its caches and its saved containers."""
    recorder.results = saved
    for node, cache in recorder.caches:
        values = saved.get(node)
        if values is not None:  # the model ran (not run=False, not an edit)
            cache.fill(values)
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
        if isinstance(owner, Proxy):
            continue  # `h.grad = ...` on a traced value was recorded as a node, not stored
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
    target = captured.target
    if type(target) is str and getattr(block, "_edited", None) is None:
        namespace[target] = block
    elif target is not None:
        as_value = block._as_value() if isinstance(block, Tracer) else block
        namespace.update(capture.target_values(captured, as_value))
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
