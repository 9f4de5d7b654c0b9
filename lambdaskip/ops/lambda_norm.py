"""The fused λ-residual + norm op: ``out = Norm(x + λ·residual)`` (LayerNorm, RMSNorm or ℓ2).

The reference is :func:`lambdaskip.reference.lambda_norm.lambda_norm`; this module validates input and
dispatches by ``backend``. The Triton path is two custom ops, ``lambdaskip::lambda_norm_fwd`` and
``lambdaskip::lambda_norm_bwd`` (fakes registered, so torch.compile traces through them without a graph
break), on 2-D (rows, d) contiguous views. λ is always a tensor input to them: a Python number becomes a
0-d tensor in the compute dtype (and gets no gradient); a tensor λ gets its gradient dλ = Σ dh·residual,
summed over every row, or, for a (batch,) λ, over each batch element's rows.
μ, the row statistics, and the backward op itself are not differentiable (no double backward).

Non-finite λ: a number is refused. A tensor λ on the CPU is checked too (a cheap host-side reduction); a
CUDA tensor λ is not, since reading it back would synchronise the host with the device on every call, and
neither is any λ while torch.compile traces (a data-dependent branch would break the graph). An unchecked
NaN/inf λ makes the rows it scales NaN on every backend, as in the reference.
"""
from typing import Optional

import torch
from torch import Tensor

from lambdaskip.common import NORMS, check_bool, check_finite_float, check_same_device, check_tensor, compute_dtype
from lambdaskip.ops._backend import choose_backend
from lambdaskip.reference.lambda_norm import lambda_norm as reference_lambda_norm

SUPPORTED_BACKENDS = ("reference", "triton")


@torch.library.custom_op("lambdaskip::lambda_norm_fwd", mutates_args=())
def lambda_norm_fwd(x: Tensor, residual: Tensor, lam: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    eps: float, norm: str, prenorm: bool, residual_in_fp32: bool,
                    group_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton forward on (rows, d) inputs; returns (out, h or (0,), mean or (0,), rstd, mu or (0,)).

    ``lam`` is 0-d / (1,), or (batch,) with batch dividing rows (one λ per rows // batch consecutive rows).
    ``group_rows`` is the number of rows per batch element for μ; 0 skips μ."""
    from lambdaskip.kernels.lambda_norm import lambda_norm_forward
    h_dtype = compute_dtype(x) if residual_in_fp32 else x.dtype
    return lambda_norm_forward(x.contiguous(), residual.contiguous(), lam.contiguous(),
                               None if weight is None else weight.contiguous(),
                               None if bias is None else bias.contiguous(), eps, norm, prenorm, h_dtype, group_rows)


@lambda_norm_fwd.register_fake
def _(x, residual, lam, weight, bias, eps, norm, prenorm, residual_in_fp32, group_rows):
    rows, d = x.shape
    stats = compute_dtype(x, residual, lam, weight, bias)
    h_dtype = compute_dtype(x) if residual_in_fp32 else x.dtype
    return (torch.empty_like(x),
            x.new_empty((rows, d) if prenorm else (0,), dtype=h_dtype),
            x.new_empty((rows,) if norm == "layernorm" else (0,), dtype=stats),
            x.new_empty((rows,), dtype=stats),
            x.new_empty((rows // group_rows,) if group_rows else (0,), dtype=stats))


@torch.library.custom_op("lambdaskip::lambda_norm_bwd", mutates_args=())
def lambda_norm_bwd(dout: Tensor, dh: Optional[Tensor], x: Tensor, residual: Tensor, lam: Tensor,
                    weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                    norm: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward; returns (dx, dresidual, dlam, dweight or (0,), dbias or (0,)).

    Bitwise deterministic: row reductions go through per-program partial sums, no atomics."""
    from lambdaskip.kernels.lambda_norm import lambda_norm_backward
    return lambda_norm_backward(dout.contiguous(), None if dh is None else dh.contiguous(), x.contiguous(),
                                residual.contiguous(), lam.contiguous(),
                                None if weight is None else weight.contiguous(), bias, mean, rstd, norm)


@lambda_norm_bwd.register_fake
def _(dout, dh, x, residual, lam, weight, bias, mean, rstd, norm):
    return (torch.empty_like(x), torch.empty_like(residual), torch.empty_like(lam),
            torch.empty_like(weight) if weight is not None else x.new_empty((0,)),
            torch.empty_like(bias) if bias is not None else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, residual, lam, weight, bias, _eps, norm, prenorm, _fp32, _group_rows = inputs
    _out, _h, mean, rstd, mu = output
    ctx.save_for_backward(x, residual, lam, weight, bias, mean, rstd)
    ctx.norm, ctx.prenorm = norm, prenorm
    ctx.mark_non_differentiable(mean, rstd, mu)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dh, _dmean, _drstd, _dmu):
    x, residual, lam, weight, bias, mean, rstd = ctx.saved_tensors
    dout = torch.zeros_like(x) if dout is None else dout.contiguous()
    dh = dh.contiguous() if ctx.prenorm and dh is not None else None
    dx, dres, dlam, dweight, dbias = lambda_norm_bwd(dout, dh, x, residual, lam, weight, bias, mean, rstd, ctx.norm)
    return (dx, dres, dlam, dweight if weight is not None else None, dbias if bias is not None else None,
            None, None, None, None, None)


lambda_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check_lam(lam, x: Tensor):
    """A finite number, or a float tensor on x's device of shape (), (1,) or (batch,) = x.shape[:1]
    (x with at least 2 dims); a CPU tensor is checked for finiteness (see the module docstring)."""
    if not isinstance(lam, Tensor):
        return check_finite_float("lam", lam)
    check_tensor("lam", lam)
    if lam.shape not in (torch.Size([]), torch.Size([1])) and (x.dim() < 2 or lam.shape != x.shape[:1]):
        raise ValueError(f"lam must be a number, a 0-d / (1,) tensor or one value per batch element, shape "
                         f"(batch,) = {tuple(x.shape[:1])} for x of shape (batch, ..., d) = {tuple(x.shape)}; "
                         f"got shape {tuple(lam.shape)}")
    if lam.device != x.device:
        raise ValueError(f"lam must be on the device of x ({x.device}), got {lam.device}")
    if lam.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.isfinite(lam).all():
        raise ValueError(f"lam must be finite, got {lam.detach().flatten()[:8].tolist()}")
    return lam


def lambda_norm(x: torch.Tensor, residual: torch.Tensor, lam, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, eps: float = 1e-5, *, norm: str = "layernorm",
                prenorm: bool = False, residual_in_fp32: bool = False, return_mu: bool = False,
                backend: str = "auto"):
    """``out = Norm(x + lam·residual)`` over the last dim, fused.

    Args:
        x: (..., d) float16/bfloat16/float32/float64 tensor; the leading dims may be 0 (an empty result
            that still carries gradients; μ of zero tokens is 0), d must be > 0.
        residual: same shape as ``x``, any float dtype.
        lam: λ, a finite Python number or a 0-d / (1,) float tensor, or one λ per batch element: a
            (batch,) float tensor, batch = x.shape[0], x of at least 2 dims; element b's λ scales
            ``residual[b]`` — for (batch, seqlen, d) inputs the seqlen rows of sequence b. A tensor λ may
            require grad and gets a gradient of its own shape (dλ per element for a (batch,) λ).
        weight, bias: optional (d,) affine; ``bias`` only with ``norm="layernorm"``.
        eps: > 0; added to the variance / mean square / sum of squares (see the reference module).
        norm: "layernorm", "rmsnorm" or "l2" (h/sqrt(‖h‖² + eps), the paper's theory norm).
        prenorm: also return the pre-norm sum ``h``.
        residual_in_fp32: ``h`` in at least float32 instead of x's dtype.
        return_mu: also return μ(out) per batch element (x viewed as (..., seqlen, d)); not differentiable.
        backend: "auto", "reference" or "triton" (see :mod:`lambdaskip.ops._backend`).
    Returns:
        ``out`` (x's shape and dtype), then ``h`` if prenorm, then ``mu`` (shape x.shape[:-2], float32 or
        float64) if return_mu; a tuple when more than one.
    Non-finite input:
        Rows are independent: NaN in a row of x or residual makes that row of ``out`` NaN (±inf: at
        least that element; LayerNorm the whole row), and μ of its batch element; NaN in weight[j] or
        bias[j] makes column j NaN. The same on every backend.
    Raises:
        TypeError / ValueError naming the offending argument; RuntimeError for a forced backend that
        cannot run here.
    """
    check_tensor("x", x)
    check_tensor("residual", residual)
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (..., d), got a 0-d tensor")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    d = x.shape[-1]
    if d == 0:
        raise ValueError(f"x must have d > 0 features in its last dim, got shape {tuple(x.shape)}")
    if weight is not None:
        check_tensor("weight", weight, shape=(d,))
    if bias is not None:
        check_tensor("bias", bias, shape=(d,))
    device = check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    lam = _check_lam(lam, x)
    eps = check_finite_float("eps", eps, positive=True)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if bias is not None and norm != "layernorm":
        raise ValueError(f"bias is only supported with norm='layernorm', got norm={norm!r}")
    check_bool("prenorm", prenorm)
    check_bool("residual_in_fp32", residual_in_fp32)
    if check_bool("return_mu", return_mu) and x.dim() < 2:
        raise ValueError(f"return_mu needs x of shape (..., seqlen, d), got {tuple(x.shape)}")

    chosen = choose_backend("lambda_norm", backend, device, SUPPORTED_BACKENDS)
    if chosen == "triton" and x.numel() > 0:
        return _lambda_norm_triton(x, residual, lam, weight, bias, eps, norm, prenorm, residual_in_fp32, return_mu)
    return reference_lambda_norm(x, residual, lam, weight, bias, eps, norm=norm, prenorm=prenorm,
                                 residual_in_fp32=residual_in_fp32, return_mu=return_mu)


def _lambda_norm_triton(x, residual, lam, weight, bias, eps, norm, prenorm, residual_in_fp32, return_mu):
    d = x.shape[-1]
    if not isinstance(lam, Tensor):
        lam = torch.full((), lam, dtype=compute_dtype(x, residual, weight, bias), device=x.device)
    out, h, _mean, _rstd, mu = lambda_norm_fwd(
        x.reshape(-1, d).contiguous(), residual.reshape(-1, d).contiguous(), lam.contiguous(),
        None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
        eps, norm, prenorm, residual_in_fp32, x.shape[-2] if return_mu else 0)
    results = [out.view(x.shape)]
    if prenorm:
        results.append(h.view(x.shape))
    if return_mu:
        results.append(mu.view(x.shape[:-2]))
    return results[0] if len(results) == 1 else tuple(results)
