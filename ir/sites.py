"""Hook sites: where a hooked node waits for the model, read from its target in one place.

A READ, WRITE or SKIP node's target names a site: a module path and what is read or written
there ("h.0.output", "layer1.inputs", "h.1.skip", "h.0.source.attn_0.output"). Every pass
and the executor learn which hook serves a node from `site_of`, so they cannot disagree. The
model's result and gradients are ops of their own (RESULT, READ_GRAD, WRITE_GRAD), served by
the RESULT and GRAD kinds of hook.
"""

from __future__ import annotations

from typing import Final, NamedTuple

INPUT: Final = "input"  # served by the module's forward pre-hook
OUTPUT: Final = "output"  # served by its forward hook
RESULT: Final = "result"  # the value the traced call returned
GRAD: Final = "grad"  # a gradient during a backward pass

VALUE_KINDS: Final = frozenset({"output", "input", "inputs", "skip"})
"""What a module target may end in."""

_PRE_HOOK_KINDS: Final = frozenset({"input", "inputs", "skip"})  # a skip is decided before


class SiteOf(NamedTuple):
    """A node's site: the module path, what it reads or writes, and the hook that serves it."""

    path: str  # "" for the root
    kind: str  # "output", "input", "inputs" or "skip" (anything else: not a site)
    hook: str  # INPUT or OUTPUT

    @property
    def module(self) -> str:
        """The module whose hooks serve the site: for a `.source` call site, its owner."""
        return self.path.split(".source.", 1)[0]

    @property
    def in_source(self) -> bool:
        """Whether the site is a call site inside a module's forward (`.source`)."""
        return ".source." in self.path


_CACHE: dict[str, SiteOf] = {}


def site_of(target: str) -> SiteOf:
    """The site a hooked node's target names (cached: targets repeat across traces)."""
    site = _CACHE.get(target)
    if site is None:
        path, _, kind = target.rpartition(".")
        site = SiteOf(path, kind, INPUT if kind in _PRE_HOOK_KINDS else OUTPUT)
        if len(_CACHE) < 100_000:  # a bound: targets of loaded graphs are not ours to keep
            _CACHE[target] = site
    return site
