"""Shared by the remote tests: the API keys of the test server's two users and its keys file
(`USER SHA256_OF_KEY` lines, as `nnsight-graph hash-key` prints them)."""

from pathlib import Path

from nnsight_graph.server.app import hash_key

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}


def keys_file(folder: Path) -> Path:
    path = folder / "keys.txt"
    lines = ["# user sha256(key)"] + [f"{user} {hash_key(key)}" for user, key in KEYS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
