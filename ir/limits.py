"""Bounds on what one graph may cost to read: bytes, nodes, ids, strings, invoke ranges.

`LOCAL` suits a user's own saved graphs; `SERVER` is what a server accepts from a client.
Readers take a `Limits` so that each caller states its bounds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How large a payload and the graph in it may be before it is refused."""

    decompressed_bytes: int = 1 << 30  # the whole container after zstd
    header_bytes: int = 128 << 20  # its JSON header (JSON grows several-fold into objects)
    nodes: int = 1_000_000  # nodes per graph; node ids are below this too
    constants: int = 100_000  # entries of the constant table
    invokes: int = 10_000
    string_chars: int = 10 << 20  # one str or bytes argument, constant or option
    target_chars: int = 4096  # a node's target (a module path or a function name)
    # when an untrusted graph runs (backends.guard)
    tensor_elements: int = 1 << 30  # elements of any one tensor a node creates
    python_items: int = 1 << 27  # items, characters or bytes of one Python value (ints: /16)
    deadline_s: float | None = None  # seconds a run may take, checked between nodes
    max_new_tokens: int = 1 << 16  # tokens a generate() may ask for


LOCAL = Limits()
"""The bounds `Graph.load` uses by default: a user's own files."""

SERVER = Limits(
    decompressed_bytes=256 << 20,
    header_bytes=16 << 20,
    nodes=50_000,
    constants=10_000,
    invokes=1_000,
    string_chars=100_000,
    target_chars=1_000,
    tensor_elements=1 << 26,
    python_items=1 << 20,
    deadline_s=300.0,
    max_new_tokens=1024,
)
"""The bounds for a payload a server receives from a client."""
