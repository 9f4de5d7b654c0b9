"""What a mixer states about itself for Theorem 4.1: ‖M‖_F and ‖C_V‖₂ (see :mod:`lambdaskip.theory`).

Each mixer's ``theorem_constants(y)`` returns a :class:`MixerConstants` computed from its own parameters
at its input ``y`` (batch, N, d_model); the helpers here are the norms it needs. The theory module and
the collapse study read these; nothing outside a mixer reaches into its weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FORMS = ("exact", "bounded", "approximate")


@dataclass
class MixerConstants:
    """Theorem 4.1's constants of one mixer on one input batch.

    C_M: (batch,) max over heads/channels of ‖M‖_F; S, S_frob: spectral and Frobenius bounds on C_V;
    form: ``"exact"`` / ``"bounded"`` / ``"approximate"`` (see :mod:`lambdaskip.theory`); note: what was
    assumed; S_projections: for Mamba-2, ‖W_x‖·‖W_O‖ (reported, not used).
    """
    C_M: torch.Tensor
    S: float
    S_frob: float
    form: str
    note: str
    S_projections: float | None = None


def spectral_norm(W: torch.Tensor) -> float:
    """‖W‖₂ of a matrix, in float64."""
    return torch.linalg.matrix_norm(W.detach().double(), ord=2).item()


def frobenius_norm(W: torch.Tensor) -> float:
    """‖W‖_F of a matrix, in float64."""
    return torch.linalg.matrix_norm(W.detach().double()).item()


def lti_matrix(K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The materialised mixing matrices of a per-channel causal convolution.

    Args:
        K: (channels, N) kernels; D: optional (channels,) feed-through, added on the diagonal.
    Returns:
        (channels, N, N) lower-triangular Toeplitz, M[c, i, j] = K[c, i − j] (+ D[c] if i = j).
    """
    N = K.shape[-1]
    lag = torch.arange(N, device=K.device)[:, None] - torch.arange(N, device=K.device)[None, :]
    M = K[:, lag.clamp_min(0)] * (lag >= 0)
    if D is not None:
        M = M + torch.diag_embed(D[:, None].expand(-1, N).to(M.dtype))
    return M


def lti_frobenius(K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """‖M_c‖_F of :func:`lti_matrix` without materialising it: √(Σ_ℓ (N − ℓ)·K'_ℓ²), K'_0 = K_0 + D.

    Args:
        K: (channels, N); D: optional (channels,).
    Returns:
        (channels,) in K's dtype (at least float32).
    """
    K = K.double() if K.dtype == torch.float64 else K.float()
    if D is not None:
        K = torch.cat([K[:, :1] + D[:, None].to(K.dtype), K[:, 1:]], dim=1)
    N = K.shape[-1]
    weights = torch.arange(N, 0, -1, dtype=K.dtype, device=K.device)
    return (K.square() * weights).sum(dim=-1).sqrt()


def lti_constants(K: torch.Tensor, D: torch.Tensor | None, batch: int, S: float, S_frob: float, form: str,
                  note: str) -> MixerConstants:
    """The constants of an input-independent per-channel convolution: C_M = max_c ‖M_c‖_F for every
    batch element. K: (channels, N); D: optional (channels,)."""
    C_M = lti_frobenius(K.detach(), None if D is None else D.detach()).max()
    return MixerConstants(C_M=C_M.expand(batch).clone(), S=S, S_frob=S_frob, form=form, note=note)
