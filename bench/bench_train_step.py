"""A training step of ``lambdaskip train mqar`` with its defaults, against the same step through the
reference under ``torch.compile``.

The configuration is what the command records: it runs once (one epoch, 64 test sequences, untimed) and
its metrics.json gives the model and batch; the trainer's own seconds per step of that epoch (which also
include its μ telemetry and the batch indexing) are recorded as ``cli_seconds_per_step``. Then, on the
model built by the trainer's own builders from that recorded configuration (``TrainConfig``,
``load_data``, ``build_model``, ``build_optimizer``: its current defaults, positions included) and the
first training batch of its data, one step is forward, cross-entropy over the labelled positions,
backward, clip, AdamW:

- ``auto``: eager, every op on its default backend (as ``lambdaskip train`` runs it);
- ``compiled``: the loss under ``torch.compile`` with every op forced to its reference (the first forward
  and backward, compile included, recorded as ``compile_seconds``; only with LAMBDASKIP_BENCH_FULL=1).

Both run two untimed steps before timing. ``computed_default_run_seconds``: the steps of a run with the
default epochs (``steps_per_default_run``) at the median step time, plus, for ``compiled``, the compile
(``compile_cpu_seconds``: CPU time of this process and of the compiler processes it waited for, g++
included; set TORCHINDUCTOR_COMPILE_THREADS=1 so inductor compiles in this process): what the compiled
path would cost a user, compile amortised over that run.
Run with ``--benchmark-timer=time.process_time`` on a busy machine, so the median and the compile are in
the same unit (CPU time).

Before timing, the loss of the path being timed (auto or compiled) is checked against the eager float64
reference on the same weights and batch. ``flops``: one step's forward and backward counted by
``torch.utils.flop_counter`` on the reference path (a lower bound: elementwise work and the optimiser are
not counted); ``bytes``: the
parameters read and written by AdamW (weights, gradients, two moments: 4·4 bytes each, read and write).
With ``LAMBDASKIP_BENCH_FULL=1`` the command's defaults; otherwise a tiny model (depth 1, d_model 16,
sequences of 16) so the smoke run is cheap. The group names the exact configuration.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lambdaskip import cli
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close
from lambdaskip.training import TrainConfig, build_model, build_optimizer, load_data
from lambdaskip.training.data import IGNORE_INDEX

FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
TINY = ["--depth", "1", "--d-model", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "256",
        "--batch-size", "16"]
_recorded: dict = {}


def _model_and_batch(c: dict):
    """The model exactly as ``lambdaskip train`` builds it from the recorded configuration
    (:class:`~lambdaskip.training.TrainConfig`, :func:`~lambdaskip.training.load_data`'s task facts,
    :func:`~lambdaskip.training.build_model`: positions at the config's ``position_scale()``), and the
    first ``batch_size`` training sequences of its data."""
    config = TrainConfig(**c)
    config.validate()
    data, facts = load_data(config)
    tokens, labels = (t[: config.batch_size] for t in data["train"].tensors)
    return config, build_model(config, facts), tokens, labels


def _loss(model, tokens, labels):
    logits = model(tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _recorded_run(tmp_path) -> dict:
    """Run ``lambdaskip train mqar`` once for one epoch; return its metrics.json."""
    if not _recorded:
        out = tmp_path / "train"
        argv = ["train", "mqar", "--epochs", "1", "--num-test", "64", "--quiet", "--out", str(out),
                *([] if FULL else TINY)]
        assert cli.main(argv) == 0
        _recorded.update(json.loads((out / "metrics.json").read_text()))
    return _recorded


def _flops(model, tokens, labels) -> int:
    model = copy.deepcopy(model)
    counter = FlopCounterMode(display=False)
    with counter, prefer_backend("reference"):
        _loss(model, tokens, labels).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("impl", ["auto", "compiled"])
def test_train_step(run_timed, benchmark, cpu_seconds, tmp_path, impl):
    if impl == "compiled" and not FULL:
        pytest.skip("compiled: run with LAMBDASKIP_BENCH_FULL=1 (inductor's compile outlasts a smoke run)")
    metrics = _recorded_run(tmp_path)
    c, epoch = metrics["config"], metrics["history"][0]
    cli_step = epoch["seconds"] / epoch["step"]
    benchmark.group = (f"lambdaskip train mqar{'' if FULL else ' (tiny)'} step: arch={c['arch']} depth={c['depth']} "
                       f"d_model={c['d_model']} batch={c['batch_size']} seq_len={c['seqlen']} "
                       f"vocab={c['vocab_size']} mlp={c['mlp']} threads={torch.get_num_threads()}")
    config, model, tokens, labels = _model_and_batch(c)
    optimizer = build_optimizer(model, config)
    steps = math.ceil(config.num_train / config.batch_size) * TrainConfig().epochs  # a run with the default epochs
    n_params = sum(p.numel() for p in model.parameters())
    work = dict(flops=_flops(model, tokens, labels), bytes=16 * 2 * n_params, parameters=n_params,
                cli_seconds_per_step=cli_step)
    loss_fn = _loss
    extra = {}
    if impl == "compiled":
        torch._dynamo.reset()
        compiled = torch.compile(_loss)

        def loss_fn(m, x, y):
            with prefer_backend("reference"):
                return compiled(m, x, y)

        began, began_cpu = time.perf_counter(), cpu_seconds()
        actual = loss_fn(model, tokens, labels)
        actual.backward()
        extra.update(compile_seconds=time.perf_counter() - began, compile_cpu_seconds=cpu_seconds() - began_cpu)
        optimizer.zero_grad(set_to_none=True)
    with prefer_backend("reference"):
        expected = _loss(copy.deepcopy(model).double(), tokens, labels)
    assert_close(loss_fn(model, tokens, labels).detach(), expected.detach(), torch.float32, what=f"{impl} loss")

    def step():
        loss = loss_fn(model, tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        return loss

    for _ in range(2):  # AdamW's first step allocates its state; the compiled backward settles
        step()
    loss = run_timed(step, impl=impl, steps_per_default_run=steps, **work, **extra)
    assert torch.isfinite(loss)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:  # a default run's steps, compile included
        benchmark.extra_info["computed_default_run_seconds"] = (extra.get("compile_cpu_seconds", 0.0)
                                                                + steps * stats.stats.median)
