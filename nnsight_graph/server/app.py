"""The HTTP API of docs/remote_api.md: FastAPI routes over the job store and hosted models."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers

from .. import __version__
from ..ir.errors import NNsightError, WireFormatError
from ..ir.results import loads_results
from ..ir.wire_schema import SCHEMA_VERSION
from .errors import ApiError
from .metrics import CONTENT_TYPE, registry, render
from .models import HostedModel
from .policy import Policy, admit
from .policy import whoami as policy_whoami
from .store import FINAL, Store

LOCAL_USER = "local"
_NAMES_BYTES = 64 << 10
INLINE_RESULT_BYTES = 256 << 10  # a result up to this size rides on the COMPLETED event
_RECHECK_S = 1.0


def read_keys(path: str | Path) -> dict[str, str]:
    """An API keys file: one `USER SHA256_OF_KEY [SECONDS_PER_DAY]` per line (`#`
    comments), as `nnsight-graph hash-key` prints; sha256 hex -> user."""
    return {digest: user for digest, (user, _) in _key_lines(path).items()}


def read_budgets(path: str | Path) -> dict[str, float]:
    """The keys file's daily budgets: user -> wall seconds of runs per day (the optional
    third field of a line; a user with several keys shares the budget of its last line)."""
    return {user: budget for user, budget in _key_lines(path).values() if budget is not None}


def _key_lines(path: str | Path) -> dict[str, tuple[str, float | None]]:
    found: dict[str, tuple[str, float | None]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        budget: float | None = None
        if len(parts) == 3:
            try:
                budget = float(parts[2])
            except ValueError:
                budget = -1.0
        if len(parts) not in (2, 3) or len(parts[1]) != 64 or (budget is not None and budget < 0):
            raise ValueError(f"{path}:{number}: write `USER SHA256_HEX_OF_KEY` (64 hex digits), "
                             "optionally followed by the key's run seconds per day")
        found[parts[1].lower()] = (parts[0], budget)
    return found


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_app(store: Store, models: dict[str, HostedModel], keys: dict[str, str] | None,
               max_body: int, policy: Policy | None = None) -> FastAPI:
    app = FastAPI(title="nnsight_graph server", version=__version__)
    policy = policy or Policy()
    metrics = registry(store, models)
    # the WebSockets following each job: woken by the store's events, not by polling
    watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
    watch_lock = threading.Lock()

    def wake_watchers(job: str) -> None:
        with watch_lock:
            found = list(watchers.get(job, ()))
        for loop, flag in found:
            loop.call_soon_threadsafe(flag.set)

    store.listeners.append(wake_watchers)

    def user_of(headers: Any) -> str:
        if keys is None:
            return LOCAL_USER
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("ndif-api-key")
        if not key:
            raise ApiError(401, "unauthorized", "this server needs an API key",
                           "CONFIG.set_default_api_key(KEY) or env NNSIGHT_GRAPH_API_KEY")
        digest = hash_key(key)
        for known, user in keys.items():  # every entry compared: no early exit on a match
            if hmac.compare_digest(known, digest):
                return user
        raise ApiError(401, "unauthorized", "the server does not know this API key",
                       "ask the server's operator for a key")

    def check_schema(headers: Any) -> None:
        theirs = headers.get("x-nnsight-graph-schema")
        if theirs is None:
            return  # curl, a browser: nothing to compare
        if not theirs.isdigit():
            raise ApiError(400, "bad_request", f"X-NNsight-Graph-Schema {theirs!r} is not a number")
        if int(theirs) != SCHEMA_VERSION:
            side = "the client (pip install -U nnsight-graph)" if int(theirs) < SCHEMA_VERSION \
                else "the server"
            raise ApiError(426, "schema_mismatch",
                           f"the client speaks wire schema {theirs}, the server {SCHEMA_VERSION}",
                           f"upgrade {side}")

    def own_job(job_id: str, user: str) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None or job["user"] != user:
            raise ApiError(404, "unknown_job", f"no job {job_id} for this key",
                           "check the id (jobs of another key are not visible)")
        return job

    def model_named(name: str) -> HostedModel:
        model = models.get(name)
        if model is None:
            raise ApiError(404, "unknown_model", f"no model named {name!r} is hosted here",
                           "hosted: " + ", ".join(sorted(models)))
        return model

    app.add_middleware(_Versions, check_schema=check_schema)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return _error_response(error)

    # quick routes are async (no hop to a worker thread); the job store's reads take
    # microseconds (SQLite in WAL mode). Routes that read files or take long stay threaded.
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz")
    async def readyz() -> Response:
        states = {name: model.state for name, model in models.items()}
        ready = all(state == "ready" for state in states.values())
        return JSONResponse({"ready": ready, "models": states}, status_code=200 if ready else 503)

    @app.get("/v1/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        return policy_whoami(store, policy, user_of(request.headers))

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(render(metrics), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    def list_models(request: Request) -> list[dict[str, Any]]:
        user_of(request.headers)
        return [model.info() for model in models.values()]

    @app.get("/v1/models/{name}/config")
    def model_config(name: str, request: Request) -> dict[str, Any]:
        user_of(request.headers)
        return model_named(name).config

    @app.get("/v1/models/{name}/tokenizer")
    def model_tokenizer(name: str, request: Request) -> dict[str, Any]:
        user_of(request.headers)
        return {"files": model_named(name).tokenizer_files}

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        user = user_of(request.headers)
        name = request.headers.get("x-nnsight-graph-model")
        if not name:
            raise ApiError(400, "bad_request", "the X-NNsight-Graph-Model header is missing",
                           "name the model: one of " + ", ".join(sorted(models)))
        model = model_named(name)
        if model.state == "failed":
            raise ApiError(503, "not_ready", f"the model {name!r} failed to load",
                           json.dumps(model.error))
        if model.state != "ready":
            raise ApiError(503, "not_ready", f"the model {name!r} is {model.state}",
                           "submit again in a few seconds (Retry-After)",
                           headers={"Retry-After": "2"})
        admit(store, policy, user, name)
        names = _names(request.headers.get("x-nnsight-graph-names"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise ApiError(413, "too_large", f"the payload has {length} bytes, over {max_body}",
                           "save fewer or smaller values, or send smaller inputs")
        body = await request.body()
        if len(body) > max_body:
            raise ApiError(413, "too_large", f"the payload has {len(body)} bytes, over {max_body}",
                           "save fewer or smaller values, or send smaller inputs")
        try:
            merge_key, rows = await asyncio.to_thread(model.check, body)
        except WireFormatError as error:
            raise ApiError(400, "bad_payload", str(error),
                           "send what nnsight_graph.ir.wire.dumps writes") from None
        except NNsightError as error:
            raise ApiError(422, "refused", _with_notes(error),
                           "change the trace as the message says") from None
        job = store.add(user, name, body, names, merge_key, rows)
        model.wake.set()
        return {"job_id": job, "status": "QUEUED", "position": store.position(job)}

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str, request: Request) -> dict[str, Any]:
        return _public(store, own_job(job_id, user_of(request.headers)))

    @app.get("/v1/jobs/{job_id}/result")
    def job_result(job_id: str, request: Request) -> Response:
        job = own_job(job_id, user_of(request.headers))
        if job["status"] != "COMPLETED":
            raise ApiError(409, "not_finished", f"job {job_id} is {job['status']}",
                           "wait for COMPLETED (GET /v1/jobs/{id} or its events)")
        path = store.result_path(job_id)
        if store.result_expired(job) or not path.exists():
            raise ApiError(410, "result_expired", f"the result of job {job_id} expired",
                           "run the job again")
        return Response(path.read_bytes(), media_type="application/octet-stream")

    @app.delete("/v1/jobs/{job_id}")
    def job_cancel(job_id: str, request: Request) -> dict[str, Any]:
        job = own_job(job_id, user_of(request.headers))
        if job["status"] == "QUEUED" and store.cancel_queued(job_id):
            return {"job_id": job_id, "status": "CANCELLED"}
        if job["status"] in ("QUEUED", "RUNNING"):
            models[job["model"]].cancel(job_id)
        return {"job_id": job_id, "status": (store.get(job_id) or job)["status"]}

    @app.post("/v1/jobs/{job_id}/local/{block}")
    async def job_local_values(job_id: str, block: int, request: Request) -> dict[str, Any]:
        """The values an nnsight.local() block made on the client, for the running job that
        waits for them (a results payload, checked under the model's limits)."""
        job = own_job(job_id, user_of(request.headers))
        model = models[job["model"]]
        body = await request.body()
        if len(body) > max_body:
            raise ApiError(413, "too_large", f"the values have {len(body)} bytes, over {max_body}",
                           "make the values later code uses from the block smaller")
        try:
            await asyncio.to_thread(loads_results, body, model.limits)
        except NNsightError as error:
            raise ApiError(400, "bad_payload", str(error),
                           "send what nnsight_graph.ir.results.dumps_results writes") from None
        if not model.upload(job_id, block, body):
            raise ApiError(409, "not_waiting",
                           f"job {job_id} is not waiting for the values of block {block}",
                           "send them only after its LOCAL event asks for them")
        return {"job_id": job_id, "block": block}

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request, after: int = 0) -> dict[str, Any]:
        own_job(job_id, user_of(request.headers))
        return {"events": store.events(job_id, after)}

    @app.websocket("/v1/jobs/{job_id}/events")
    async def job_socket(socket: WebSocket, job_id: str, after: int = 0,
                         result: str = "") -> None:
        try:
            check_schema(socket.headers)
            own_job(job_id, user_of(socket.headers))
        except ApiError as error:
            await socket.close(code=1008, reason=error.code)  # the client polls: full answer
            return
        await socket.accept()
        flag = asyncio.Event()  # set (from any thread) when the job has a new event
        watch = (asyncio.get_running_loop(), flag)
        with watch_lock:
            watchers.setdefault(job_id, set()).add(watch)
        try:
            while True:
                flag.clear()  # before reading: an event added after the read sets it again
                ended = (store.get(job_id) or {}).get("status") in FINAL  # read before events
                events = store.events(job_id, after)
                for event in events:
                    after = event["seq"]
                    final = event.get("type") == "STATUS" and event.get("status") in FINAL
                    if final and event["status"] == "COMPLETED" and result == "inline":
                        event = {**event, **_inline_result(store, job_id)}
                    await socket.send_text(json.dumps(event))
                    if final:
                        await socket.close()
                        return
                if not events and ended:
                    await socket.close()  # asked for events after the last one: there are none
                    return
                if not events:
                    try:  # the recheck is a safety net only: events wake the handler
                        await asyncio.wait_for(flag.wait(), timeout=_RECHECK_S)
                    except TimeoutError:
                        pass
        except WebSocketDisconnect:
            return
        finally:
            with watch_lock:
                found = watchers.get(job_id)
                if found is not None:
                    found.discard(watch)
                    if not found:
                        del watchers[job_id]

    return app


class _Versions:
    """An ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs about a
    millisecond a request): refuse a request whose wire schema differs from ours, and put our
    schema and version on every HTTP answer."""

    _HEADERS = [(b"x-nnsight-graph-schema", str(SCHEMA_VERSION).encode()),
                (b"x-nnsight-graph-version", __version__.encode())]

    def __init__(self, app: Any, check_schema: Callable[[Any], None]) -> None:
        self.app, self.check_schema = app, check_schema

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # a WebSocket checks the schema itself
            return
        try:
            self.check_schema(Headers(scope=scope))
        except ApiError as error:
            await _error_response(error)(scope, receive, self._stamped(send))
            return
        await self.app(scope, receive, self._stamped(send))

    def _stamped(self, send: Any) -> Any:
        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._HEADERS]}
            await send(message)

        return stamped


def _inline_result(store: Store, job_id: str) -> dict[str, str]:
    """`{"result": base64}` for a result small enough to ride on the job's COMPLETED event
    (the client then needs no GET of it), else {}."""
    path = store.result_path(job_id)
    try:
        if path.stat().st_size > INLINE_RESULT_BYTES:
            return {}
        data = path.read_bytes()
    except OSError:
        return {}
    return {"result": base64.b64encode(data).decode("ascii")}


def _names(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    if len(header) > _NAMES_BYTES:
        raise ApiError(400, "bad_request", "X-NNsight-Graph-Names is over 64 KiB")
    try:
        names = json.loads(header)
    except ValueError:
        names = None
    if not isinstance(names, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in names.items()):
        raise ApiError(400, "bad_request", "X-NNsight-Graph-Names must be a JSON object of "
                       'node ids to names, such as {"12": "hidden"}')
    return names


def _with_notes(error: BaseException) -> str:
    notes = getattr(error, "__notes__", ())
    return "\n".join([str(error), *map(str, notes)])


def _public(store: Store, job: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job["id"], "model": job["model"], "status": job["status"],
        "position": store.position(job["id"]), "step": job["step"], "steps": job["steps"],
        "created": job["created"], "started": job["started"], "finished": job["finished"],
        "names": json.loads(job["names"]), "batch_jobs": job.get("batch_jobs"),
        "error": json.loads(job["error"]) if job["error"] else None,
    }


def _error_body(error: ApiError) -> dict[str, str]:
    return {"code": error.code, "message": error.message, "hint": error.hint}


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(_error_body(error), status_code=error.status, headers=error.headers)


__all__ = ["ApiError", "create_app", "hash_key", "read_keys"]
