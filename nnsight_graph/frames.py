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


def bind(frame: FrameType, values: dict[str, Any], local_vars: Any = None) -> None:
    """Set each name in `values` as a variable of `frame`.

    `local_vars` may pass in `frame.f_locals` read earlier, while the frame was paused.
    """
    if not values:
        return
    if local_vars is None:
        local_vars = frame.f_locals
    global_vars = frame.f_globals
    if local_vars is global_vars:
        global_vars.update(values)
        return
    code = frame.f_code
    for name in list(values):
        if not (name in code.co_varnames or name in code.co_cellvars or name in code.co_freevars):
            global_vars[name] = values.pop(name)  # declared `global` in the function
    if _WRITE_THROUGH:
        for name, value in values.items():
            local_vars[name] = value
        return
    local_vars.update(values)
    _locals_to_fast(frame, 0)


if not _WRITE_THROUGH:
    _locals_to_fast = ctypes.pythonapi.PyFrame_LocalsToFast
    _locals_to_fast.argtypes = (ctypes.py_object, ctypes.c_int)
    _locals_to_fast.restype = None
