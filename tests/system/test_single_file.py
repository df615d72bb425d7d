"""The single-file build (scripts/build-single-file) starts, registers and runs a task.

Slow: building takes about half a minute, so it runs only with ``-m slow``. It reuses the
benchmark's steps (bench/bench_single_file.py), which print the size and start-up figures.
"""

from __future__ import annotations

import subprocess

import pytest

from bench.bench_single_file import DEFAULT_ARTIFACT, ROOT, measure

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_the_single_file_build_serves_and_runs_a_task() -> None:
    if not DEFAULT_ARTIFACT.is_file():
        subprocess.run(["sh", str(ROOT / "scripts" / "build-single-file")], check=True)
    result = measure(DEFAULT_ARTIFACT, runs=2)
    assert result["size_mb"] > 1
    assert result["task_latency_ms"] > 0
