"""Reference λ-residual + norm: ``out = Norm(x + λ·residual)``, optionally with the pre-norm sum and μ.

The specification of :func:`lambdaskip.ops.lambda_norm`. Plain PyTorch, differentiable by autograd
(except μ), float64-capable.

Norms over the last dimension (d) of ``h = x + λ·residual``:

- ``"layernorm"``: ``(h − mean(h)) / sqrt(var(h) + eps) · weight + bias`` (biased variance).
- ``"rmsnorm"``:   ``h / sqrt(mean(h²) + eps) · weight``.
- ``"l2"``:        ``h / sqrt(sum(h²) + eps) · weight`` — the paper's theory norm ``h / ‖h‖``; eps is
  added to the *sum* of squares (not the mean), so it only matters for rows with ``‖h‖² ≲ eps``; pass a
  tiny eps (e.g. 1e-12) to follow the theory closely. ``weight`` is an optional affine scale after it.

``bias`` is only defined for ``"layernorm"``; RMSNorm and ℓ2 are scale-only (their purpose is to keep
rows on a sphere, which a shift would undo).

λ is one value for every row, or one value per batch element: a tensor of shape (batch,) with
batch = ``x.shape[0]``; element b's λ scales ``residual[b]`` (for (batch, seqlen, d) inputs, the
``seqlen`` rows of sequence b). That is how one pass evaluates a whole λ sweep (variants as batch slices).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lambdaskip.common import NORMS, compute_dtype


def normalize_rows(h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   norm: str) -> torch.Tensor:
    """``Norm(h)`` over the last dim in ``h``'s dtype (see the module docstring). LayerNorm and RMSNorm are
    PyTorch's own (``F.layer_norm``, ``F.rms_norm``): the specification is exactly "PyTorch's norm of the sum"."""
    shape = h.shape[-1:]
    weight = None if weight is None else weight.to(h.dtype)
    if norm == "layernorm":
        return F.layer_norm(h, shape, weight, None if bias is None else bias.to(h.dtype), eps)
    if bias is not None:
        raise ValueError(f"bias is only defined for norm='layernorm', got norm={norm!r}")
    if norm == "rmsnorm":
        return F.rms_norm(h, shape, weight, eps)
    if norm == "l2":
        out = h * torch.rsqrt(h.square().sum(dim=-1, keepdim=True) + eps)
        return out if weight is None else out * weight
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def token_mu(y: torch.Tensor) -> torch.Tensor:
    """μ(Y) = ‖Y − 1·ȳᵀ‖_F per batch element, for ``y`` of shape (..., seqlen, d); returns shape (...)."""
    centered = y - y.mean(dim=-2, keepdim=True)
    return centered.square().sum(dim=(-2, -1)).sqrt()


def per_element_shape(x: torch.Tensor, lam: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts a tensor λ over ``x``: () for one value, (batch, 1, …, 1) for one per element."""
    if lam.numel() == 1:
        return ()
    if x.dim() < 2 or lam.shape != x.shape[:1]:
        raise ValueError(f"lam must be a number, a 0-d / (1,) tensor or a (batch,) = {tuple(x.shape[:1])} tensor for x "
                         f"of shape (batch, ..., d) = {tuple(x.shape)}, got shape {tuple(lam.shape)}")
    return (lam.shape[0],) + (1,) * (x.dim() - 1)


def lambda_norm(x: torch.Tensor, residual: torch.Tensor, lam, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, eps: float = 1e-5, *, norm: str = "layernorm",
                prenorm: bool = False, residual_in_fp32: bool = False, return_mu: bool = False):
    """``out = Norm(x + lam·residual)`` in plain PyTorch.

    Args:
        x: (..., d) float tensor (the mixer output).
        residual: same shape as ``x``, any float dtype (the layer input Y_k).
        lam: λ, a Python number, a 0-d / (1,) float tensor, or a (batch,) float tensor with
            batch = x.shape[0] > 1 (one λ per batch element, x of at least 2 dims); may require grad.
        weight: optional (d,) scale; bias: optional (d,) shift ("layernorm" only).
        eps: added to the variance ("layernorm"), the mean square ("rmsnorm") or the sum of squares ("l2").
        norm: "layernorm", "rmsnorm" or "l2".
        prenorm: also return ``h = x + lam·residual``.
        residual_in_fp32: return ``h`` in at least float32 (float64 stays float64) instead of x's dtype.
        return_mu: also return μ of ``out`` per batch element; x must then be (..., seqlen, d): the last
            two dims are one element's token matrix, the leading dims are batch.
    Returns:
        ``out`` (x's shape and dtype); then ``h`` if prenorm; then ``mu`` if return_mu, shape x.shape[:-2]
        (0-d for a 2-D x), float32 (float64 when the math runs in float64), computed from ``out`` before
        rounding to x's dtype and detached (μ is a diagnostic, not differentiable).
        A tuple when more than one is returned.

    The math runs in the inputs' dtype promoted to at least float32.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    lam_t = lam if isinstance(lam, torch.Tensor) else None
    dtype = compute_dtype(x, residual, weight, bias, lam_t)
    lam_c = float(lam) if lam_t is None else lam_t.to(dtype).reshape(per_element_shape(x, lam_t))
    h = x.to(dtype) + lam_c * residual.to(dtype)
    out_c = normalize_rows(h, weight, bias, eps, norm)
    results = [out_c.to(x.dtype)]
    if prenorm:
        results.append(h.to(compute_dtype(x) if residual_in_fp32 else x.dtype))
    if return_mu:
        if x.dim() < 2:
            raise ValueError(f"return_mu needs x of shape (..., seqlen, d), got {tuple(x.shape)}")
        results.append(token_mu(out_c.detach()))
    return results[0] if len(results) == 1 else tuple(results)
