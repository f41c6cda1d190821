"""The hostile-payload suite: every case of hostile_cases.py, loaded and run with the server's
limits in a process of its own (payload_runner.py), ends in one clear library error before
any effect, or in a bounded, correct run."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("hostile_cases", HERE / "hostile_cases.py")
hostile_cases = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("hostile_cases", hostile_cases)  # its dataclass looks itself up there
_spec.loader.exec_module(hostile_cases)
NAMES = [case.name for case in hostile_cases.CASES]
EXPECTED = {case.name: case.expect for case in hostile_cases.CASES}
MEMORY_MB = 1500  # peak resident memory of a case's process (the runner itself is ~300 MB)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    out = workdir / "report.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "payload_runner.py"), str(workdir), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_there_are_at_least_sixty_cases():
    assert len(NAMES) >= 60
    assert len(set(NAMES)) == len(NAMES)


def test_no_payload_created_the_canary(report):
    assert report["_canary_created"] is False


@pytest.mark.parametrize("name", NAMES)
def test_case(report, name):
    result = report[name]
    assert not result["timed_out"], f"{name}: ran past the timeout"
    assert result["peak_rss_mb"] < MEMORY_MB, f"{name}: {result['peak_rss_mb']} MB"
    assert result["imported"] == [], f"{name}: imported {result['imported']}"
    expected = EXPECTED[name]
    outcome = result["outcome"]
    if expected == "ok":
        assert outcome == "ok", outcome
    else:
        kind, _, pattern = expected.partition(": ")
        assert outcome.startswith(kind + ": "), outcome
        assert re.search(pattern, outcome), outcome
        assert "Traceback" not in outcome and "/nnsight_graph/" not in outcome, outcome
