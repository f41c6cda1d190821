"""The client side of remote execution: send a job to a server, follow it, fetch its results.

`Client` speaks the HTTP API of docs/remote_api.md (httpx; events over the job's WebSocket,
polled when a socket cannot be opened). `Job` is what a user holds: `tracer.job` after a
non-blocking trace, or `nnsight_graph.Job.attach(job_id)` from another process.
"""

from __future__ import annotations

import atexit
import base64
import builtins
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.proxy import get_proxy
from websockets.sync.client import connect
from websockets.uri import parse_uri

from .. import __version__
from ..config import CONFIG, host_url
from ..ir.errors import NNsightError, append_note
from ..ir.results import dumps_results, loads_results
from ..ir.wire_schema import SCHEMA_VERSION

FINAL = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
"""The job states a job never leaves."""

_POLL_S = 0.05  # the first wait between polls of a job's events; it doubles up to _POLL_MAX_S
_POLL_MAX_S = 1.0
_SOCKET_MAX_BYTES = 64 << 20  # an event over the socket: a LOCAL event carries up to 32 MiB
_OUR_MODULE = re.compile(r"nnsight_graph(\.[a-z][a-z0-9_]*)*")


SUBMIT_RETRY_S = 60.0  # how long a submit waits out 429/503 answers that say when to retry


class RemoteError(NNsightError):
    """The server refused a request or could not be reached; `code` is the API's error code
    (`bad_payload`, `refused`, `schema_mismatch`, ... or `unreachable`)."""

    def __init__(self, message: str, code: str = "error", status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after  # seconds the server asked to wait (429, 503)


class RemoteJobError(NNsightError):
    """A job failed on the server with an error whose type the client does not have."""


class JobCancelledError(NNsightError):
    """The job was cancelled before it finished, so it has no result."""


_CLIENTS: dict[tuple[str, str | None], Client] = {}


@atexit.register
def _close_clients() -> None:
    for client in _CLIENTS.values():
        client.close()


class Client:
    """One server and one API key: the HTTP calls of the remote API."""

    def __init__(
        self, host: str | None = None, api_key: str | None = None, connect_timeout: float = 10.0
    ) -> None:
        self.host = host_url(host)
        self.api_key = api_key if api_key is not None else CONFIG.API.APIKEY
        headers = {
            "X-NNsight-Graph-Schema": str(SCHEMA_VERSION),
            "X-NNsight-Graph-Version": __version__,
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.headers = headers
        # the proxy for this server's sockets, found once: websockets would read the whole
        # environment on every connect (about a millisecond each)
        self._socket_proxy = get_proxy(parse_uri(re.sub(r"^http", "ws", self.host)))
        self.http = httpx.Client(
            base_url=self.host, headers=headers, timeout=httpx.Timeout(60.0, connect=connect_timeout)
        )

    @classmethod
    def shared(cls, host: str | None = None, api_key: str | None = None) -> Client:
        """One client per server and key for this process (its connections are reused)."""
        key = (host_url(host), api_key if api_key is not None else CONFIG.API.APIKEY)
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = cls(*key)
        return client

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; an error answer raises RemoteError with the server's message
        and hint, an unreachable server one that says how to start or point at one."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise RemoteError(
                f"no nnsight_graph server answers at {self.host} ({type(error).__name__}: "
                f"{error}); start one with `nnsight-graph serve`, or point CONFIG.API.HOST "
                "(env NNSIGHT_GRAPH_HOST) or remote='http://host:port' at a running one",
                code="unreachable",
            ) from error
        if response.status_code >= 400:
            raise _http_error(response, self.host)
        return response

    # the endpoints -----------------------------------------------------------------------

    def submit(self, payload: bytes, model: str, names: dict[int, str] | None = None) -> dict:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-NNsight-Graph-Model": model,
            "X-NNsight-Graph-Names": json.dumps({str(k): v for k, v in (names or {}).items()}),
        }
        ends = time.monotonic() + SUBMIT_RETRY_S
        while True:  # a full queue (429) or a model not ready yet (503): wait as asked, bounded
            try:
                return self.request("POST", "/v1/jobs", content=payload, headers=headers).json()
            except RemoteError as error:
                wait = error.retry_after
                if error.status not in (429, 503) or wait is None \
                        or time.monotonic() + wait > ends:
                    raise
                time.sleep(wait)

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        answer = self.request("GET", f"/v1/jobs/{job_id}/events", params={"after": after})
        return list(answer.json()["events"])

    def result(self, job_id: str) -> bytes:
        return self.request("GET", f"/v1/jobs/{job_id}/result").content

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{job_id}").json()

    def models(self) -> list[dict]:
        return list(self.request("GET", "/v1/models").json())

    def model_config(self, name: str) -> dict:
        return dict(self.request("GET", f"/v1/models/{name}/config").json())

    def tokenizer_files(self, name: str) -> dict[str, str]:
        return dict(self.request("GET", f"/v1/models/{name}/tokenizer").json()["files"])

    def follow(
        self, job_id: str, after: int = 0, timeout: float | None = None, inline: bool = False
    ) -> Iterator[dict]:
        """The job's events from `after` on, as they happen, until its final status: over its
        WebSocket, or by polling where a socket cannot be opened. Raises TimeoutError past
        `timeout` seconds. `inline`: a small result rides on the socket's COMPLETED event as
        base64 under "result" (one request fewer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = after
        try:
            for event in self._socket_events(job_id, after, deadline, inline):
                seen = event["seq"]
                yield event
                if _is_final(event):
                    return
        except (OSError, WebSocketException):
            pass  # no socket (a proxy in the way, an old server): poll instead
        yield from self._polled_events(job_id, seen, deadline)

    def _socket_events(
        self, job_id: str, after: int, deadline: float | None, inline: bool = False
    ) -> Iterator[dict]:
        url = re.sub(r"^http", "ws", self.host) + f"/v1/jobs/{job_id}/events?after={after}"
        if inline:
            url += "&result=inline"
        headers = {k: v for k, v in self.headers.items()}
        with connect(url, additional_headers=headers, open_timeout=10,
                     max_size=_SOCKET_MAX_BYTES, compression=None,
                     proxy=self._socket_proxy) as socket:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} did not finish in time")
                try:
                    message = socket.recv(timeout=left)
                except TimeoutError:
                    raise TimeoutError(f"job {job_id} did not finish in time") from None
                except ConnectionClosed:  # closed before the final status: poll the rest
                    return
                yield json.loads(message)

    def _polled_events(self, job_id: str, after: int, deadline: float | None) -> Iterator[dict]:
        wait = _POLL_S
        while True:
            events = self.events(job_id, after)
            for event in events:
                after = event["seq"]
                yield event
                if _is_final(event):
                    return
            if deadline is not None and time.monotonic() + wait > deadline:
                raise TimeoutError(f"job {job_id} did not finish in time")
            time.sleep(wait)
            wait = _POLL_S if events else min(wait * 2, _POLL_MAX_S)


def _is_final(event: dict) -> bool:
    return event.get("type") == "STATUS" and event.get("status") in FINAL


def _http_error(response: httpx.Response, host: str) -> RemoteError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict) or "code" not in body:
        body = {"code": "error", "message": response.text[:500] or response.reason_phrase}
    error = _error_from_json(body, response.status_code, host)
    wait = response.headers.get("retry-after", "")
    error.retry_after = float(wait) if wait.isdigit() else None
    return error


def _error_from_json(body: dict, status: int, host: str) -> RemoteError:
    message = str(body.get("message", ""))
    hint = body.get("hint")
    text = f"the server at {host} answered {status} {body['code']}: {message}"
    if hint:
        text += f" ({hint})"
    return RemoteError(text, code=str(body["code"]), status=status)


def rebuild_error(info: dict, job_id: str) -> BaseException:
    """The exception a job's `error` describes, as the client can raise it: its own type
    where that is a builtin or one of ours, its message, and its notes (the user's line)."""
    name, module = str(info.get("type", "")), str(info.get("module", ""))
    message = str(info.get("message", ""))
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif _OUR_MODULE.fullmatch(module):
        import importlib

        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    error: BaseException
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            error = cls(message)
        except Exception:  # a type whose constructor takes other arguments
            error = RemoteJobError(f"{name}: {message}")
    else:
        error = RemoteJobError(f"{name or 'error'}: {message}")
    for note in info.get("notes") or ():
        append_note(error, str(note))
    append_note(error, f"(raised on the server, in job {job_id})")
    return error


class Job:
    """A job on a server: `.id`, `.status()`, `.result(timeout=None)`, `.cancel()`."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        names: dict[int, str] | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.names = dict(names or {})
        self.on_event = on_event
        # the trace's nnsight.local() blocks (nnsight_graph.local.LocalBlocks), run here when
        # the job's LOCAL events arrive; None for a job attached by id
        self.local_blocks: Any = None
        self._seen = 0
        self._saved: dict[int, Any] | None = None
        self._inline: bytes | None = None  # the result, when the COMPLETED event carried it
        self._final: str | None = None  # the final status, once followed to it

    @classmethod
    def attach(cls, job_id: str, host: str | None = None, api_key: str | None = None) -> Job:
        """A job submitted earlier (by this process or another), by its id."""
        client = Client.shared(host, api_key)
        info = client.job(job_id)
        names = {int(k): v for k, v in (info.get("names") or {}).items()}
        return cls(client, job_id, names)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, host={self.client.host!r})"

    def status(self) -> str:
        """The job's state now: QUEUED, RUNNING, COMPLETED, ERROR or CANCELLED."""
        return str(self.client.job(self.id)["status"])

    def info(self) -> dict:
        """Everything the server says of the job (position, step, times, error)."""
        return self.client.job(self.id)

    def cancel(self) -> str:
        """Cancel the job (a queued job is removed; a running one stops at its next node)."""
        return str(self.client.cancel(self.id)["status"])

    def wait(self, timeout: float | None = None) -> str:
        """Follow the job's events until it ends; its final status. TimeoutError past
        `timeout` seconds (the job goes on)."""
        if self._final is not None:
            return self._final  # followed to its end already: no events are left to wait for
        status = None
        for event in self.client.follow(self.id, self._seen, timeout, inline=True):
            self._seen = event["seq"]
            if self.on_event is not None:
                self.on_event(event)
            if event.get("type") == "STATUS":
                status = event["status"]
                if status == "COMPLETED" and "result" in event:  # small: sent with the event
                    self._inline = base64.b64decode(event.pop("result"))
            elif event.get("type") == "LOCAL" and self.local_blocks is not None:
                self._run_local(event)
        status = str(status) if status is not None else self.status()
        if status in FINAL:
            self._final = status
        return status

    def _run_local(self, event: dict) -> None:
        """Run the nnsight.local() block the job reached on the values it sent; send back
        what the run needs of it. An error in the block cancels the job and is raised here."""
        block, outputs = int(event["block"]), list(event.get("outputs") or [])
        end_line = getattr(self.on_event, "end_line", None)
        if end_line is not None:
            end_line()  # what the block prints starts on a line of its own
        try:
            values = self.local_blocks.handle(
                block, loads_results(base64.b64decode(event["data"])), outputs)
        except BaseException:
            self.cancel()
            raise
        if outputs:
            self.client.request(
                "POST", f"/v1/jobs/{self.id}/local/{block}", content=dumps_results(values),
                headers={"content-type": "application/octet-stream"},
            )

    def payload(self, timeout: float | None = None) -> bytes:
        """The job's results payload as the server wrote it (ir.results), once the job
        completed; its error, raised, if not."""
        status = self.wait(timeout)
        if status == "ERROR":
            error = self.client.job(self.id).get("error") or {}
            raise rebuild_error(error, self.id)
        if status == "CANCELLED":
            raise JobCancelledError(f"job {self.id} was cancelled, so it has no result")
        return self._inline if self._inline is not None else self.client.result(self.id)

    def saved(self, timeout: float | None = None) -> dict[int, Any]:
        """The saved values by node id, once the job completed; its error, raised, if not."""
        if self._saved is None:
            self._saved = loads_results(self.payload(timeout))
        return self._saved

    def result(self, timeout: float | None = None) -> dict[Any, Any]:
        """The saved values by the names they were bound to in the trace (values saved under
        no name, such as items of a saved list, keep their node id)."""
        return {self.names.get(node, node): value for node, value in self.saved(timeout).items()}


__all__ = [
    "FINAL",
    "Client",
    "Job",
    "JobCancelledError",
    "RemoteError",
    "RemoteJobError",
    "host_url",
    "rebuild_error",
]
