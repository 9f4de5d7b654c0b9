"""Deep stacks: a training step at depth 64 / 256 / 1024 with and without activation checkpointing, and
a λ sweep evaluated in one pass (the λ values as batch slices) against one pass per λ.

Training step (``test_deep_training_step``): forward, backward to the input and every parameter, of a
λ-skip stack built with ``checkpoint=None`` (every activation kept), ``"block"`` or a segment of
``SEGMENT`` blocks. Timed in-process by pytest-benchmark; the peak memory of one step goes to
``extra_info["peak_bytes"]`` with ``extra_info["peak_memory"]`` saying how it was measured:

- CUDA: ``torch.cuda.max_memory_allocated()`` over the step, minus the memory allocated before it;
- CPU: the growth of the peak resident set (``ru_maxrss``) of a fresh Python process over one step, from
  its resident set after a one-block warm-up step and building the stack (Linux ``/proc/self/statm``).
  It counts what torch's CPU allocator actually held, plus the allocator's slack; the interpreter and
  torch themselves are in the baseline. (tracemalloc does not see torch's allocations; the profiler's
  CPU memory events were incomplete on torch 2.13, so neither is used.)

λ sweep (``test_lambda_sweep``): a forward (no grad) of one stack, same weights, for ``N_LAMS`` values of
λ: ``one_pass`` runs a stack whose blocks hold all the values on a batch of ``N_LAMS`` slices;
``per_lambda`` runs one stack per λ on one slice each.

Smoke sizes by default (depths 2 / 4; with ``--benchmark-disable`` the CPU memory child runs for one case
only, it costs a process start per case); ``--bench-full`` (LAMBDASKIP_BENCH_FULL=1) runs depths 64, 256 and
1024 at the sizes below. On CPU the stack's "auto" path is the reference (plus SDPA for attention).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
if CUDA:
    SHAPE = dict(batch=4, seqlen=512, d_model=256)
    MIXERS = {"attention": {"n_heads": 4}, "mamba2": {"headdim": 64, "d_state": 64, "chunk_size": 128}}
elif FULL:
    SHAPE = dict(batch=2, seqlen=128, d_model=32)
    MIXERS = {"attention": {"n_heads": 2}, "mamba2": {"headdim": 16, "d_state": 16, "chunk_size": 32}}
else:
    SHAPE = dict(batch=2, seqlen=16, d_model=16)
    MIXERS = {"attention": {"n_heads": 2}, "mamba2": {"headdim": 8, "d_state": 16, "chunk_size": 16}}
DEPTHS = (64, 256, 1024) if FULL else (2, 4)
SEGMENT = 32 if FULL else 2
CHECKPOINTS = (None, "block", SEGMENT)
N_LAMS = 8
SWEEP_DEPTH = 64 if FULL else 4


def _stack_and_input(arch: str, depth: int, checkpoint, lam=1.0, batch=None):
    from lambdaskip import build_stack
    stack = build_stack(arch, depth, SHAPE["d_model"], lam=lam, seed=0, checkpoint=checkpoint, **MIXERS[arch])
    stack = stack.to(device=DEVICE, dtype=DTYPE)
    shape = (batch or SHAPE["batch"], SHAPE["seqlen"], SHAPE["d_model"])
    y = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=DEVICE, dtype=DTYPE)
    return stack, y


def _training_step(stack, y):
    y = y.detach().requires_grad_(True)
    return torch.autograd.grad(stack(y).float().square().mean(), [y, *stack.parameters()])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_step_peak(arch: str, depth: int, checkpoint) -> int:
    """Peak resident-set growth of one step in a fresh process (see the module docstring)."""
    spec = json.dumps({"arch": arch, "depth": depth, "checkpoint": checkpoint})
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, __file__, spec], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def _cuda_step_peak(stack, y) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _training_step(stack, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda c: f"checkpoint={c}")
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", list(MIXERS))
def test_deep_training_step(run_timed, benchmark, arch, depth, checkpoint):
    stack, y = _stack_and_input(arch, depth, checkpoint)
    if CUDA:
        peak, how = _cuda_step_peak(stack, y), "torch.cuda.max_memory_allocated growth over one step"
    elif not benchmark.disabled or (arch, depth, checkpoint) == (next(iter(MIXERS)), DEPTHS[0], "block"):
        peak, how = _cpu_step_peak(arch, depth, checkpoint), "peak RSS growth of a fresh process over one step"
    else:
        peak, how = None, "not measured in a smoke run"
    grads = run_timed(lambda: _training_step(stack, y), arch=arch, depth=depth, checkpoint=str(checkpoint),
                      dtype=str(DTYPE), peak_bytes=peak, peak_memory=how, **SHAPE)
    assert all(torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize("mode", ["one_pass", "per_lambda"])
@pytest.mark.parametrize("arch", list(MIXERS))
def test_lambda_sweep(run_timed, benchmark, arch, mode):
    lams = torch.linspace(-2.0, 2.0, N_LAMS).tolist()
    benchmark.group = f"lambda sweep {arch}"
    if mode == "one_pass":
        stack, y = _stack_and_input(arch, SWEEP_DEPTH, None, lam=[lams] * SWEEP_DEPTH,
                                    batch=N_LAMS * SHAPE["batch"])
        runs = [(stack, y)]
    else:
        runs = [_stack_and_input(arch, SWEEP_DEPTH, None, lam=lam) for lam in lams]

    def sweep():
        with torch.no_grad():
            return [stack(y) for stack, y in runs]

    outs = run_timed(sweep, arch=arch, mode=mode, n_lams=N_LAMS, depth=SWEEP_DEPTH, dtype=str(DTYPE), **SHAPE)
    assert all(torch.isfinite(out.float()).all() for out in outs)


def _child(spec: dict) -> None:
    """Run in a fresh process: a warm-up step of a one-block stack (the first checkpointed step imports
    torch's dynamo, ~900 modules), build the stack, then one step; print the step's peak RSS growth."""
    checkpoint = spec["checkpoint"]
    _training_step(*_stack_and_input(spec["arch"], 1, checkpoint))
    stack, y = _stack_and_input(spec["arch"], spec["depth"], checkpoint)
    baseline = _rss_bytes()
    _training_step(stack, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"peak_bytes": max(peak - baseline, 0)}))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
