"""A hosted model's config and tokenizer, from the server: `LanguageModel(name)` offline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..config import host_url
from .client import Client, RemoteError

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def cache_dir() -> Path:
    """Where nnsight_graph keeps files it fetched (env NNSIGHT_GRAPH_CACHE, else the user's
    cache directory)."""
    root = os.environ.get("NNSIGHT_GRAPH_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnsight_graph"


def fetch_model_files(name: str, host: str | None = None) -> str:
    """A folder holding `config.json` and the tokenizer files of the model the server at
    `host` (default CONFIG.API.HOST) hosts as `name`; RemoteError if it hosts none."""
    client = Client(host, connect_timeout=1.0)
    try:
        config = client.model_config(name)
        files = client.tokenizer_files(name)
    finally:
        client.close()
    where = re.sub(r"[^A-Za-z0-9.-]+", "_", host_url(host).split("://", 1)[1])
    folder = cache_dir() / "served" / where / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        if not _FILE_NAME.fullmatch(file) or file == "config.json":
            raise RemoteError(f"the server sent a tokenizer file named {file!r}, which is not a "
                              "plain file name; the server is not an nnsight_graph server",
                              code="bad_answer")
        (folder / file).write_text(text, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(folder)


__all__ = ["cache_dir", "fetch_model_files"]
