"""Every Triton kernel compiles for sm_90 with every GPU autotuning config, without spilling registers and
within a block's shared memory, on a machine without a GPU; and the committed static report is current.

The interpreter (how the other tests run the kernels on CPU) accepts programs that the GPU compiler
rejects, and never shows registers or shared memory. ``bench/sm90_report.py`` records the launches of a
forward and backward pass of every op under the interpreter, then compiles each kernel ahead of time for
sm_90 with every config and reads ptxas's verbose output. Spilled registers go to local memory, which
would make a kernel crawl on the GPU. Needs the interpreter, so it skips on a CUDA machine (the kernels
run for real there).
"""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="records launches under the Triton interpreter; on CUDA the kernels run")

REPORT_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "sm90_report.py"


def load_report_module():
    spec = importlib.util.spec_from_file_location("sm90_report", REPORT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_kernel_and_config_compiles_for_sm90_without_spills(tmp_path):
    report = load_report_module()
    rows = report.collect(tmp_path)
    assert {row["name"] for row in rows} == {name for _, name in report.package_kernels()}
    assert not report.problems(rows), "\n".join(report.problems(rows))
    committed = report.REPORT.read_text()
    missing = [report.row_key(row) for row in rows if report.row_key(row) not in committed]
    assert not missing, ("bench/results/sm90-static/README.md is stale (run python bench/sm90_report.py):\n"
                         + "\n".join(missing[:10]))
