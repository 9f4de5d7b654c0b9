"""bench/gpu_check.sh cannot rot: its CPU rehearsal runs every step here (install, test selection,
benchmarks at one round each, report, tarball), and a broken step makes the script fail.

The rehearsal is the one run of the benchmarks' setup with JSON output in CI; it takes about a minute
on two cores. Skipped on a CUDA machine (the script itself runs there) and without bash.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine run bench/gpu_check.sh itself"),
              pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils' timeout")]


def rehearse(out: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "LAMBDASKIP_GPU_CHECK_REHEARSAL": "1", **env}
    return subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_rehearsal_runs_every_step(tmp_path):
    done = rehearse(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert [line.split(":")[0] for line in summary.splitlines()] == ["install", "tests", "benchmarks", "report"]
    assert "FAILED" not in summary
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bench.json", "bench.log", "device.txt", "install.log", "report.tgz", "summary.txt",
                     "tests.log"]  # the device tool brings back at most 8
    assert "Would install lambdaskip" in (tmp_path / "install.log").read_text()
    assert "tests collected" in (tmp_path / "tests.log").read_text()


def test_a_bogus_pytest_flag_fails_the_script(tmp_path):
    done = rehearse(tmp_path, LAMBDASKIP_GPU_CHECK_PYTEST_ARGS="--no-such-flag")
    assert done.returncode != 0
    summary = (tmp_path / "summary.txt").read_text()
    assert "tests: FAILED" in summary and "benchmarks: FAILED" in summary
    assert "no-such-flag" in (tmp_path / "tests.log").read_text()
