"""Hook sites: where a hooked node waits for the model, a typed value every node carries.

A READ, WRITE or SKIP node's target names a site: a module path and what is read or written
there ("h.0.output", "layer1.inputs", "h.1.skip", "h.0.source.attn_0.output"). The site is
made once, from the target, when the node is made (`Node`, the recorder, the wire decoder:
all through `site_of`, the one place a target is read) and kept on the node as `node.site`.
Every pass, the plan and the executors read that value, so they cannot disagree. The step a
site applies at is the node's `step`. The model's result and gradients are ops of their own
(RESULT, READ_GRAD, WRITE_GRAD), served by the RESULT and GRAD kinds of hook.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .ops import Op

INPUT: Final = "input"  # served by the module's forward pre-hook
OUTPUT: Final = "output"  # served by its forward hook
RESULT: Final = "result"  # the value the traced call returned
GRAD: Final = "grad"  # a gradient during a backward pass

VALUE_KINDS: Final = frozenset({"output", "input", "inputs", "skip"})
"""What a module target may end in."""

SITED_OPS: Final = frozenset({Op.READ, Op.WRITE, Op.SKIP})
"""Ops whose target is a hook site (`ir.op_table.SITED`, the rows whose target is "site")."""

_PRE_HOOK_KINDS: Final = frozenset({"input", "inputs", "skip"})  # a skip is decided before


class SiteOf(NamedTuple):
    """A node's site: the module path, what it reads or writes, the hook that serves it, the
    module whose hooks those are and whether it is a `.source` call site."""

    path: str  # "" for the root
    kind: str  # "output", "input", "inputs" or "skip" (anything else: not a site; verify says)
    hook: str  # INPUT or OUTPUT
    module: str  # the module whose hooks serve the site: for a `.source` call site, its owner
    in_source: bool  # whether the site is a call site inside a module's forward (`.source`)
    empty_part: bool  # whether the module path has an empty part ("h..0"): verify refuses it


_CACHE: dict[str, SiteOf] = {}


def site_of(target: str) -> SiteOf:
    """The site a hooked node's target names: the one reader of target strings (cached:
    targets repeat across traces). Called when a node is made; everything else reads
    `node.site`."""
    site = _CACHE.get(target)
    if site is None:
        path, _, kind = target.rpartition(".")
        in_source = ".source." in path
        site = SiteOf(
            path,
            kind,
            INPUT if kind in _PRE_HOOK_KINDS else OUTPUT,
            path.split(".source.", 1)[0] if in_source else path,
            in_source,
            "." in target and not all(path.split(".")),
        )
        if len(_CACHE) < 100_000:  # a bound: targets of loaded graphs are not ours to keep
            _CACHE[target] = site
    return site
