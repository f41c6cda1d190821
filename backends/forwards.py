"""Module forwards replaced for one run, in that run's thread only (skips, `.source`).

A module's `forward` attribute is shared by every thread, so a run never puts its own
function there. The first run that needs a module installs one dispatcher as its `forward`;
the dispatcher calls what the calling thread's run asked for, or else the forward it
replaced. The last run that needs the module takes the dispatcher out again. Overlapping runs
in other threads thus neither see each other's replacements nor leave one behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

Forward = Callable[..., Any]
MakeForward = Callable[[Forward], Forward]  # fallback -> the run's forward


class _Installed:
    """The dispatcher installed as one module's `forward`, and the runs that use it."""

    __slots__ = ("module", "own", "original", "dispatcher", "users")

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.own = module.__dict__.get("forward")  # the instance's own, or None: the class's
        self.original: Forward = module.forward  # what calls ran before
        self.dispatcher = _dispatcher(id(module), self.original)
        self.users = 0  # the runs using it, in any thread


class _ThreadForwards(threading.local):
    """This thread's replacement forward per module (by id), set by the runs in this thread."""

    def __init__(self) -> None:
        self.forwards: dict[int, Forward] = {}


_LOCK = threading.Lock()  # guards _INSTALLED and the modules' `forward` attributes
_INSTALLED: dict[int, _Installed] = {}  # id(module) -> its dispatcher, while any run needs it
_THREAD = _ThreadForwards()


def _dispatcher(key: int, original: Forward) -> Forward:
    forwards = _THREAD  # its `.forwards`, read per call, is the calling thread's own dict

    def forward(*args: Any, **kwargs: Any) -> Any:
        replacement = forwards.forwards.get(key)
        if replacement is None:  # no run of this thread replaced it: the module as it was
            return original(*args, **kwargs)
        return replacement(*args, **kwargs)

    return forward


class ReplacedForwards:
    """The forwards one run replaced; `restore()` puts every one of them back."""

    __slots__ = ("replaced",)

    def __init__(self) -> None:
        self.replaced: list[tuple[int, Forward | None]] = []  # (module id, this thread's before)

    def replace(self, module: torch.nn.Module, make: MakeForward) -> None:
        """In this thread, until `restore()`, calls of `module` run `make(fallback)`, where
        `fallback` is the forward they ran before (another replacement of this thread's, or
        the module's own)."""
        key = id(module)
        with _LOCK:
            installed = _INSTALLED.get(key)
            if installed is None:
                installed = _INSTALLED[key] = _Installed(module)
                module.forward = installed.dispatcher
            installed.users += 1
        forwards = _THREAD.forwards
        previous = forwards.get(key)
        self.replaced.append((key, previous))
        forwards[key] = make(previous if previous is not None else installed.original)

    def restore(self) -> None:
        """Undo every `replace` of this run, latest first; the last run that used a module's
        dispatcher takes it out. Call it in the thread that replaced them."""
        forwards = _THREAD.forwards
        for key, previous in reversed(self.replaced):
            if previous is None:
                forwards.pop(key, None)
            else:
                forwards[key] = previous
            with _LOCK:
                installed = _INSTALLED[key]
                installed.users -= 1
                if installed.users == 0:
                    del _INSTALLED[key]
                    _uninstall(installed)
        self.replaced.clear()


def _uninstall(installed: _Installed) -> None:
    """Put back the `forward` the module had before the dispatcher."""
    module = installed.module
    if module.__dict__.get("forward") is not installed.dispatcher:
        return  # someone else set a forward since: theirs stays
    if installed.own is None:
        del module.forward
    else:
        module.forward = installed.own


__all__ = ["ReplacedForwards"]
