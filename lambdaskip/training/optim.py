"""Optimiser, learning-rate schedule and data order of a training run."""
from __future__ import annotations

import math

import numpy as np
import torch


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.AdamW:
    """AdamW with ``config.lr`` (a :class:`~lambdaskip.training.TrainConfig`); weight decay only on parameters with ≥ 2 dimensions (projections, embeddings, convolutions,
    S4D's C), none on λ, norm weights, biases or the SSMs' per-channel vectors (A, dt, D): decaying λ
    would pull it towards 0, the skip that collapses."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


class WarmupCosine:
    """lr factor: linear warmup from 0 over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a permutation drawn from (seed, epoch) only."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(state))
