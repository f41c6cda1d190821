"""frames.bind on every supported Python: module level, functions, closures, methods.

frames.py has no dependencies, so it is loaded by path in other interpreters that have no
torch. Interpreters that are not installed are skipped.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FRAMES = Path(__file__).resolve().parents[2] / "nnsight_graph" / "frames.py"

SCRIPT = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("frames", sys.argv[1])
frames = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frames)

def caller_binds(values):
    frames.bind(sys._getframe(1), values)

x = 0
caller_binds({"x": 1, "fresh": 2})
assert (x, fresh) == (1, 2), (x, fresh)

def function():
    a = 0
    caller_binds({"a": 5, "b": 6})
    b = locals().get("b", None)
    return a, b
assert function()[0] == 5, function()

def closure():
    c = 0
    inner = lambda: c
    caller_binds({"c": 7})
    return c, inner()
assert closure() == (7, 7), closure()

class K:
    def method(self):
        value = None
        caller_binds({"value": self})
        return value
k = K()
assert k.method() is k
print("ok", sys.version_info[:2])
"""


def _pythons() -> list[str]:
    found = []
    for version in ("3.10", "3.11", "3.12", "3.13"):
        candidates = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python"))
        exe = shutil.which(f"python{version}")
        if exe and "shims" not in exe:
            candidates.append(Path(exe))
        for candidate in candidates:
            if candidate and Path(candidate).exists():
                found.append(str(candidate))
                break
    return found or [sys.executable]


@pytest.mark.parametrize("python", _pythons())
def test_bind_writes_variables_in_every_kind_of_frame(python):
    result = subprocess.run(
        [python, "-c", SCRIPT, str(FRAMES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
