"""A λ-skip block (mixer + λ-skip post-norm, optionally an MLP with its own λ-skip) and deep stacks.

Generation: blocks and stacks whose mixers keep a decode cache (``allocate_cache``, ``prefill``, ``step``:
the Mamba-2 mixer) run a prompt once, then one token at a time (:meth:`LambdaSkipStack.generate`); other
mixers raise NotImplementedError there.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from lambdaskip.metrics import telemetry_paused
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

    def allocate_cache(self, batch_size: int, *, device=None, dtype=None):
        """The mixer's empty decode cache for ``batch_size`` sequences (see :meth:`step`)."""
        return self._decoding_mixer().allocate_cache(batch_size, device=device, dtype=dtype)

    @torch.no_grad()
    def prefill(self, y: torch.Tensor, cache) -> torch.Tensor:
        """:meth:`forward` on ``y`` (batch, seqlen, d_model) continuing from ``cache``, advancing it.
        Inference only (no gradient)."""
        return self._after_mixer(self._decoding_mixer().prefill(y, cache), y)

    @torch.no_grad()
    def step(self, y: torch.Tensor, cache) -> torch.Tensor:
        """One token, (batch, d_model) → (batch, d_model), continuing from ``cache`` and advancing it.
        Inference only (no gradient)."""
        return self._after_mixer(self._decoding_mixer().step(y, cache)[:, None], y[:, None])[:, 0]

    def _after_mixer(self, mixed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self.skip(mixed, y)
        if self.mlp is not None:
            y = self.mlp_skip(self.mlp(y), y)
        return y

    def _decoding_mixer(self) -> nn.Module:
        if not all(hasattr(self.mixer, name) for name in ("allocate_cache", "prefill", "step")):
            raise NotImplementedError(f"{type(self.mixer).__name__} keeps no decode cache; token-by-token "
                                      f"generation is implemented for Mamba2Mixer")
        return self.mixer


def check_checkpoint(checkpoint) -> int:
    """Blocks per checkpointed segment for ``checkpoint`` = None (0: none), ``"block"`` (1) or an int k ≥ 1."""
    if checkpoint is None:
        return 0
    if checkpoint == "block":
        return 1
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int):
        raise TypeError(f"checkpoint must be None, 'block' or a positive int, got {checkpoint!r}")
    if checkpoint < 1:
        raise ValueError(f"checkpoint must be None, 'block' or a positive int, got {checkpoint}")
    return checkpoint


def _recompute_contexts():
    """Checkpoint contexts: the forward as usual, the recomputation with telemetry paused."""
    return contextlib.nullcontext(), telemetry_paused()


class LambdaSkipStack(nn.Module):
    """``depth`` λ-skip blocks applied in order, (batch, seqlen, d_model) -> same.

    ``blocks`` is a ModuleList, ready for :class:`lambdaskip.metrics.CollapseProbe`.

    ``checkpoint`` (activation checkpointing, ``torch.utils.checkpoint`` non-reentrant, only while grad is
    enabled): None keeps every block's activations for the backward; ``"block"`` keeps only each block's
    input and recomputes the block in the backward; an int k does that per segment of k consecutive
    blocks (a checkpoint every k-th block: depth/k inputs kept, k blocks' activations live at a time in
    the backward). Outputs and gradients are those of the plain stack; μ telemetry is recorded in the
    forward only, never by the recomputation.
    """

    def __init__(self, blocks: Sequence[LambdaSkipBlock], checkpoint: str | int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.segment = check_checkpoint(checkpoint)
        self.checkpoint = checkpoint

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not self.segment or not torch.is_grad_enabled():
            return self._run(y, 0, len(self.blocks))
        # compiled, the recomputation is part of the compiled backward and replays no Python (no telemetry),
        # and torch.compile accepts only dispatch modes as contexts: the pausing context is for eager only
        contexts = {} if torch.compiler.is_compiling() else {"context_fn": _recompute_contexts}
        for start in range(0, len(self.blocks), self.segment):
            y = activation_checkpoint(self._run, y, start, start + self.segment, use_reentrant=False, **contexts)
        return y

    def _run(self, y: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for block in self.blocks[start:end]:
            y = block(y)
        return y

    def allocate_cache(self, batch_size: int, *, device=None, dtype=None) -> list:
        """One empty decode cache per block, for ``batch_size`` sequences."""
        return [block.allocate_cache(batch_size, device=device, dtype=dtype) for block in self.blocks]

    def prefill(self, y: torch.Tensor, cache: list) -> torch.Tensor:
        """:meth:`forward` on ``y`` (batch, seqlen, d_model) continuing from ``cache``, advancing it."""
        for block, block_cache in zip(self.blocks, cache, strict=True):
            y = block.prefill(y, block_cache)
        return y

    def step(self, y: torch.Tensor, cache: list) -> torch.Tensor:
        """One token, (batch, d_model) → (batch, d_model), continuing from ``cache`` and advancing it."""
        for block, block_cache in zip(self.blocks, cache, strict=True):
            y = block.step(y, block_cache)
        return y

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, num_tokens: int,
                 next_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Autoregressive decoding: the prompt in one pass, then one token per step.

        Output 0 is the stack's output at the prompt's last position; output i > 0 is its output for the
        input ``next_input(output i−1)`` (default: the output itself, e.g. ``embed(head(out).argmax(-1))``
        for a language model). So the outputs equal :meth:`forward` on the prompt followed by those inputs,
        at the last ``num_tokens`` positions.

        Args:
            prompt: (batch, seqlen ≥ 1, d_model).
            num_tokens: outputs to produce (≥ 1).
            next_input: maps an output (batch, d_model) to the next input (batch, d_model).
        Returns:
            (batch, num_tokens, d_model).
        Raises:
            NotImplementedError for mixers without a decode cache.
        """
        if prompt.dim() != 3 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must have shape (batch, seqlen >= 1, d_model), got {tuple(prompt.shape)}")
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
        next_input = next_input or (lambda out: out)
        cache = self.allocate_cache(prompt.shape[0], device=prompt.device, dtype=prompt.dtype)
        outputs = [self.prefill(prompt, cache)[:, -1]]
        for _ in range(num_tokens - 1):
            outputs.append(self.step(next_input(outputs[-1]), cache))
        return torch.stack(outputs, dim=1)

    @property
    def lams(self) -> torch.Tensor:
        """The λ of each block's mixer skip: (depth,), or (depth, K) for K λ variants per block."""
        return torch.stack([block.skip.lam.detach() for block in self.blocks])


def stack_lams(lam, depth: int) -> list[torch.Tensor]:
    """One λ tensor per block (0-d, or (K,) for K variants) from a number, ``depth`` values, or a
    (depth, K) nested sequence / tensor; raises TypeError / ValueError naming ``lam``."""
    if (isinstance(lam, torch.Tensor) and lam.dim() > 0) or isinstance(lam, (list, tuple)):
        per_block = list(lam)
    else:
        per_block = [lam] * depth
    if len(per_block) != depth:
        raise ValueError(f"lam must be a number or a sequence of depth={depth} values, got {len(per_block)} values")
    return [lam_values(v) for v in per_block]


def build_stack(arch: str, depth: int, d_model: int, lam: float | Sequence[float] = 1.0, learnable: bool = False,
                norm: str | None = "layernorm", mlp: bool = False, eps: float | None = None, seed: int | None = None,
                checkpoint: str | int | None = None, **mixer_kwargs) -> LambdaSkipStack:
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
        checkpoint: activation checkpointing, None, ``"block"`` or k (see :class:`LambdaSkipStack`).
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
    check_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        blocks = [LambdaSkipBlock(MIXERS[arch](d_model, **mixer_kwargs), d_model, lam_k, learnable, norm, mlp, eps)
                  for lam_k in lams]
    return LambdaSkipStack(blocks, checkpoint)
