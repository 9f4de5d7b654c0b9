"""A λ-skip block (mixer + λ-skip post-norm, optionally an MLP with its own λ-skip) and deep stacks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lambdaskip.modules.attention import AttentionMixer
from lambdaskip.modules.lambda_skip import LambdaSkip, check_norm, lam_values
from lambdaskip.modules.lti import IdentityMixer, LTIMixer
from lambdaskip.modules.mamba2 import Mamba2Mixer
from lambdaskip.modules.s4d import S4DMixer

# The paper's three sequence models, the architectures of the studies and the trainer; MIXERS adds the
# minimal mixers used by tests and theory checks.
ARCHS = ("attention", "mamba2", "s4d")
MIXERS = {
    "attention": AttentionMixer,
    "mamba2": Mamba2Mixer,
    "s4d": S4DMixer,
    "lti": LTIMixer,
    "identity": IdentityMixer,
}


class LambdaSkipBlock(nn.Module):
    """``Y ← Norm(mixer(Y) + λ·Y)``, then, with an MLP, ``Y ← Norm(mlp(Y) + λ·Y)`` with a second λ.

    Args:
        mixer: a module (batch, seqlen, d_model) -> same.
        d_model: token width.
        lam, learnable, norm, eps: of the λ-skips (see :class:`LambdaSkip`).
        mlp: None, True (a 4× GELU MLP) or a module (..., d_model) -> same.
    """

    def __init__(self, mixer: nn.Module, d_model: int, lam: float = 1.0, learnable: bool = False,
                 norm: str | None = "layernorm", mlp: bool | nn.Module | None = None, eps: float | None = None):
        super().__init__()
        self.mixer = mixer
        self.skip = LambdaSkip(d_model, lam, learnable, norm, eps)
        if mlp is True:
            mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.mlp = mlp or None
        self.mlp_skip = LambdaSkip(d_model, lam, learnable, norm, eps) if self.mlp is not None else None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.skip(self.mixer(y), y)
        if self.mlp is not None:
            y = self.mlp_skip(self.mlp(y), y)
        return y


class LambdaSkipStack(nn.Module):
    """``depth`` λ-skip blocks applied in order, (batch, seqlen, d_model) -> same.

    ``blocks`` is a ModuleList, ready for :class:`lambdaskip.metrics.CollapseProbe`.
    """

    def __init__(self, blocks: Sequence[LambdaSkipBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            y = block(y)
        return y

    @property
    def lams(self) -> torch.Tensor:
        """The λ of each block's mixer skip: (depth,), or (depth, K) for K λ variants per block."""
        return torch.stack([block.skip.lam.detach() for block in self.blocks])


def stack_lams(lam, depth: int) -> list[torch.Tensor]:
    """One λ tensor per block (0-d, or (K,) for K variants) from a number, ``depth`` values, or a
    (depth, K) nested sequence / tensor; raises TypeError / ValueError naming ``lam``."""
    if isinstance(lam, torch.Tensor) and lam.dim() > 0 or isinstance(lam, (list, tuple)):
        per_block = list(lam)
    else:
        per_block = [lam] * depth
    if len(per_block) != depth:
        raise ValueError(f"lam must be a number or a sequence of depth={depth} values, got {len(per_block)} values")
    return [lam_values(v) for v in per_block]


def build_stack(arch: str, depth: int, d_model: int, lam: float | Sequence[float] = 1.0, learnable: bool = False,
                norm: str | None = "layernorm", mlp: bool = False, eps: float | None = None, seed: int | None = None,
                **mixer_kwargs) -> LambdaSkipStack:
    """A deep stack of λ-skip blocks around one mixer kind.

    Args:
        arch: one of ``"attention"``, ``"mamba2"``, ``"s4d"``, ``"lti"``, ``"identity"``.
        depth: number of blocks (> 0).
        d_model: token width.
        lam: one finite λ for every block, a sequence of ``depth`` values (one per block), or ``depth``
            sequences of K values — a (depth, K) nested sequence or tensor: K λ variants per block, run
            as K slices of the batch (see :class:`LambdaSkip`).
        learnable, norm, mlp, eps: per block (see :class:`LambdaSkipBlock`).
        seed: when given, parameters are drawn from this seed without touching the global RNG.
        mixer_kwargs: passed to the mixer's constructor.
    Returns:
        a :class:`LambdaSkipStack`.
    """
    if arch not in MIXERS:
        raise ValueError(f"arch must be one of {tuple(MIXERS)}, got {arch!r}")
    if not isinstance(depth, int) or depth <= 0:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if not isinstance(d_model, int) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    check_norm(norm)
    lams = stack_lams(lam, depth)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        blocks = [LambdaSkipBlock(MIXERS[arch](d_model, **mixer_kwargs), d_model, lam_k, learnable, norm, mlp, eps)
                  for lam_k in lams]
    return LambdaSkipStack(blocks)
