"""A training step of ``lambdaskip train mqar`` with its defaults, against the same step through the
reference under ``torch.compile``.

The configuration is what the command records: it runs once (one epoch, 64 test sequences, untimed) and
its metrics.json gives the model and batch; the trainer's own seconds per step of that epoch (which also
include its μ telemetry and the batch indexing) are recorded as ``cli_seconds_per_step``. Then, on the
same model as the trainer builds it (token embedding, learned positions, the λ-skip stack, a token
head; AdamW with the trainer's betas, weight decay on matrices only, gradient clipping), one step is
forward, cross-entropy over the labelled positions, backward, clip, AdamW:

- ``auto``: eager, every op on its default backend (as ``lambdaskip train`` runs it);
- ``compiled``: the loss under ``torch.compile`` with every op forced to its reference (the first forward
  and backward, compile included, recorded as ``compile_seconds``; only with LAMBDASKIP_BENCH_FULL=1).

Both run two untimed steps before timing.

The compiled loss is checked against the eager float64 reference on the same weights and batch before
timing. ``flops``: one step's forward and backward counted by ``torch.utils.flop_counter`` on the
reference path (a lower bound: elementwise work and the optimiser are not counted); ``bytes``: the
parameters read and written by AdamW (weights, gradients, two moments: 4·4 bytes each, read and write).
With ``LAMBDASKIP_BENCH_FULL=1`` the command's defaults; otherwise a tiny model (depth 1, d_model 16,
sequences of 16) so the smoke run is cheap. The group names the exact configuration.
"""
from __future__ import annotations

import copy
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lambdaskip import cli
from lambdaskip.modules import build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close

FULL = os.environ.get("LAMBDASKIP_BENCH_FULL") == "1"
TINY = ["--depth", "1", "--d-model", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "256",
        "--batch-size", "16"]
IGNORE = -100
_recorded: dict = {}


class _Model(nn.Module):
    """The trainer's MQAR model: embedding + positions → λ-skip stack → token head."""

    def __init__(self, c: dict):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c["seed"])
            self.embedding = nn.Embedding(c["vocab_size"], c["d_model"])
            self.positions = nn.Parameter(0.02 * torch.randn(c["seqlen"], c["d_model"])) if c["positions"] else None
            self.head = nn.Linear(c["d_model"], c["vocab_size"])
        mixer = {"attention": dict(nheads=c["nheads"], causal=True),
                 "mamba2": dict(d_state=c["d_state"], headdim=c["headdim"], chunk_size=64),
                 "s4d": dict(d_state=c["d_state"])}[c["arch"]]
        self.stack = build_stack(c["arch"], c["depth"], c["d_model"], lam=c["lam"], learnable=c["learnable"],
                                 norm=c["norm"], mlp=c["mlp"], seed=c["seed"] + 1, **mixer)

    def forward(self, tokens):
        y = self.embedding(tokens)
        if self.positions is not None:
            y = y + self.positions[: tokens.shape[1]]
        return self.head(self.stack(y))


def _loss(model, tokens, labels):
    logits = model(tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def _recorded_run(tmp_path) -> dict:
    """Run ``lambdaskip train mqar`` once for one epoch; return its metrics.json."""
    if not _recorded:
        out = tmp_path / "train"
        argv = ["train", "mqar", "--epochs", "1", "--num-test", "64", "--quiet", "--out", str(out),
                *([] if FULL else TINY)]
        assert cli.main(argv) == 0
        _recorded.update(json.loads((out / "metrics.json").read_text()))
    return _recorded


def _batch(c: dict):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c["vocab_size"], (c["batch_size"], c["seqlen"]), generator=g)
    labels = torch.where(torch.rand(c["batch_size"], c["seqlen"], generator=g) < 0.25,
                         torch.randint(0, c["vocab_size"], (c["batch_size"], c["seqlen"]), generator=g), IGNORE)
    return tokens, labels


def _optimizer(model, c: dict):
    named = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in named if p.dim() >= 2], "weight_decay": c["weight_decay"]},
              {"params": [p for p in named if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c["lr"], betas=(0.9, 0.98))


def _flops(model, tokens, labels) -> int:
    model = copy.deepcopy(model)
    counter = FlopCounterMode(display=False)
    with counter, prefer_backend("reference"):
        _loss(model, tokens, labels).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("impl", ["auto", "compiled"])
def test_train_step(run_timed, benchmark, tmp_path, impl):
    if impl == "compiled" and not FULL:
        pytest.skip("compiled: run with LAMBDASKIP_BENCH_FULL=1 (inductor's compile outlasts a smoke run)")
    metrics = _recorded_run(tmp_path)
    c, epoch = metrics["config"], metrics["history"][0]
    cli_step = epoch["seconds"] / epoch["step"]
    benchmark.group = (f"lambdaskip train mqar{'' if FULL else ' (tiny)'} step: arch={c['arch']} depth={c['depth']} "
                       f"d_model={c['d_model']} batch={c['batch_size']} seq_len={c['seqlen']} "
                       f"vocab={c['vocab_size']} mlp={c['mlp']} threads={torch.get_num_threads()}")
    model = _Model(c)
    tokens, labels = _batch(c)
    optimizer = _optimizer(model, c)
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

        began = time.perf_counter()
        actual = loss_fn(model, tokens, labels)
        actual.backward()
        extra["compile_seconds"] = time.perf_counter() - began
        optimizer.zero_grad(set_to_none=True)
    with prefer_backend("reference"):
        expected = _loss(copy.deepcopy(model).double(), tokens, labels)
    assert_close(loss_fn(model, tokens, labels).detach(), expected.detach(), torch.float32, what=f"{impl} loss")

    def step():
        loss = loss_fn(model, tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip_grad"])
        optimizer.step()
        return loss

    for _ in range(2):  # AdamW's first step allocates its state; the compiled backward settles
        step()
    loss = run_timed(step, impl=impl, **work, **extra)
    assert torch.isfinite(loss)
