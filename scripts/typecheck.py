"""Type-check the package with mypy as it is installed, not as it lies in the repo.

setuptools' ``package-dir`` maps the top-level ``ir/``, ``passes/`` and ``backends/`` to
``nnsight_graph.ir``, ``.passes`` and ``.backends``, so mypy cannot read the source tree as a
package. This script builds that layout from symlinks in a temporary directory, runs mypy on it
with the repo's ``pyproject.toml``, prints mypy's output with paths mapped back to the repo's
files, and exits with mypy's status. Run it from anywhere: ``python scripts/typecheck.py``;
extra arguments go to mypy (``python scripts/typecheck.py --no-incremental``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "nnsight_graph"
# Top-level folders of the repo and the subpackage each one is installed as (pyproject's
# [tool.setuptools.package-dir]).
MAPPED = ("ir", "passes", "backends")
# A path at the start of a mypy output line: "nnsight_graph/ir/wire.py:12: error: ...".
PATH_AT_LINE_START = re.compile(rf"^({PACKAGE}/[^\s:]+\.pyi?)(?=:)", re.MULTILINE)


def build_layout(root: Path) -> Path:
    """Make ``root/nnsight_graph`` as installed: the repo's package entries plus the mapped
    subpackages, all symlinks. Returns the package folder."""
    package = root / PACKAGE
    package.mkdir()
    for entry in sorted((REPO / PACKAGE).iterdir()):
        if entry.name == "__pycache__" or entry.name in MAPPED:
            continue
        (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name in MAPPED:
        (package / name).symlink_to(REPO / name, target_is_directory=True)
    return package


def repo_path(installed: str) -> Path:
    """The repo file behind a path of the installed layout (``nnsight_graph/ir/wire.py`` is
    ``ir/wire.py``; ``nnsight_graph/proxy.py`` stays as it is), made absolute."""
    parts = Path(installed).parts
    if len(parts) > 2 and parts[1] in MAPPED:
        return REPO.joinpath(*parts[1:])
    return REPO.joinpath(*parts)


def shown(path: Path) -> str:
    """``path`` as the user should read it: relative to the current directory when it lies
    under it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def map_paths(output: str) -> str:
    """mypy's output with every installed-layout path replaced by the repo file's path."""
    return PATH_AT_LINE_START.sub(lambda match: shown(repo_path(match.group(1))), output)


def main(argv: list[str]) -> int:
    """Build the layout, run mypy on it, print its output with repo paths; mypy's status."""
    with tempfile.TemporaryDirectory(prefix="nnsight-graph-typecheck-") as tmp:
        build_layout(Path(tmp))
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(REPO / ".mypy_cache"),
            *argv,
            "-p",
            PACKAGE,
        ]
        # mypy finds the package in its working directory, the layout (an editable install's
        # import hook is invisible to it)
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
    sys.stdout.write(map_paths(result.stdout))
    sys.stderr.write(map_paths(result.stderr))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
