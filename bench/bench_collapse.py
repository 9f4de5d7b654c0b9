"""The main job end to end: ``lambdaskip collapse`` (the default study and each preset) against the same
work through the reference under ``torch.compile``.

- ``auto``: the command as users run it (``lambdaskip.cli.main``, in-process, ``--no-progress``), every
  output written (CSV, JSON, PNGs) to a temporary folder;
- ``compiled``: the study's computation for the configuration that run recorded in its results.json:
  for every variant, λ and seed a stack built as the study builds it (the mixer settings its docstring
  states), and per block the theorem constants (``theory.mixer_constants``, eager), the block under
  ``torch.compile`` with every op forced to its reference, and μ / normalised μ of the output. Inputs are
  seeded Gaussian tokens of the study's shape (the cost does not depend on the values), no files are
  written. A warm-up round (the compile plus one run) precedes the timing, its time recorded as
  ``compile_seconds`` (wall) and ``compile_cpu_seconds`` (CPU time of this process and of the compiler
  processes it waited for, g++ included; set TORCHINDUCTOR_COMPILE_THREADS=1 so inductor compiles here).
  The command runs its study once, so ``computed_one_study_cpu_seconds`` = that warm-up round is what the
  compiled path would cost a user, compile included; it runs only with LAMBDASKIP_BENCH_FULL=1
  (inductor's compile outlasts a smoke run).

Each compiled block's output is checked against the same block run eagerly through the references in
float64 before timing. ``extra_info`` states the work: ``block_passes`` (stacks × depth) and
``flops`` of one stack's blocks counted by ``torch.utils.flop_counter`` on the reference path, times the
number of stacks (matmuls, convolutions, attention: a lower bound); ``bytes``: the activations each block
reads and writes (2·sequences·seqlen·d_model·4 per block pass).

Sizes: with ``LAMBDASKIP_BENCH_FULL=1`` the study's own defaults; otherwise a tiny study (depth 2, one λ,
2 sequences of 16 tokens, d_model 16) so the smoke run is cheap. The group names the exact study.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lambdaskip import cli, theory
from lambdaskip.metrics import mu, normalized_mu
from lambdaskip.modules import build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close

FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
PRESETS = {"default": [], "lambda-sweep": ["--preset", "lambda-sweep"], "gating": ["--preset", "gating"]}
TINY = ["--depth", "2", "--lams", "1", "--excerpts", "2", "--seqlen", "16", "--d-model", "16"]
IMPLS = ("auto", "compiled")
_configs: dict[str, dict] = {}


def _argv(preset: str, out) -> list[str]:
    return ["collapse", *PRESETS[preset], *([] if FULL else TINY), "--out", str(out), "--no-progress"]


def _run_cli(preset: str, out) -> dict:
    """Run the command; return the configuration its results.json records."""
    assert cli.main(_argv(preset, out)) == 0
    return json.loads((out / "results.json").read_text())["config"]


def _mixer_kwargs(arch: str, gating: bool, norm, d_model: int) -> dict:
    """The mixers as the study builds them (its module docstring)."""
    if arch == "attention":
        return {"nheads": 1, "causal": False}
    if arch == "mamba2":
        return {"d_state": 16, "headdim": math.gcd(32, 2 * d_model), "gating": gating, "inner_norm": norm is not None}
    return {"d_state": 64}


def _stacks(config: dict) -> list[tuple[str, torch.nn.Module]]:
    """(variant key, stack) for every variant × λ × seed of the study, in its order."""
    out = []
    for arch in config["archs"]:
        for gating in config["gating"] if arch == "mamba2" else [False]:
            for norm in config["norms"]:
                for lam in config["lams"]:
                    for seed in config["seeds"]:
                        stack = build_stack(arch, config["depth"], config["d_model"], lam=lam, norm=norm, seed=seed,
                                            **_mixer_kwargs(arch, gating, norm, config["d_model"]))
                        out.append((f"{arch}-{gating}-{norm}", stack))
    return out


def _study_flops(stacks, y) -> int:
    """FLOPs of every stack's forward, counted once per variant on the reference path."""
    per_variant = {}
    for key, stack in stacks:
        if key not in per_variant:
            counter = FlopCounterMode(display=False)
            with counter, prefer_backend("reference"), torch.no_grad():
                stack(y)
            per_variant[key] = counter.get_total_flops()
    return sum(per_variant[key] for key, _ in stacks)


def _block_forward(block, x):
    return block(x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_collapse(run_timed, benchmark, cpu_seconds, tmp_path, preset, impl):
    if impl == "compiled" and not FULL:
        pytest.skip("compiled: run with LAMBDASKIP_BENCH_FULL=1 (inductor's compile outlasts a smoke run)")
    config = _configs.get(preset) or _configs.setdefault(preset, _run_cli(preset, tmp_path / "config"))
    study = " ".join(_argv(preset, "OUT")[:-3][1:]) or "(defaults)"
    benchmark.group = (f"lambdaskip collapse {study}: depth={config['depth']} d_model={config['d_model']} "
                       f"seqlen={config['seqlen']} excerpts={config['excerpts']} lams={len(config['lams'])} "
                       f"threads={config['threads']}")
    y = torch.randn(config["excerpts"], config["seqlen"], config["d_model"], generator=torch.Generator().manual_seed(0))
    stacks = _stacks(config)
    work = dict(block_passes=len(stacks) * config["depth"], flops=_study_flops(stacks, y),
                bytes=2 * y.numel() * 4 * len(stacks) * config["depth"])
    threads = torch.get_num_threads()
    torch.set_num_threads(config["threads"])
    try:
        if impl == "auto":
            runs = iter(range(1_000_000))
            run_timed(lambda: _run_cli(preset, tmp_path / f"run{next(runs)}"), impl=impl, **work)
            return
        torch._dynamo.reset()
        compiled = torch.compile(_block_forward)

        def study():
            with torch.no_grad(), prefer_backend("reference"):
                for _, stack in stacks:
                    x, values = y, [normalized_mu(y), mu(y)]
                    for block in stack.blocks:
                        theory.mixer_constants(block.mixer, x)
                        x = compiled(block, x)
                        values += [normalized_mu(x), mu(x)]
            return x

        began, began_cpu = time.perf_counter(), cpu_seconds()
        study()
        compile_seconds, compile_cpu = time.perf_counter() - began, cpu_seconds() - began_cpu
        _check_blocks(compiled, stacks, y)
        run_timed(study, impl=impl, compile_seconds=compile_seconds, compile_cpu_seconds=compile_cpu,
                  computed_one_study_cpu_seconds=compile_cpu, **work)
    finally:
        torch.set_num_threads(threads)


def _check_blocks(compiled, stacks, y):
    """Each variant's compiled first block against the same block eager in float64 through the references."""
    for key, stack in dict(stacks).items():
        block = stack.blocks[0]
        with torch.no_grad(), prefer_backend("reference"):
            actual = compiled(block, y)
            expected = copy.deepcopy(block).double()(y.double())
        assert_close(actual, expected, torch.float32, what=f"compiled block of {key}")
