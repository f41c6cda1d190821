"""Write values back into a caller's frame: the one place that touches frame locals.

Module-level frames (and IPython cells) hold their variables in a dict; function frames hold
them in fast locals, which are written through `PyFrame_LocalsToFast` before Python 3.13 and
through the write-through `frame.f_locals` proxy of PEP 667 from 3.13 on.
"""

from __future__ import annotations

import ctypes
import sys
from types import FrameType
from typing import Any

_WRITE_THROUGH = sys.version_info >= (3, 13)


def bind(frame: FrameType, values: dict[str, Any]) -> None:
    """Set each name in `values` as a variable of `frame`."""
    if not values:
        return
    local_vars = frame.f_locals
    if local_vars is frame.f_globals or _WRITE_THROUGH:
        for name, value in values.items():
            local_vars[name] = value
        return
    local_vars.update(values)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
