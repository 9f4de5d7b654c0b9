"""Benchmark-suite setup (``pytest bench/``).

- ``--bench-full`` adds the large shapes (also exported as LAMBDASKIP_BENCH_FULL=1 for the bench files).
- Without CUDA, Triton kernels run under the interpreter (TRITON_INTERPRET=1, set before triton loads),
  so CPU runs only check that each benchmark's setup is correct; timings of interpreted kernels are not
  speeds and are labelled ``interpreted`` in extra_info.
- Every run records the device, torch and triton versions, the CPU count and the load average (at the
  start and the end of the session: other processes on a shared machine slow the timings) in machine_info.
- Recording (``--benchmark-json``, ``--benchmark-save``, ``--benchmark-autosave``) from a git tree with
  uncommitted changes to tracked files is refused: the numbers could not be traced to a commit.
  ``--bench-allow-dirty`` records anyway, and bench/report.py then marks the table DIRTY TREE.
- On CUDA, ``device_limits`` measures the copy bandwidth and the bf16 matmul rate once per session, so
  benchmarks can report the fraction of the hardware limit they reach.
"""
import os
import resource
import subprocess
import time

import pytest
import torch

from lambdaskip.testing import skip_gpu_tests_without_cuda

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where every benchmark runs

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true", default=False, help="also run the large shapes")
    parser.addoption("--bench-allow-dirty", action="store_true", default=False,
                     help="record benchmarks from a tree with uncommitted changes (marked dirty)")


def _records(config) -> bool:
    return any(config.getoption(name, default=None) for name in ("benchmark_json", "benchmark_save",
                                                                  "benchmark_autosave"))


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@pytest.fixture
def cpu_seconds():
    """A clock: CPU seconds of this process plus those of its finished child processes (e.g. inductor's
    g++ runs), for a compile's cost on a loaded machine, which wall time would inflate."""
    return _cpu_seconds


def _dirty_files(root) -> list[str]:
    """Tracked files with uncommitted changes under git root ``root`` (empty outside a git tree)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in out.splitlines()]


def pytest_configure(config):
    if config.getoption("--bench-full", default=False):
        os.environ["LAMBDASKIP_BENCH_FULL"] = "1"
    _load_average["start"] = os.getloadavg()
    if _records(config) and not config.getoption("--bench-allow-dirty", default=False):
        dirty = _dirty_files(config.rootpath)
        if dirty:
            raise pytest.UsageError(f"refusing to record benchmarks from a dirty tree ({', '.join(dirty[:5])}"
                                    f"{', ...' if len(dirty) > 5 else ''}): commit first, or pass "
                                    "--bench-allow-dirty to record numbers marked dirty")


_measured_limits: dict = {}
_load_average: dict = {}


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["triton"] = triton_version
    machine_info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["load_average_1_5_15"] = {"start": _load_average.get("start"), "end": os.getloadavg()}
    if _measured_limits:
        machine_info["device_limits"] = dict(_measured_limits)


def pytest_collection_modifyitems(config, items):
    skip_gpu_tests_without_cuda(items)


@pytest.fixture(scope="session")
def bench_full(request) -> bool:
    return request.config.getoption("--bench-full")


def _cuda_time_ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


@pytest.fixture(scope="session")
def device_limits():
    """Measured limits on CUDA: ``copy_bytes_per_s`` (device-to-device, read + write) and
    ``bf16_flops_per_s`` (8192³ matmul); None on CPU."""
    if DEVICE.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    copy_ms = _cuda_time_ms(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    mm_ms = _cuda_time_ms(lambda: a @ a, repeats=10)
    del src, dst, a
    _measured_limits.update(copy_bytes_per_s=2 * (1 << 30) / (copy_ms * 1e-3),
                            bf16_flops_per_s=2 * 8192**3 / (mm_ms * 1e-3))
    return dict(_measured_limits)


@pytest.fixture
def run_timed(benchmark, device_limits):
    """``run_timed(fn, bytes=..., flops=...)``: benchmark ``fn`` (synchronising CUDA) and record in extra_info
    the stated minimal bytes / FLOPs, the achieved rates, the fraction of the device limits and peak memory."""

    def run(fn, *, bytes: int | None = None, flops: int | None = None, **info):
        def synced():
            out = fn()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            return out

        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = benchmark(synced)
        extra = benchmark.extra_info
        extra.update(info, bytes=bytes, flops=flops, device=str(DEVICE))
        if DEVICE.type == "cuda":
            extra["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            seconds = stats.stats.median
            if bytes:
                extra["bytes_per_s"] = bytes / seconds
                if device_limits:
                    extra["fraction_of_copy_bandwidth"] = bytes / seconds / device_limits["copy_bytes_per_s"]
            if flops:
                extra["flops_per_s"] = flops / seconds
                if device_limits:
                    extra["fraction_of_bf16_matmul"] = flops / seconds / device_limits["bf16_flops_per_s"]
        return result

    return run
