"""`nnsight-graph serve ...` (also `python -m nnsight_graph.server serve ...`) and
`nnsight-graph hash-key` (a line for the --api-keys file)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..ir.wire_schema import build_validators
from .policy import Policy

DEFAULT_MODEL = "tiny-gpt2"


def default_store() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnsight_graph" / "server"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nnsight-graph", description="nnsight_graph's server")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="host models for remote=True traces")
    serve.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                       help="a model to host (repeat for more): NAME=PATH_OR_HUB_ID for a "
                       "LanguageModel, or NAME=package.module:factory for a torch.nn.Module "
                       "that your own importable function returns (clients use "
                       "NNsight(net, remote_name=NAME)); default: the shipped tiny GPT-2 "
                       f"as {DEFAULT_MODEL}")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=6677)
    serve.add_argument("--api-keys", metavar="FILE",
                       help="lines of `USER SHA256_OF_KEY [SECONDS_PER_DAY]` (see "
                       "`nnsight-graph hash-key`; the third field: a daily budget of run time)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, auto (a device_map)")
    serve.add_argument("--dtype", default=None, help="float32, bfloat16, float16, ...")
    serve.add_argument("--store", default=None, help=f"job store (default {default_store()})")
    serve.add_argument("--ttl", type=float, default=7 * 24 * 3600.0,
                       help="seconds a result is kept (default 7 days)")
    serve.add_argument("--deadline", type=float, default=None, help="seconds a job may run")
    serve.add_argument("--max-body", type=int, default=64 << 20, help="payload bytes allowed")
    serve.add_argument("--drain", type=float, default=30.0,
                       help="seconds a running job may take to finish when the server is "
                       "stopped (SIGTERM); queued jobs wait in the store for the next start")
    serve.add_argument("--max-queue", type=int, default=Policy.max_queue,
                       help="jobs queued or running per model (more: 429)")
    serve.add_argument("--max-queued-per-key", type=int, default=Policy.max_queued_per_key,
                       help="jobs one key may have queued (more: 429)")
    serve.add_argument("--max-running-per-key", type=int, default=Policy.max_running_per_key,
                       help="jobs of one key that run at once, over all models")
    serve.add_argument("--ray", action="store_true",
                       help="run each model as a Ray Serve deployment (pip install "
                       "'nnsight-graph[ray]'); the same HTTP API and job store")
    serve.add_argument("--replicas", type=int, default=1,
                       help="with --ray: replicas per model (each loads the model once)")
    serve.add_argument("--ray-address", default=None,
                       help="with --ray: the Ray cluster to join (auto: the one running "
                       "here, ray://HOST:10001 ...); default: start a local one")
    serve.add_argument("--replica-cpus", type=float, default=1.0,
                       help="with --ray: CPUs each replica reserves")
    serve.add_argument("--replica-gpus", type=float, default=0.0,
                       help="with --ray: GPUs each replica reserves (1: one GPU per "
                       "replica; more for a model that spans GPUs with --device auto)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0,
                       help="co-batching: how long the dispatcher may wait to merge queued "
                       "jobs that can share one forward pass (default 5; 0 disables merging)")
    serve.add_argument("--max-batch-rows", type=int, default=64,
                       help="co-batching: batch rows one merged forward pass may hold")
    key = commands.add_parser("hash-key", help="print the keys-file line for a key (from stdin)")
    key.add_argument("user")
    return top


def models_of(specs: list[str]) -> dict[str, str]:
    from nnsight_graph.models import tiny_gpt2_path

    if not specs:
        return {DEFAULT_MODEL: tiny_gpt2_path()}
    models = {}
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise SystemExit(f"--model {spec!r}: write NAME=PATH_OR_HUB_ID or "
                             "NAME=package.module:factory")
        models[name] = tiny_gpt2_path() if where == DEFAULT_MODEL else where
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ..ir.limits import SERVER
    from .app import create_app, read_budgets, read_keys
    from .models import HostedModel
    from .store import Store

    if not is_loopback(args.host) and not args.api_keys:
        raise SystemExit(f"refusing to listen on {args.host} without --api-keys FILE: anyone "
                         "who reaches it could run jobs; add keys, or bind 127.0.0.1")
    keys = read_keys(args.api_keys) if args.api_keys else None
    policy = Policy(args.max_queue, args.max_queued_per_key, args.max_running_per_key,
                    read_budgets(args.api_keys) if args.api_keys else {})
    limits = SERVER if args.deadline is None else replace(SERVER, deadline_s=args.deadline)
    if args.ray:
        serve_on_ray(args, keys, policy, limits)
        return
    store = Store(args.store or default_store(), ttl_s=args.ttl)
    store.recover()
    store.expire()
    hosted = {name: HostedModel(name, spec, store, limits, args.device, args.dtype,
                                max_running_per_key=policy.max_running_per_key,
                                batch_window_s=args.batch_window_ms / 1000,
                                max_batch_rows=args.max_batch_rows)
              for name, spec in models_of(args.model).items()}
    for model in hosted.values():
        model.start()
    app = create_app(store, hosted, keys, args.max_body, policy)
    # uvicorn stops serving on SIGTERM/SIGINT, then raises the signal again with the handler
    # found before it ran: this one, so that the models drain before the process exits
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        build_validators()
        # no permessage-deflate: events are small, and a result sent inline is zstd already
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=5, ws_per_message_deflate=False)
    except _Stopped:
        pass
    finally:
        for model in hosted.values():
            model.draining = True  # all at once: no model starts a job while others drain
        for model in hosted.values():
            model.stop(args.drain)


def serve_on_ray(args: argparse.Namespace, keys: dict[str, str] | None, policy: Policy,
                 limits: Any) -> None:
    try:
        from . import ray_serving
    except ImportError as error:
        raise SystemExit(f"--ray needs Ray Serve ({error}): pip install 'nnsight-graph[ray]'"
                         ) from error
    if args.replicas < 1:
        raise SystemExit("--replicas: at least 1")
    options = ray_serving.RayOptions(replicas=args.replicas, num_cpus=args.replica_cpus,
                                     num_gpus=args.replica_gpus, drain_s=args.drain)
    settings = ray_serving.ServerSettings(
        models=models_of(args.model), store=str(Path(args.store or default_store()).resolve()),
        ttl_s=args.ttl, limits=limits, device=args.device, dtype=args.dtype, keys=keys,
        max_body=args.max_body, policy=policy, options=options)
    ray_serving.serve_forever(settings, args.host, args.port, args.ray_address)


class _Stopped(Exception):
    """SIGTERM, after uvicorn stopped serving: drain the models, then exit 0."""


def _stop_serving(signum: int, frame: Any) -> None:
    raise _Stopped()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "hash-key":
        from .app import hash_key

        key = sys.stdin.readline().strip()
        print(f"{args.user} {hash_key(key)}")
        return
    serve(args)


__all__ = ["main"]
