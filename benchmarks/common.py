"""What both benchmarks share: importing the library under test, version info, running this
same script in the nnsight venv for the reference column, and ratio formatting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = "/opt/nnsight-venv"


@dataclass
class RunResult:
    """Everything one process measured: each case's result (a benchmark's own CaseResult)."""

    library: str
    versions: dict[str, str]
    cases: dict[str, Any] = field(default_factory=dict)
    import_error: str | None = None


def import_library(name: str, required: str) -> tuple[ModuleType | None, str | None]:
    """Import the traced library (it must define `required`); for nnsight_graph fall back to
    the repo checkout. Returns (module, None) or (None, the error)."""
    try:
        return __import__(name), None
    except ModuleNotFoundError as exc:
        if name != "nnsight_graph" or exc.name != name:
            return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a half-written package may raise anything
        return None, f"{type(exc).__name__}: {exc}"
    sys.path.append(str(REPO_ROOT))
    try:
        lib = __import__(name)
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"
    if not hasattr(lib, required):
        where = ", ".join(getattr(lib, "__path__", [])) or "?"
        return None, f"package at {where} has no {required}"
    return lib, None


def versions(lib: ModuleType | None) -> dict[str, str]:
    """Versions of python, torch, transformers and the traced library."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import transformers

        found["transformers"] = transformers.__version__
    except ImportError:
        pass
    if lib is not None:
        found[lib.__name__] = str(getattr(lib, "__version__", "unknown"))
    return found


def run_nnsight_subprocess(
    script: str, extra: list[str], quick: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """Run `script --library nnsight` in the nnsight venv; (its JSON results, a note)."""
    venv = Path(os.environ.get("NNSIGHT_VENV", DEFAULT_VENV))
    python = venv / "bin" / "python"
    if not python.exists():
        return None, f"nnsight column skipped: no venv python at {python} (set NNSIGHT_VENV)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nnsight.json"
        cmd = [str(python), script, "--library", "nnsight", "--json", str(out), "--quiet"]
        cmd += extra + (["--quick"] if quick else [])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # keep the venv's own
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.strip().splitlines()[-3:]
            return None, f"nnsight column skipped: subprocess failed: {' | '.join(tail)}"
        data: dict[str, Any] = json.loads(out.read_text())
    if data.get("import_error"):
        return None, f"nnsight column skipped: {data['import_error']}"
    return data, None


def fmt2(value: float | None) -> str:
    """Format a ratio."""
    return "n/a" if value is None else f"{value:.3f}x"


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return num / den
