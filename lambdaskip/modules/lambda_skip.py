"""The λ-skip connection with its post-norm: ``Norm(mixer_out + λ · residual)``."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops

NORMS = ("layernorm", "rmsnorm", "l2", None)


def check_norm(norm) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class LambdaSkip(nn.Module):
    """``Y_{k+1} = Norm(mixer_out + λ · Y_k)``, the paper's λ-skip with post-norm.

    Args:
        d_model: width of the tokens.
        lam: initial λ; any real number (negative allowed, 0 removes the skip path).
        learnable: λ is a trainable scalar parameter; otherwise a buffer (saved in the state dict).
        norm: ``"layernorm"`` (affine), ``"rmsnorm"`` (weight), ``"l2"`` (the theory's row
            normalisation z/‖z‖, no parameters) or ``None`` (no norm).
        eps: the norm's epsilon.

    Shapes: ``forward(mixer_out, residual)`` with both (..., d_model) returns (..., d_model).
    """

    def __init__(self, d_model: int, lam: float = 1.0, learnable: bool = False, norm: str | None = "layernorm",
                 eps: float = 1e-5):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        check_norm(norm)
        self.d_model, self.norm, self.eps, self.learnable = d_model, norm, eps, learnable
        lam_tensor = torch.tensor(float(lam))
        if learnable:
            self.lam = nn.Parameter(lam_tensor)
        else:
            self.register_buffer("lam", lam_tensor)
        self.weight = nn.Parameter(torch.ones(d_model)) if norm in ("layernorm", "rmsnorm") else None
        self.bias = nn.Parameter(torch.zeros(d_model)) if norm == "layernorm" else None

    def forward(self, mixer_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if mixer_out.shape[-1:] != (self.d_model,):
            raise ValueError(f"mixer_out must have last dimension d_model={self.d_model}, got {tuple(mixer_out.shape)}")
        if residual.shape != mixer_out.shape:
            raise ValueError(f"residual must have the shape of mixer_out {tuple(mixer_out.shape)}, "
                             f"got {tuple(residual.shape)}")
        if self.norm is None:
            return mixer_out + self.lam.to(mixer_out.dtype) * residual
        return ops.lambda_norm(mixer_out, residual, self.lam, self.weight, self.bias, self.eps, norm=self.norm)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, lam={self.lam.item():.4g}, learnable={self.learnable}, "
                f"norm={self.norm!r}, eps={self.eps}")
