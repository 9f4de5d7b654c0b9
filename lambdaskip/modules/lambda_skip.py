"""The λ-skip connection with its post-norm: ``Norm(mixer_out + λ · residual)``."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.common import NORMS
from lambdaskip.metrics import mu

DEFAULT_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-5, "l2": 1e-12, None: 0.0}


def check_norm(norm) -> None:
    """``norm`` is one of :data:`lambdaskip.common.NORMS` or None (no norm)."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")


class LambdaSkip(nn.Module):
    """``Y_{k+1} = Norm(mixer_out + λ · Y_k)``, the paper's λ-skip with post-norm.

    Args:
        d_model: width of the tokens.
        lam: initial λ; any real number (negative allowed, 0 removes the skip path).
        learnable: λ is a trainable scalar parameter; otherwise a buffer (saved in the state dict).
        norm: ``"layernorm"`` (affine), ``"rmsnorm"`` (weight), ``"l2"`` (the theory's row
            normalisation z/‖z‖, no parameters) or ``None`` (no norm).
        eps: the norm's epsilon; default 1e-5, and 1e-12 for ``"l2"`` (added to ‖z‖², so that the
            normalisation is the theory's z/‖z‖ up to rounding).

    Shapes: ``forward(mixer_out, residual)`` with both (..., seqlen, d_model) returns the same shape.

    Telemetry: with ``track_mu = True`` each forward also stores ``last_mu``, μ of the output per batch
    element (shape = the leading dims), detached; on the Triton path it comes from the same kernel pass.
    """

    def __init__(self, d_model: int, lam: float = 1.0, learnable: bool = False, norm: str | None = "layernorm",
                 eps: float | None = None):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        check_norm(norm)
        self.d_model, self.norm, self.learnable = d_model, norm, learnable
        self.eps = DEFAULT_EPS[norm] if eps is None else eps
        self.track_mu = False
        self.last_mu: torch.Tensor | None = None
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
            out = mixer_out + self.lam.to(mixer_out.dtype) * residual
            if self.track_mu:
                self.last_mu = mu(out.detach())
            return out
        if self.track_mu:
            out, self.last_mu = ops.lambda_norm(mixer_out, residual, self.lam, self.weight, self.bias, self.eps,
                                                norm=self.norm, return_mu=True)
            return out
        return ops.lambda_norm(mixer_out, residual, self.lam, self.weight, self.bias, self.eps, norm=self.norm)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, lam={self.lam.item():.4g}, learnable={self.learnable}, "
                f"norm={self.norm!r}, eps={self.eps}")
