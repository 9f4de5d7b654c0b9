"""What the training loop measures besides the loss it optimises: accuracy and loss over a dataset, μ on a
fixed probe batch, and μ of every block during the training steps (:class:`TrainingMu`)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from lambdaskip.metrics import CollapseProbe
from lambdaskip.training.config import TrainConfig
from lambdaskip.training.data import IGNORE_INDEX
from lambdaskip.training.distributed import Placement, all_sum
from lambdaskip.training.model import SequenceModel


def loss_and_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(mean cross-entropy over labelled positions, correct predictions, labelled positions)."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    mask = labels != IGNORE_INDEX
    return loss, int((logits.argmax(-1)[mask] == labels[mask]).sum()), int(mask.sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, config: TrainConfig, placement: Placement) -> tuple[float, float]:
    """(mean loss, accuracy) over labelled positions of ``dataset``, each rank evaluating every world-th
    example and the sums combined with all_reduce (under FSDP, where a forward is collective, a rank with a
    batch fewer runs one discarded forward on one example)."""
    model.eval()
    tokens, labels = (t[placement.rank::placement.world] for t in dataset.tensors)
    loss_sum = hits = count = 0.0
    largest = -(-len(dataset) // placement.world) if placement.fsdp else len(tokens)  # rows on the largest shard
    for start in range(0, largest, config.eval_batch_size):
        x = tokens[start:start + config.eval_batch_size].to(placement.device)
        y = labels[start:start + config.eval_batch_size].to(placement.device)
        with autocast(config, placement):
            logits = model(x if len(x) else tokens[:1].to(placement.device))
        if not len(x):
            continue
        loss, batch_hits, batch_count = loss_and_hits(logits, y)
        loss_sum, hits, count = loss_sum + float(loss) * batch_count, hits + batch_hits, count + batch_count
    loss_sum, hits, count = all_sum([loss_sum, hits, count], placement)
    return loss_sum / count, hits / count


@torch.no_grad()
def probe_mu(model: SequenceModel, dataset, config: TrainConfig, placement: Placement) -> list[float]:
    """Normalised μ (mean over the first ``probe_batch`` evaluation sequences) at the stack's input and
    after every block."""
    model.eval()
    tokens = dataset.tensors[0][: config.probe_batch].to(placement.device)
    with CollapseProbe(model.stack.blocks, metrics=("normalized_mu",)) as probe:
        model(tokens)
    return probe.trajectory("normalized_mu").mean(dim=1).tolist()


class TrainingMu:
    """μ of every block's output during the training steps themselves, from the λ-skips' telemetry
    (:attr:`lambdaskip.modules.LambdaSkip.track_mu`: on CUDA the fused λ-norm kernel computes μ in the same
    pass as the norm, so logging costs almost nothing). Raw μ, averaged over the sequences of each step and
    over the epoch's steps; under DDP or FSDP each rank sees its own slice of the batch, and the epoch's
    values are averaged over the ranks (the global mean: the slices are equal)."""

    def __init__(self, model: SequenceModel, device: torch.device):
        self.skips = [block.mlp_skip or block.skip for block in model.stack.blocks]
        for skip in self.skips:
            skip.track_mu = True
        self.sums = torch.zeros(len(self.skips), dtype=torch.float64, device=device)
        self.last = torch.zeros_like(self.sums)
        self.steps = 0

    def record_step(self) -> None:
        """Add the last forward's μ, also kept as :attr:`last` (on the device: no synchronisation per step)."""
        self.last = torch.stack([skip.last_mu.double().mean() for skip in self.skips])
        self.sums += self.last
        self.steps += 1

    def epoch_row(self, placement: Placement | None = None) -> dict[str, float]:
        """``{"train_mu1": ..., "train_mu<depth>": ...}`` for the epoch so far (the mean over ranks under
        ``placement``), then reset."""
        means = (self.sums / max(self.steps, 1)).tolist()
        if placement is not None and placement.world > 1:
            means = [value / placement.world for value in all_sum(means, placement)]
        self.sums.zero_()
        self.steps = 0
        return {f"train_mu{k}": v for k, v in enumerate(means, start=1)}


def autocast(config: TrainConfig, placement: Placement):
    """bfloat16 autocast on CUDA when ``config.amp``; nothing elsewhere."""
    if config.amp and placement.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
