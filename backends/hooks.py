"""Forward hooks that exist for the length of one run.

`Module.register_forward_hook` builds a `RemovableHandle` for every hook (weak references and a
global id): about 3 µs per module per trace, more than the rest of a small trace's hook work.
A run puts its hooks straight into the module's own hook dicts, under a key of its own (the
`RunHooks` object), and takes them out again in `finally`. torch calls them exactly as it calls
registered hooks: same dicts, called in insertion order, pre-hooks with keyword arguments.

The dicts belong to the module, so a forward of the same module in another thread calls this
run's hooks too: each hook serves only the thread that attached it and passes the value on
untouched in any other thread (whose own run, if any, has hooks of its own).
"""

from __future__ import annotations

from _thread import get_ident
from collections.abc import Callable
from typing import Any

import torch

from ..ir import ModuleNotCalledError
from ..ir.errors import add_note
from ..ir.sites import INPUT, OUTPUT
from .plan import Site

Fire = Callable[[Site, Any], Any]  # an executor's `fire(site, value)`: returns the value to pass on


class RunHooks:
    """The forward hooks of one run; `remove()` takes every one of them out."""

    __slots__ = ("modules", "elsewhere")

    def __init__(self) -> None:
        self.modules: list[torch.nn.Module] = []
        self.elsewhere: set[Site] | None = None  # sites its hooks passed on in other threads

    def attach(
        self,
        modules: dict[str, set[str]],
        module_at: Callable[[str], torch.nn.Module],
        fire: Fire,
    ) -> None:
        """Hooks on each module of `modules` (path -> "input"/"output" kinds) that call
        `fire((path, kind), value)` and pass on the value it returns, in this thread only."""
        thread = get_ident()
        for path, kinds in modules.items():
            module = module_at(path)  # looked up each run: submodules can be replaced
            if INPUT in kinds:
                self.add_pre(module, _pre_hook((path, INPUT), fire, thread, self))
            if OUTPUT in kinds:
                self.add_post(module, _post_hook((path, OUTPUT), fire, thread, self))

    def add_pre(self, module: torch.nn.Module, hook: Callable[..., Any]) -> None:
        """`hook(module, args, kwargs)` before the module's forward; may return (args, kwargs).

        The hook is called in every thread that runs the module; `attach`'s hooks check."""
        # this run object is the key (torch types the dicts by handle id: any hashable works)
        module._forward_pre_hooks[self] = hook  # type: ignore[index]
        module._forward_pre_hooks_with_kwargs[self] = True  # type: ignore[index]
        self.modules.append(module)

    def add_post(self, module: torch.nn.Module, hook: Callable[..., Any]) -> None:
        """`hook(module, args, output)` after the module's forward; may return a new output."""
        module._forward_hooks[self] = hook  # type: ignore[index]
        self.modules.append(module)

    def seen_elsewhere(self, site: Site) -> None:
        """One of this run's modules ran in another thread (its hooks passed the value on)."""
        if self.elsewhere is None:
            self.elsewhere = set()
        self.elsewhere.add(site)

    def explain(self, error: ModuleNotCalledError) -> ModuleNotCalledError:
        """`error`, with a note when modules ran in other threads while this run waited."""
        if self.elsewhere:
            paths = sorted({f"model.{path}" if path else "the model" for path, _ in self.elsewhere})
            add_note(
                error,
                f"{', '.join(paths)} ran in another thread during this run. A trace sees only "
                "the module calls made in the thread that runs it (the thread of its `with` "
                "block): a model that calls its modules from worker threads cannot be traced "
                "there, and another thread's forward never counts for this trace.",
            )
        return error

    def remove(self) -> None:
        for module in self.modules:
            module._forward_pre_hooks.pop(self, None)  # type: ignore[call-overload]
            module._forward_pre_hooks_with_kwargs.pop(self, None)  # type: ignore[call-overload]
            module._forward_hooks.pop(self, None)  # type: ignore[call-overload]
        self.modules.clear()


def _pre_hook(site: Site, fire: Fire, thread: int, hooks: RunHooks) -> Callable[..., Any]:
    # `kwargs` has a default: a forward that started in another thread just before this run
    # ended may find the hook but no longer its with-kwargs mark, and call it without them
    def hook(module: torch.nn.Module, args: Any, kwargs: Any = None) -> Any:
        if get_ident() != thread:
            hooks.seen_elsewhere(site)
            return None  # another thread's forward: not this run's
        value = (args, kwargs)
        new = fire(site, value)
        return None if new is value else new  # None: torch keeps the arguments it has

    return hook


def _post_hook(site: Site, fire: Fire, thread: int, hooks: RunHooks) -> Callable[..., Any]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if get_ident() != thread:
            hooks.seen_elsewhere(site)
            return None  # another thread's forward: not this run's
        new = fire(site, output)
        return None if new is output else new

    return hook
