"""Sequence models for the trainer: token embedding → λ-skip stack → head, and the model of a run."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip.modules import build_stack
from lambdaskip.training.distributed import whole

HEADS = ("token", "pooled")


class SequenceModel(nn.Module):
    """``embedding (+ learned positions) → build_stack(arch, depth, d_model, lam, learnable, …) → head``.

    Args:
        vocab_size: number of input tokens.
        num_outputs: classes predicted by the head.
        arch, depth, d_model, lam, learnable, norm, mlp, checkpoint: passed to
            :func:`lambdaskip.modules.build_stack` (one block = mixer + λ-skip post-norm, with ``mlp`` an MLP +
            its own λ-skip post-norm; ``checkpoint`` = None, ``"block"`` or k: activation checkpointing).
        head: ``"token"`` (a prediction per position, for MQAR) or ``"pooled"`` (mean over positions,
            one prediction per sequence, for classification).
        max_len: > 0 adds learned position embeddings for sequences up to this length; 0 adds none.
        position_std: their initial standard deviation (the token embedding's is 1).
        seed: parameters are drawn from this seed without touching the global RNG.
        mixer_kwargs: passed to the mixer (e.g. ``nheads``, ``causal``, ``d_state``, ``headdim``).

    Shapes: ``forward(tokens)`` with tokens (batch, seqlen) int64 returns logits (batch, seqlen,
    num_outputs) for the token head, (batch, num_outputs) for the pooled head.
    """

    def __init__(self, vocab_size: int, num_outputs: int, arch: str, depth: int, d_model: int,
                 lam: float = 1.0, learnable: bool = False, norm: str | None = "layernorm", mlp: bool = True,
                 head: str = "token", max_len: int = 0, seed: int = 0, checkpoint: str | int | None = None,
                 position_std: float = 0.02,
                 **mixer_kwargs):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        for name, value in (("vocab_size", vocab_size), ("num_outputs", num_outputs)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(max_len, int) or max_len < 0:
            raise ValueError(f"max_len must be a non-negative int, got {max_len!r}")
        self.head_kind, self.max_len = head, max_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(vocab_size, d_model)
            self.positions = nn.Parameter(position_std * torch.randn(max_len, d_model)) if max_len else None
            self.head = nn.Linear(d_model, num_outputs)
        self.stack = build_stack(arch, depth, d_model, lam=lam, learnable=learnable, norm=norm, mlp=mlp,
                                 seed=seed + 1, checkpoint=checkpoint, **mixer_kwargs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be (batch, seqlen) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        y = self.embedding(tokens)
        if self.positions is not None:
            if tokens.shape[1] > self.max_len:
                raise ValueError(f"seqlen={tokens.shape[1]} exceeds max_len={self.max_len}")
            y = y + self.positions[: tokens.shape[1]]
        y = self.stack(y)
        if self.head_kind == "pooled":
            y = y.mean(dim=1)
        return self.head(y)

    def lams(self) -> dict[str, float]:
        """Every λ by name: ``"lam{k}"`` for block k's mixer skip, ``"lam{k}_mlp"`` for its MLP skip. A λ
        sharded by FSDP (a DTensor) is gathered whole first: every rank calls this together. One copy to the
        host for all of them (``--tensorboard`` reads them every step)."""
        skips = {}
        for k, block in enumerate(self.stack.blocks):
            skips[f"lam{k}"] = block.skip
            if block.mlp_skip is not None:
                skips[f"lam{k}_mlp"] = block.mlp_skip
        values = torch.stack([whole(skip.lam).detach().reshape(()) for skip in skips.values()]).tolist()
        return dict(zip(skips, values))


def build_model(config, facts: dict) -> SequenceModel:
    """The model of a :class:`~lambdaskip.training.TrainConfig` for the task ``facts`` of
    :func:`lambdaskip.training.data.load_data` (vocab, outputs, head, seqlen)."""
    mixer = {"attention": dict(nheads=config.nheads, causal=config.task == "mqar"),
             "mamba2": dict(d_state=config.d_state, headdim=config.headdim, chunk_size=64),
             "s4d": dict(d_state=config.d_state)}[config.arch]
    return SequenceModel(facts["vocab"], facts["outputs"], config.arch, config.depth, config.d_model,
                         lam=config.lam, learnable=config.learnable, norm=config.norm, mlp=config.mlp,
                         head=facts["head"], max_len=facts["seqlen"] if config.positions else 0,
                         seed=config.seed, checkpoint=config.checkpoint, position_std=config.position_scale(),
                         **mixer)
