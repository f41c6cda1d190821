"""Start an nnsight_graph server on this machine, and stop it afterwards (examples, tests).

    with local_server() as url:      # `nnsight-graph serve` on a free loopback port
        CONFIG.API.HOST = url
        ...

The server is a subprocess (`python -m nnsight_graph.server serve`) hosting the shipped tiny
GPT-2 as `tiny-gpt2` unless `args` say otherwise, with its job store in `store` (default a
temporary directory, removed afterwards).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_server(
    *args: str, store: str | None = None, port: int | None = None, ready_timeout: float = 120.0
) -> Iterator[str]:
    """The base URL of a server started with `args`, ready (its /readyz answers 200)."""
    with server_process(*args, store=store, port=port, ready_timeout=ready_timeout) as (url, _):
        yield url


@contextmanager
def server_process(
    *args: str, store: str | None = None, port: int | None = None, ready_timeout: float = 120.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`local_server`, also giving the server's process (to signal it, as tests of shutdown
    do); stopped with SIGTERM afterwards if it still runs."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nnsight-graph-store-") as temporary:
        store = store or temporary
        command = [sys.executable, "-m", "nnsight_graph.server", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--store", store, *args]
        process = subprocess.Popen(command)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}: {command}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server at {url} was not ready in {ready_timeout}s")
                time.sleep(0.2)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


__all__ = ["free_port", "local_server", "server_process"]
