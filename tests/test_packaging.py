"""The wheel holds every module at its mapped place and nothing else at the top level.

`ir/`, `passes/` and `backends/` live at the top of the repo and are installed as
`nnsight_graph.ir`, `nnsight_graph.passes` and `nnsight_graph.backends` through setuptools'
`package-dir`. An editable install hides a missing mapping, so these tests build the real wheel
(offline: no build isolation) from a clean copy of the source tree and look inside it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The repo folder of each installed package.
PACKAGE_DIRS = {
    "nnsight_graph": REPO / "nnsight_graph",
    "nnsight_graph/ir": REPO / "ir",
    "nnsight_graph/passes": REPO / "passes",
    "nnsight_graph/backends": REPO / "backends",
}

# Build output at the top of the repo (see .gitignore); everything else is copied, so a
# misconfigured `packages` that picks up tests/ or benchmarks/ shows up as a stray below.
NOT_SOURCE = {"build", "dist", "out"}
METADATA_DIR = re.compile(r"^nnsight_graph-[^/]+\.(dist-info|data)/")


def _ignore(folder: str, names: list[str]) -> set[str]:
    """Leave out caches, build output, virtual envs and anything hidden."""
    top = Path(folder) == REPO
    return {
        name
        for name in names
        if name.startswith(".")
        or name == "__pycache__"
        or name.endswith(".egg-info")
        or (top and (name in NOT_SOURCE or (Path(folder) / name / "pyvenv.cfg").exists()))
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the repo, so no stale `build/` leaks into it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_ignore)
    out = root / "dist"
    if importlib.util.find_spec("build") is not None:
        command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir"]
    else:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        command += ["--no-index", "-w"]
    result = subprocess.run(
        [*command, str(out), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("nnsight_graph-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


def _expected_modules() -> set[str]:
    """Every .py file of the repo's packages, at the path it must have in the wheel."""
    expected = set()
    for installed, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{installed}/{path.relative_to(folder).as_posix()}")
    return expected


def test_wheel_holds_every_module_at_its_mapped_place(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for package in PACKAGE_DIRS:
        assert f"{package}/__init__.py" in names
    missing = sorted(_expected_modules() - names)
    assert not missing, f"{wheel.name} lacks {missing}; list the package in pyproject.toml"


def test_wheel_installs_nothing_else_at_the_top_level(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    strays = [
        name
        for name in names
        if not name.startswith("nnsight_graph/") and not METADATA_DIR.match(name)
    ]
    assert not strays, f"{wheel.name} installs outside nnsight_graph/: {strays}"


def test_wheel_imports_its_subpackages(wheel: Path, tmp_path: Path) -> None:
    """Unpacked on its own (ahead of any editable install), the wheel imports as one package."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import nnsight_graph, nnsight_graph.ir, nnsight_graph.passes, nnsight_graph.backends\n"
        "for module in (nnsight_graph, nnsight_graph.ir, nnsight_graph.passes,"
        " nnsight_graph.backends):\n"
        f"    assert module.__file__.startswith({str(tmp_path)!r}), module.__file__\n"
        "assert nnsight_graph.NNsight\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
