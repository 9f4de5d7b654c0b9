"""Packed sequences at :func:`lambdaskip.ops.ssd_scan`'s boundary: validation of ``seq_idx`` / ``cu_seqlens``,
and the gradient rule of the Triton backend's per-sequence (varlen) final states.

Shapes: ``seq_idx`` (batch, seqlen) int32/int64, non-decreasing along seqlen; ``cu_seqlens`` (num_seqs + 1,)
int32/int64 offsets 0, len_0, len_0 + len_1, …, seqlen (batch 1). With ``initial_states`` every row's
``seq_idx`` starts at 0: the initial state seeds the sequence numbered 0 (mamba_ssm's state passing
and chunk scan compare the first chunk's sequence number with 0, and so silently drop the initial state
of a row that starts elsewhere; we refuse that row instead).
"""
from __future__ import annotations

import torch

from lambdaskip.reference.ssd import seq_idx_from_cu_seqlens

INDEX_DTYPES = (torch.int32, torch.int64)


def _check_index(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension{'s' if ndim > 1 else ''}, got shape {tuple(t.shape)}")


def check_packed_shapes(seq_idx, cu_seqlens, batch: int, seqlen: int, return_varlen_states: bool) -> None:
    """Types and shapes of ``seq_idx`` and ``cu_seqlens`` (no value is read)."""
    if seq_idx is not None:
        _check_index("seq_idx", seq_idx, 2)
        if tuple(seq_idx.shape) != (batch, seqlen):
            raise ValueError(f"seq_idx must have shape (batch, seqlen) = ({batch}, {seqlen}), "
                             f"got {tuple(seq_idx.shape)}")
    if cu_seqlens is not None:
        _check_index("cu_seqlens", cu_seqlens, 1)
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 offsets, got shape {tuple(cu_seqlens.shape)}")
        if batch != 1:
            raise ValueError(f"cu_seqlens needs batch 1 (sequences packed into one row), got batch {batch}")
    if return_varlen_states and cu_seqlens is None:
        raise ValueError("return_varlen_states=True needs cu_seqlens")


def packed_value_flags(seq_idx, cu_seqlens, seqlen: int, initial_states) -> dict[str, torch.Tensor]:
    """Message → a 0-d bool tensor, true where the values are wrong (read together with the op's other checks)."""
    flags = {}
    if seq_idx is not None:
        flags["seq_idx must be non-decreasing along seqlen (one packed sequence after another)"] = \
            (seq_idx[:, 1:] < seq_idx[:, :-1]).any()
    if seq_idx is not None and initial_states is not None:
        flags["seq_idx must start at 0 in every row when initial_states is given (the initial state seeds the "
              "sequence numbered 0; mamba_ssm silently ignores it in a row that starts elsewhere)"] = \
            (seq_idx[:, :1] != 0).any()
    if cu_seqlens is not None:
        flags[f"cu_seqlens must start at 0, end at seqlen = {seqlen} and strictly increase"] = \
            (cu_seqlens[0] != 0) | (cu_seqlens[-1] != seqlen) | (cu_seqlens[1:] <= cu_seqlens[:-1]).any()
    return flags


def check_seq_idx_matches_cu_seqlens(seq_idx, cu_seqlens, seqlen: int) -> None:
    """Both given: ``seq_idx`` must change exactly at the offsets of ``cu_seqlens``."""
    implied = seq_idx_from_cu_seqlens(cu_seqlens, seqlen)
    if not torch.equal((seq_idx - seq_idx[:, :1]).to(torch.int32), implied):
        raise ValueError("seq_idx and cu_seqlens disagree: seq_idx must change exactly at the offsets in cu_seqlens")


class _RefuseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, varlen):
        return varlen.clone()  # not a view: callers may modify the states in place, as a detached tensor

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("ssd_scan: varlen_states carry no gradient on the Triton backend (as mamba_ssm's); "
                           "detach them, or backpropagate through them with backend='reference'")


def refuse_gradient(varlen: torch.Tensor) -> torch.Tensor:
    """``varlen`` unchanged, but a backward pass that reaches it raises (rather than silently dropping its
    gradient, as a detached tensor would). Under torch.compile, which cannot trace a backward that raises,
    it is detached (as mamba_ssm's)."""
    if torch.compiler.is_compiling() or not (varlen.requires_grad and torch.is_grad_enabled()):
        return varlen.detach()
    return _RefuseGradient.apply(varlen)
