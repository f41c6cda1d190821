"""`nnsight-graph serve --ray`: the same HTTP API and job store, each model a Ray Serve
deployment with N replicas (one model load each, one job at a time each).

    driver (`nnsight-graph serve --ray`)     ray.init, serve.run, waits for SIGTERM
    Serve proxy (host:port)                  HTTP and WebSocket -> the ingress
    ingress deployment (1 replica)           our FastAPI app (`serve.ingress`), the job store,
                                             one `RayHostedModel` per model: a dispatcher
                                             thread per replica takes jobs from the store in
                                             its fair order and streams each to the model
                                             deployment through its handle
    model deployment `model-NAME` (N)        `ModelReplica`: loads the model once, runs
                                             `run_payload` on each job, streams the worker
                                             protocol's messages (nnsight_graph.server.worker)
                                             back; `check_health`; Ray restarts it

The store stays in one process (the ingress, pinned to the driver's node where the store
directory is), so its SQLite order, fairness and limits are those of the default server;
payloads and results go to the replicas and back as bytes through Ray, so a replica can run on
any node. A replica's Serve queue holds at most one running job (`max_ongoing_requests=1`)
and the dispatchers send at most one job per replica, so the real queue is the store's.

Cancel goes through the deployment handle: `DeploymentResponseGenerator.cancel()` cancels
the replica's request, whose handler sets the job's cancel flag (the run stops at its next
node or generation step, `backends.guard.cancellable`); a replica that does not stop within
the grace period is killed and Ray Serve starts another. The values an `nnsight.local()`
block makes reach the running replica through a small `Mailbox` actor.

Imported only by `serve --ray` (and its test): the default server does not need Ray.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import signal
import threading
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, RequestCancelledError

from ..backends.guard import RunCancelled, cancellable
from ..backends.local_blocks import serving_local_blocks
from ..ir.limits import Limits
from ..remote.execution import check_payload, run_payload
from . import hosting, worker
from .app import create_app
from .policy import Policy
from .store import Store

APP_NAME = "nnsight-graph"
_TICK_S = 0.1
_FINAL = ("done", "cancelled", "error")


@dataclass(frozen=True)
class RayOptions:
    """What `serve --ray` deploys: replicas per model and what each reserves."""

    replicas: int = 1
    num_cpus: float = 1.0  # per model replica (Ray's ray_actor_options)
    num_gpus: float = 0.0  # per model replica: 1 = a GPU each (CUDA_VISIBLE_DEVICES set by Ray)
    cancel_grace_s: float = 5.0
    health_check_period_s: float = 5.0
    max_queued_requests: int | None = None  # Serve's queue per model; default 2 per replica
    drain_s: float = 30.0


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ingress needs, read by the driver (the keys file lives there)."""

    models: dict[str, str]  # name -> spec
    store: str
    ttl_s: float
    limits: Limits
    device: str = "cpu"
    dtype: str | None = None
    keys: dict[str, str] | None = None
    max_body: int = 64 << 20
    policy: Policy = field(default_factory=Policy)
    options: RayOptions = field(default_factory=RayOptions)


# the model replicas ----------------------------------------------------------------------------


class _Mailbox:
    """Messages for running jobs (the values of an nnsight.local() block), per job id: a Ray
    actor (`Mailbox`) the ingress puts into and replicas take from."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Any]] = {}

    def put(self, job: str, message: Any) -> None:
        self.messages.setdefault(job, []).append(message)

    def take(self, job: str) -> Any:
        waiting = self.messages.get(job)
        return waiting.pop(0) if waiting else None

    def drop(self, job: str) -> None:
        self.messages.pop(job, None)


Mailbox: Any = ray.remote(num_cpus=0)(_Mailbox)


class _Outbox:
    """The worker protocol's outbox for a run in a thread: messages to the request's stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, messages: asyncio.Queue) -> None:
        self.loop, self.messages = loop, messages

    def put(self, message: Any) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, message)


class _Inbox:
    """The worker protocol's inbox of one job: what the ingress left in its Mailbox."""

    def __init__(self, mailbox: Any, job: str) -> None:
        self.mailbox, self.job = mailbox, job

    def get(self, timeout: float) -> Any:
        message = ray.get(self.mailbox.take.remote(self.job))
        if message is None:
            time.sleep(timeout)
            raise queue.Empty
        return message


class ModelReplica:
    """One replica of a hosted model (the class of its Serve deployment)."""

    def __init__(self, spec: str, device: str, dtype: str | None, limits: Limits,
                 cancel_grace_s: float) -> None:
        self.model = worker.load_model(spec, device, dtype)
        self.limits, self.cancel_grace_s = limits, cancel_grace_s
        context = ray.get_runtime_context()
        self.identity = {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "node": context.get_node_id(),
            "actor": context.get_actor_name(),
        }
        self.running: tuple[str, float] | None = None  # job, monotonic start
        self.stuck: str | None = None

    def describe(self) -> dict[str, Any]:
        return dict(self.identity)

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising has the replica replaced."""
        if self.stuck is not None:
            raise RuntimeError(self.stuck)
        deadline = self.limits.deadline_s
        if self.running is not None and deadline is not None:
            job, started = self.running
            if time.monotonic() - started > deadline + 2 * self.cancel_grace_s:
                raise RuntimeError(f"job {job} ran past its deadline and did not stop")

    async def run(self, job: str, payload: bytes, mailbox: Any) -> Any:
        """Run one job: yields ("started", job, identity), then the worker protocol's
        messages, ending with ("done", job, result_bytes), ("cancelled", job) or ("error",
        job, error). A cancelled request sets the job's cancel flag: the run stops at its
        next node (a run that does not within the grace period marks the replica unhealthy)."""
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        yield ("started", job, self.describe())
        self.running = (job, time.monotonic())
        work = loop.run_in_executor(None, self._work, job, payload, _Inbox(mailbox, job),
                                    _Outbox(loop, messages), cancel)
        try:
            while True:
                message = await messages.get()
                yield message
                if message[0] in _FINAL:
                    break
        except (asyncio.CancelledError, GeneratorExit):
            cancel.set()
            try:
                await asyncio.wait_for(asyncio.shield(work), self.cancel_grace_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.stuck = f"job {job} did not stop when it was cancelled"
            raise
        finally:
            self.running = None

    def _work(self, job: str, payload: bytes, inbox: _Inbox, outbox: _Outbox,
              cancel: threading.Event) -> None:
        """The run itself (a thread of the replica), as worker.main runs one job."""
        stream = worker._LogStream(outbox, job)

        def on_step(step: int, steps: int | None) -> None:
            outbox.put(("step", job, step, steps))

        try:
            try:
                local = worker.local_handler(job, inbox, outbox, cancel, self.limits)
                with redirect_stdout(stream), cancellable(cancel.is_set), \
                        serving_local_blocks(local):
                    result = run_payload(self.model, payload, self.limits, on_step)
            finally:
                stream.flush()
        except RunCancelled:
            outbox.put(("cancelled", job))
        except Exception as error:
            outbox.put(("error", job, worker.describe_error(error)))
        else:
            outbox.put(("done", job, result))


# the ingress side ------------------------------------------------------------------------------


class _Slot:
    """What one dispatcher (one replica's share of the work) is doing."""

    def __init__(self) -> None:
        self.job: str | None = None
        self.response: Any = None
        self.replica: dict[str, Any] | None = None
        self.waiting: tuple[str, int] | None = None
        self.cancelling = False


class RayHostedModel:
    """A hosted model whose runs go to a Ray Serve deployment: what the app's routes use of
    a HostedModel (`state`, `info()`, `cancel`, `upload`, `wake`, ...), with one dispatcher
    thread per replica taking jobs from the shared store."""

    def __init__(self, name: str, spec: str, store: Store, limits: Limits, handle: Any,
                 mailbox: Any, replicas: int, cancel_grace_s: float = 5.0,
                 max_running_per_key: int | None = None) -> None:
        self.name, self.spec, self.store, self.limits = name, spec, store, limits
        self.handle, self.mailbox, self.cancel_grace_s = handle, mailbox, cancel_grace_s
        self.max_running_per_key = max_running_per_key
        self.shape, self.site_paths, self.config, self.tokenizer_files = hosting.describe(spec)
        self.state = "loading"
        self.error: dict[str, Any] | None = None
        self.wake = threading.Event()
        self.stopping = False
        self.draining = False
        self.restarts = 0  # replicas seen to die under a job (Ray Serve replaces them)
        self.lock = threading.Lock()
        self.replicas: dict[str, dict[str, Any]] = {}  # replica id -> what /v1/models shows
        self.slots = [_Slot() for _ in range(replicas)]
        self.threads = [threading.Thread(target=self._dispatch, args=(slot,), daemon=True,
                                         name=f"ray-model-{name}-{i}")
                        for i, slot in enumerate(self.slots)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Take no more jobs; let running ones finish for up to `drain_s` seconds, then
        cancel them and mark them ERROR (queued jobs stay queued in the store)."""
        self.draining = True
        ends = time.monotonic() + drain_s
        while any(slot.job for slot in self.slots) and time.monotonic() < ends:
            time.sleep(0.05)
        self.stopping = True
        self.wake.set()
        for slot in self.slots:
            job, response = slot.job, slot.response
            if job is None:
                continue
            if response is not None:
                response.cancel()
            found = self.store.get(job)
            if found is not None and found["status"] == "RUNNING":
                self.store.set_status(job, "ERROR", error=_error(
                    "the server shut down while the job ran; submit it again"))

    def check(self, payload: bytes) -> tuple[str | None, int]:
        """Check a submitted payload (an NNsightError says why it is refused); on Ray every
        job runs alone (no merge key)."""
        check_payload(payload, self.site_paths, self.limits)
        return None, 0

    def cancel(self, job: str) -> None:
        for slot in self.slots:
            if slot.job == job:
                slot.cancelling = True

    def upload(self, job: str, block: int, values: bytes) -> bool:
        for slot in self.slots:
            if slot.job == job and slot.waiting == (job, block):
                slot.waiting = None
                self.mailbox.put.remote(job, ("upload", job, block, values))
                return True
        return False

    def info(self) -> dict[str, Any]:
        with self.lock:
            replicas = [dict(r) for r in self.replicas.values()]
        alive = [r for r in replicas if _alive(r)]  # one that died idle is dropped here
        if len(alive) < len(replicas):
            with self.lock:
                for gone in replicas:
                    if gone not in alive:
                        self.replicas.pop(gone["replica"], None)
        return {
            "name": self.name,
            "architecture": (self.config.get("architectures")
                             or [type(self.shape._module).__name__])[0],
            "config": self.config,
            "tokenizer": bool(self.tokenizer_files),
            "state": self.state,
            "queue_depth": self.store.queue_depth(self.name),
            "restarts": self.restarts,
            "worker_pid": None,
            "backend": "ray",
            "replicas": alive,
            "limits": {"deadline_s": self.limits.deadline_s, "nodes": self.limits.nodes,
                       "decompressed_bytes": self.limits.decompressed_bytes},
            "error": self.error,
        }

    # the dispatchers -------------------------------------------------------------------------

    def _dispatch(self, slot: _Slot) -> None:
        while not self.stopping and self.state != "ready":
            try:  # answered once a replica runs (Serve queues the call until then)
                self._seen(self.handle.describe.remote().result(timeout_s=600), job=None)
                self.state = "ready"
            except Exception as error:  # the deployment failed to start: say why, retry
                self.error = worker.describe_error(error)
                time.sleep(1.0)
        while not self.stopping:
            job = None if self.draining else self.store.next_queued(
                self.name, self.max_running_per_key)
            if job is None:
                self.wake.wait(_TICK_S)
                self.wake.clear()
                continue
            slot.job = job  # before it is RUNNING: a cancel from then on reaches this slot
            if not self.store.take(job):
                slot.job, slot.cancelling = None, False
                continue  # cancelled, or taken by another dispatcher
            try:
                self._run(slot, job)
            except Exception as error:  # this dispatcher goes on with the next job
                found = self.store.get(job)
                if found is not None and found["status"] == "RUNNING":
                    self.store.set_status(job, "ERROR", error=worker.describe_error(error))
            finally:
                self.mailbox.drop.remote(job)
                if slot.replica is not None:
                    self._seen(slot.replica, job=None)
                slot.job = slot.response = slot.replica = slot.waiting = None
                slot.cancelling = False

    def _seen(self, identity: dict[str, Any], job: str | None, ran: int = 0) -> None:
        with self.lock:
            entry = self.replicas.setdefault(
                identity["replica"], {**identity, "jobs": 0, "job": None})
            entry["job"] = job
            entry["jobs"] += ran

    def _gone(self, slot: _Slot) -> None:
        """The replica that ran `slot`'s job died (or was killed): Ray Serve replaces it."""
        if slot.replica is not None:
            with self.lock:
                self.replicas.pop(slot.replica["replica"], None)
        slot.replica = None
        self.restarts += 1

    def _run(self, slot: _Slot, job: str) -> None:
        payload = self.store.payload_path(job).read_bytes()
        messages: queue.Queue = queue.Queue()
        slot.response = self.handle.options(stream=True).run.remote(job, payload, self.mailbox)
        threading.Thread(target=_read, args=(slot.response, messages), daemon=True,
                         name=f"ray-read-{job[:8]}").start()
        deadline = None if self.limits.deadline_s is None else (
            time.monotonic() + self.limits.deadline_s + self.cancel_grace_s)
        cancel_at = None
        while not self.stopping:
            try:
                message = messages.get(timeout=_TICK_S)
            except queue.Empty:
                message = None
            if message is not None and self._record(slot, job, message, cancel_at is not None):
                return
            now = time.monotonic()
            if slot.cancelling and cancel_at is None:
                slot.response.cancel()  # the replica sets the job's cancel flag
                cancel_at = now + self.cancel_grace_s
            if cancel_at is not None and now >= cancel_at:  # it did not stop: replace it
                self.store.set_status(job, "CANCELLED")
                self._kill(slot)
                return
            if deadline is not None and now > deadline:
                self.store.set_status(job, "ERROR", error=_error(
                    f"the job ran past its deadline of {self.limits.deadline_s:g} s and did "
                    "not stop; make the graph smaller (fewer nodes or steps)", "TimeoutError"))
                self._kill(slot)
                return

    def _record(self, slot: _Slot, job: str, message: tuple, cancelled: bool) -> bool:
        """Keep one message of the job's stream in the store; True once the job ended."""
        kind = message[0]
        if kind == "started":
            slot.replica = message[2]
            self._seen(slot.replica, job=job)
        elif kind == "log":
            self.store.event(job, {"type": "LOG", "text": message[2]})
        elif kind == "step":
            self.store.progress(job, message[2], message[3])
        elif kind == "local":
            _, _, block, data, outputs = message
            if outputs:
                slot.waiting = (job, block)
            self.store.event(job, {"type": "LOCAL", "block": block, "outputs": outputs,
                                   "data": base64.b64encode(data).decode("ascii")})
        elif kind == "done":
            self.store.result_path(job).write_bytes(message[2])
            self.store.set_status(job, "COMPLETED")
            if slot.replica is not None:
                self._seen(slot.replica, job=job, ran=1)
            return True
        elif kind == "cancelled":
            self.store.set_status(job, "CANCELLED")
            return True
        elif kind == "error":
            self.store.set_status(job, "ERROR", error=message[2])
            return True
        elif kind == "raised":
            error = message[1]
            if cancelled and isinstance(error, (RequestCancelledError, TaskCancelledError,
                                                asyncio.CancelledError)):
                self.store.set_status(job, "CANCELLED")
            elif isinstance(error, RayActorError):
                where = "" if slot.replica is None else f" (pid {slot.replica['pid']})"
                self._gone(slot)
                self.store.set_status(job, "ERROR", error=_error(
                    f"the replica running the job{where} died, perhaps out of memory; Ray "
                    "Serve replaces it: submit the job again"))
            elif isinstance(error, BackPressureError):
                self.store.set_status(job, "ERROR", error=_error(
                    "the model's Ray Serve queue was full; submit the job again"))
            else:
                self.store.set_status(job, "ERROR", error=worker.describe_error(error))
            return True
        elif kind == "ended":
            self.store.set_status(job, "ERROR", error=_error(
                "the replica ended the job's stream without a result; submit it again"))
            return True
        return False

    def _kill(self, slot: _Slot) -> None:
        """Kill the replica that runs `slot`'s job (Ray Serve starts a new one)."""
        identity = slot.replica
        if identity is not None and identity.get("actor"):
            try:
                ray.kill(ray.get_actor(identity["actor"], namespace="serve"), no_restart=True)
            except ValueError:
                pass  # gone already
        self._gone(slot)


def _alive(replica: dict[str, Any]) -> bool:
    """Whether the replica's actor still runs (a dead actor's name is free)."""
    if not replica.get("actor"):
        return True
    try:
        ray.get_actor(replica["actor"], namespace="serve")
    except ValueError:
        return False
    return True


def _read(response: Any, messages: queue.Queue) -> None:
    """Iterate a streaming response (a thread): its items, then ("ended",) or the error."""
    try:
        for message in response:
            messages.put(message)
    except BaseException as error:  # the replica died, the request was cancelled, ...
        messages.put(("raised", error))
    else:
        messages.put(("ended",))


def _error(message: str, name: str = "RuntimeError") -> dict[str, Any]:
    return {"type": name, "module": "builtins", "message": message, "notes": []}


@serve.ingress()
class Ingress:
    """The ingress deployment: our FastAPI app over the job store, a RayHostedModel per model."""

    def __init__(self, handles: dict[str, Any], settings: ServerSettings) -> None:
        self.settings = settings
        self.store = Store(settings.store, ttl_s=settings.ttl_s)
        self.store.recover()
        self.store.expire()
        self.mailbox = Mailbox.remote()
        options = settings.options
        self.hosted = {
            name: RayHostedModel(name, spec, self.store, settings.limits, handles[name],
                                 self.mailbox, options.replicas, options.cancel_grace_s,
                                 settings.policy.max_running_per_key)
            for name, spec in settings.models.items()}
        for model in self.hosted.values():
            model.start()

    def __serve_build_asgi_app__(self) -> Any:
        s = self.settings
        return create_app(self.store, self.hosted, s.keys, s.max_body,  # type: ignore[arg-type]
                          s.policy)

    def check_health(self) -> None:
        """Serve calls this periodically: a dispatcher that is gone has the ingress replaced
        (the store keeps the queue; jobs that were running end ERROR on the restart)."""
        for name, model in self.hosted.items():
            if not model.stopping and not all(t.is_alive() for t in model.threads):
                raise RuntimeError(f"a dispatcher of model {name!r} stopped")

    def __del__(self) -> None:
        """Serve stops the ingress: drain the models, as the default server does."""
        hosted = getattr(self, "hosted", {})
        for model in hosted.values():
            model.draining = True
        for model in hosted.values():
            model.stop(self.settings.options.drain_s)


# the driver ------------------------------------------------------------------------------------


def application(settings: ServerSettings) -> Any:
    """The Serve application: a `model-NAME` deployment per model, and the ingress."""
    options = settings.options
    node = ray.util.get_node_ip_address()
    handles = {}
    for name, spec in settings.models.items():
        deployment = serve.deployment(
            name=f"model-{name}", num_replicas=options.replicas,
            max_ongoing_requests=1,
            max_queued_requests=options.max_queued_requests or 2 * options.replicas,
            health_check_period_s=options.health_check_period_s,
            ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus,
                               "runtime_env": {"env_vars": worker.worker_env()}},
        )(ModelReplica)
        handles[name] = deployment.bind(spec, settings.device, settings.dtype, settings.limits,
                                        options.cancel_grace_s)
    ingress = serve.deployment(
        name="ingress", num_replicas=1,
        max_ongoing_requests=1000,  # HTTP requests: the app bounds jobs, not Serve
        graceful_shutdown_timeout_s=options.drain_s + 10,
        # on the driver's node, where the store directory is
        ray_actor_options={"num_cpus": 0, "resources": {f"node:{node}": 0.001}},
    )(Ingress)
    return ingress.bind(handles, settings)


def start(settings: ServerSettings, host: str = "127.0.0.1", port: int = 6677) -> str:
    """Deploy on the Ray this process is connected to (ray.init first); the base URL, once
    every replica loaded its model."""
    quiet = {"log_level": "WARNING"}  # no line per request (Ray keeps its own logs)
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    serve.run(application(settings), name=APP_NAME, route_prefix="/", logging_config=quiet)
    return f"http://{host}:{port}"


def stop() -> None:
    """Remove the application (the ingress drains its models) and stop Serve."""
    serve.delete(APP_NAME)
    serve.shutdown()


def serve_forever(settings: ServerSettings, host: str, port: int,
                  address: str | None = None) -> None:
    """What `nnsight-graph serve --ray` does: connect to Ray (`address`, e.g. "auto" for a
    running cluster; None starts a local one), deploy, serve until SIGTERM or SIGINT."""
    ray.init(address=address)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        url = start(settings, host, port)
        print(f"nnsight-graph: serving {', '.join(settings.models)} on Ray Serve at {url}",
              flush=True)
        while not stopped.wait(1.0):
            pass
    finally:
        stop()
        ray.shutdown()


__all__ = ["Ingress", "ModelReplica", "RayHostedModel", "RayOptions", "ServerSettings",
           "application", "serve_forever", "start", "stop"]
