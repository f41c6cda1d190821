"""frames.bind and the capture of a block's body on every supported Python.

frames.bind: module level, functions, closures, methods. Capture: where a block is skipped
among the items of a `with` statement, and through an ExitStack. frames.py, capture.py and the
modules capture.py imports have no dependency on torch, so they are loaded from a path (or a
throw-away package) in other interpreters that have no torch. Interpreters that are not
installed are skipped.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nnsight_graph"
FRAMES = PACKAGE / "frames.py"

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


IR = Path(__file__).resolve().parents[2] / "ir"

CAPTURE_SCRIPT = r"""
import contextlib, sys
sys.path.insert(0, sys.argv[1])
from pkg import capture, frames, transform

HELPERS = {
    transform.STEPS_HELPER: lambda value: False,
    transform.SAVE_HELPER: lambda value: value,
}


class Block(capture.CapturedBlock):
    # a captured block whose run executes the body once and binds what it assigned
    def __init__(self, log):
        self.log = log

    def __enter__(self):
        self.log.append("enter block")
        self._capture()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.log.append("exit block")
        return self._finish(exc_type, exc)

    def _run(self, frame):
        captured = self._captured
        local_vars = frame.f_locals
        namespace = dict(HELPERS)
        namespace.update({n: local_vars[n] for n in captured.names if n in local_vars})
        if captured.target:
            namespace[captured.target] = self
        body = capture.compile_body(captured, tuple(namespace), frame.f_globals)
        variables = body(namespace)
        values = {n: variables[n] for n in captured.stored if n in variables}
        if captured.target:
            values[captured.target] = self
        frames.bind(frame, values, local_vars)


class Item:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __enter__(self):
        self.log.append("enter " + self.name)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.log.append("exit %s %s" % (self.name, exc_type.__name__ if exc_type else None))
        return False


# each form in a function of its own: a code object that has had opcode events once may
# keep delivering them, which would hide a form that gets none the first time


def before():
    log = []
    with Item("a", log) as a, Block(log) as b:
        log.append("body")
        seen = a.name
    assert log == ["enter a", "enter block", "exit block", "body", "exit a None"], log
    assert seen == "a" and isinstance(b, Block)


def after():
    log = []
    with Block(log) as b, Item("c", log) as c:
        log.append("body")
    assert log == ["enter block", "exit block", "enter c", "body", "exit c None"], log
    assert c.name == "c" and isinstance(b, Block)


def around():
    log = []
    with (
        Item("a", log),
        Block(log),
        Item("c", log) as c,
    ):
        log.append("body")
        value = 1
    assert log == [
        "enter a", "enter block", "exit block", "enter c", "body", "exit c None", "exit a None"
    ], log
    assert value == 1 and c.name == "c"


def stacked():
    log = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(Item("a", log))
        b = stack.enter_context(Block(log))
        log.append("body")
        later = 2
    assert log == ["enter a", "enter block", "exit block", "body", "exit a None"], log
    assert later == 2 and isinstance(b, Block)


for form in (after, around, before, stacked):
    form()
log = []
with Block(log) as top, Item("c", log):
    log.append("body")
    top_value = 3
assert log == ["enter block", "exit block", "enter c", "body", "exit c None"], log
assert top_value == 3 and isinstance(top, Block)
print("ok", sys.version_info[:2])
"""


@pytest.mark.parametrize("python", _pythons())
def test_blocks_are_skipped_at_their_own_item_on_every_python(python, tmp_path):
    package = tmp_path / "pkg"
    (package / "ir").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ir" / "__init__.py").write_text("")
    shutil.copy(IR / "errors.py", package / "ir" / "errors.py")
    for name in ("capture.py", "entries.py", "transform.py", "frames.py"):
        shutil.copy(PACKAGE / name, package / name)
    script = tmp_path / "forms.py"  # a file: a captured body is read from source
    script.write_text(CAPTURE_SCRIPT)
    result = subprocess.run(
        [python, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
