"""The λ-skip connection with its post-norm: ``Norm(mixer_out + λ · residual)``."""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.common import NORMS, check_finite_float
from lambdaskip.metrics import mu, telemetry_active


DEFAULT_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-5, "l2": 1e-12, None: 0.0}


def check_norm(norm) -> None:
    """``norm`` is one of :data:`lambdaskip.common.NORMS` or None (no norm)."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")


def lam_values(lam) -> torch.Tensor:
    """λ as a float32 tensor: 0-d for a number, (K,) for a sequence or 0-d / 1-D tensor of K finite values.

    Raises TypeError / ValueError naming ``lam``."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point() or lam.dim() > 1:
            raise TypeError(f"lam must be a number or a 0-d / 1-D float tensor, got {lam.dtype} of shape "
                            f"{tuple(lam.shape)}")
        values = lam.detach().to("cpu", torch.float64)
        if not torch.isfinite(values).all():
            raise ValueError(f"lam must be finite, got {values.tolist()}")
        return values.float().clone()
    if isinstance(lam, (list, tuple)):
        if not lam:
            raise ValueError("lam must hold at least one value, got an empty sequence")
        return torch.tensor([check_finite_float("lam", v) for v in lam])
    return torch.tensor(check_finite_float("lam", lam))


class LambdaSkip(nn.Module):
    """``Y_{k+1} = Norm(mixer_out + λ · Y_k)``, the paper's λ-skip with post-norm.

    Args:
        d_model: width of the tokens.
        lam: initial λ; any finite real number (negative allowed, 0 removes the skip path). Or K values
            (a sequence or 1-D tensor), one per *variant*: a batch of ``K·b`` elements is K slices of b,
            slice k (elements ``k·b … k·b + b − 1``) using λ_k — a whole λ sweep in one forward.
        learnable: λ is a trainable parameter (0-d, or (K,)); otherwise a buffer (saved in the state dict).
        norm: ``"layernorm"`` (affine), ``"rmsnorm"`` (weight), ``"l2"`` (the theory's row
            normalisation z/‖z‖, no parameters) or ``None`` (no norm).
        eps: the norm's epsilon; default 1e-5, and 1e-12 for ``"l2"`` (added to ‖z‖², so that the
            normalisation is the theory's z/‖z‖ up to rounding).

    Shapes: ``forward(mixer_out, residual)`` with both (..., seqlen, d_model) returns the same shape; with K
    values of λ, both are (batch, ..., d_model) with batch a multiple of K.

    Telemetry: with ``track_mu = True`` each forward also stores ``last_mu``, μ of the output per batch
    element (shape = the leading dims), detached; on the Triton path it comes from the same kernel pass.
    Not while :func:`lambdaskip.metrics.telemetry_paused` (an activation-checkpoint recomputation).
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
        lam_tensor = lam_values(lam)
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
        lam = self.per_element_lam(mixer_out.shape[0] if mixer_out.dim() > 1 else None)
        if self.norm is None:
            scale = lam.to(mixer_out.dtype)
            out = mixer_out + (scale.view(-1, *(1,) * (mixer_out.dim() - 1)) if lam.dim() else scale) * residual
            if self.track_mu and telemetry_active():
                self.last_mu = mu(out.detach())
            return out
        if self.track_mu:  # a recomputation (telemetry paused) runs the same op but records nothing
            out, last_mu = ops.lambda_norm(mixer_out, residual, lam, self.weight, self.bias, self.eps,
                                           norm=self.norm, return_mu=True)
            if telemetry_active():
                self.last_mu = last_mu
            return out
        return ops.lambda_norm(mixer_out, residual, lam, self.weight, self.bias, self.eps, norm=self.norm)

    def per_element_lam(self, batch: int | None) -> torch.Tensor:
        """λ for a batch of ``batch`` elements: the 0-d λ itself, or the K variant values each repeated
        batch / K times, shape (batch,) (differentiable). ``batch`` None: inputs without a batch dim."""
        k = self.lam.numel()
        if self.lam.dim() == 0 or k == 1:
            return self.lam
        if batch is None or batch % k:
            raise ValueError(f"with {k} values of lam the inputs must be (batch, ..., d_model) with batch a "
                             f"multiple of {k} (one slice per λ), got batch {batch}")
        return self.lam.repeat_interleave(batch // k)

    def extra_repr(self) -> str:
        lam = ", ".join(f"{v:.4g}" for v in self.lam.detach().flatten().tolist())
        lam = lam if self.lam.dim() == 0 else f"[{lam}]"
        return (f"d_model={self.d_model}, lam={lam}, learnable={self.learnable}, "
                f"norm={self.norm!r}, eps={self.eps}")
