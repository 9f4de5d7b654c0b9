"""The Mamba-2 selective scan (SSD) op, drop-in for mamba_ssm's ``mamba_chunk_scan_combined``.

The reference is :func:`lambdaskip.reference.ssd.ssd_scan_chunked`. The Triton path splits the work:

- PyTorch (differentiated by autograd, fused by torch.compile): the step chain
  ``dt ← clamp(softplus?(dt + dt_bias))``, the skip ``+ D·x`` and the gate ``· silu(z)``;
- the custom op ``lambdaskip::ssd_chunk_scan`` (Triton, float32 accumulation): the scan itself,
  ``y_t = C_t·h_t`` with ``h_t = exp(dt_t·A) h_{t−1} + dt_t x_t ⊗ B_t``, and the final state; its
  backward, ``lambdaskip::ssd_chunk_scan_backward``, is Triton too and deterministic (no atomics:
  per-head partial gradients of B and C are summed over each group's heads afterwards).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from lambdaskip.ops._backend import choose_backend
from lambdaskip.ops._checks import check_bool, check_same_device, check_tensor
from lambdaskip.reference.ssd import prepare_dt, ssd_scan_chunked

SUPPORTED_BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_DIM = 128  # the backward kernels hold headdim × dstate whole in one float32 tile


def _check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    return chunk_size


def _check_dt_limit(dt_limit) -> tuple[float, float]:
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        raise TypeError(f"dt_limit must be a pair (low, high), got {dt_limit!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in dt_limit):
        raise TypeError(f"dt_limit must hold two numbers, got {dt_limit!r}")
    low, high = float(dt_limit[0]), float(dt_limit[1])
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"dt_limit must satisfy low <= high, got {dt_limit!r}")
    return low, high


def ssd_scan(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, float("inf")), initial_states=None, return_final_states=False, *, backend="auto"):
    """Mamba-2 selective scan (SSD) with mamba_ssm's ``mamba_chunk_scan_combined`` arguments.

    Per batch element and head, with ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``::

        h_t = exp(dt_t·A)·h_{t−1} + dt_t · x_t ⊗ B_t,   y_t = (h_t·C_t + D·x_t) · silu(z_t)

    Args:
        x: (batch, seqlen, nheads, headdim), float16/bfloat16/float32/float64.
        dt: (batch, seqlen, nheads) steps before ``dt_bias`` / softplus / clamp.
        A: (nheads,) decay rates (the scan is stable for A ≤ 0, as in Mamba-2's ``-exp(A_log)``).
        B, C: (batch, seqlen, ngroups, dstate); nheads divisible by ngroups, head i uses group
            i // (nheads // ngroups).
        chunk_size: power of two ≥ 16; any seqlen works (the last chunk may be partial).
        D: optional (nheads,) or (nheads, headdim) skip weight.
        z: optional (batch, seqlen, nheads, headdim) gate: the output is multiplied by silu(z).
        dt_bias: optional (nheads,) added to dt.
        dt_softplus: apply softplus to dt (after the bias).
        dt_limit: (low, high) clamp of dt, skipped at the default (0, inf).
        initial_states: optional (batch, nheads, headdim, dstate) state before the first token.
        return_final_states: also return the state after the last token.
        backend: "auto" (Triton on CUDA, else the reference), "reference" or "triton" (on CPU only
            under TRITON_INTERPRET=1). Triton takes float16/bfloat16/float32 and headdim, dstate ≤ 128;
            it accumulates in float32. "auto" uses the reference for float64 input.
    Returns:
        ``y`` (batch, seqlen, nheads, headdim) in x's dtype, or ``(y, final_states)`` with final states
        (batch, nheads, headdim, dstate) in x's dtype.
    Raises:
        TypeError / ValueError naming the offending argument; RuntimeError when a forced backend cannot
        run here.
    """
    check_tensor("x", x, ndim=4)
    b, l, h, p = x.shape
    if l < 1 or h < 1 or p < 1 or b < 1:
        raise ValueError(f"x must have non-empty dimensions (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")
    check_tensor("dt", dt, shape=(b, l, h))
    check_tensor("A", A, shape=(h,))
    check_tensor("B", B, ndim=4)
    g, n = B.shape[2], B.shape[3]
    check_tensor("B", B, shape=(b, l, None, None))
    if g < 1 or n < 1:
        raise ValueError(f"B must have ngroups >= 1 and dstate >= 1, got shape {tuple(B.shape)}")
    if h % g:
        raise ValueError(f"B: nheads ({h}) must be divisible by ngroups ({g})")
    check_tensor("C", C, shape=(b, l, g, n))
    _check_chunk_size(chunk_size)
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        if D.shape not in (torch.Size([h]), torch.Size([h, p])):
            raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(b, l, h, p))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(h,))
    check_bool("dt_softplus", dt_softplus)
    dt_limit = _check_dt_limit(dt_limit)
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(b, h, p, n))
    check_bool("return_final_states", return_final_states)
    device = check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                               initial_states=initial_states)

    if backend == "auto" and _triton_limit_broken(x.dtype, p, n) is not None:
        backend = "reference"  # float64, or sizes the kernels do not tile
    chosen = choose_backend("ssd_scan", backend, device, SUPPORTED_BACKENDS)
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states)
    if chosen == "reference":
        y, final = ssd_scan_chunked(*args, return_final_states=True)
    else:
        broken = _triton_limit_broken(x.dtype, p, n)
        if broken is not None:
            raise broken
        y, final = _ssd_scan_triton(*args)
    return (y, final) if return_final_states else y


def _triton_limit_broken(dtype: torch.dtype, headdim: int, dstate: int):
    """The error to raise when the Triton kernels cannot take this input, else None."""
    if dtype not in TRITON_DTYPES:
        return TypeError(f"x: backend='triton' takes float16, bfloat16 or float32, got {dtype}")
    if headdim > TRITON_MAX_DIM:
        return ValueError(f"x: backend='triton' takes headdim <= {TRITON_MAX_DIM}, got {headdim}")
    if dstate > TRITON_MAX_DIM:
        return ValueError(f"B: backend='triton' takes dstate <= {TRITON_MAX_DIM}, got {dstate}")
    return None


def _ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states):
    """The step chain, skip and gate in PyTorch around the Triton scan op (see the module docstring)."""
    dt_eff = prepare_dt(dt.float(), None if dt_bias is None else dt_bias.float(), dt_softplus, dt_limit)
    B, C = (t if t.dtype in TRITON_DTYPES else t.float() for t in (B, C))  # float64 B/C with 16/32-bit x
    y, final = torch.ops.lambdaskip.ssd_chunk_scan(
        x.contiguous(), dt_eff.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(), chunk_size,
        None if initial_states is None else initial_states.contiguous())
    if D is not None:
        y = y + x.float() * (D.float()[:, None] if D.dim() == 1 else D.float())
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return y.to(x.dtype), final.to(x.dtype)


@torch.library.custom_op("lambdaskip::ssd_chunk_scan", mutates_args=())
def ssd_chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int, initial_states: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare scan in Triton: ``y`` (b, l, h, p) and the final state (b, h, p, n), both float32.

    ``dt`` (b, l, h) float32 is the effective step, ``A`` (h,) float32; inputs contiguous.
    """
    from lambdaskip.kernels.ssd import ssd_forward
    return ssd_forward(x, dt, A, B, C, chunk_size, initial_states)


@ssd_chunk_scan.register_fake
def _(x, dt, A, B, C, chunk_size, initial_states):
    b, l, h, p = x.shape
    return x.new_empty((b, l, h, p), dtype=torch.float32), x.new_empty((b, h, p, B.shape[-1]), dtype=torch.float32)


@torch.library.custom_op("lambdaskip::ssd_chunk_scan_backward", mutates_args=())
def ssd_chunk_scan_backward(dy: torch.Tensor, dfinal: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                            A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
                            initial_states: Optional[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor]:
    """Gradients of :func:`ssd_chunk_scan`: (dx, ddt, dA, dB, dC, dinitial_states), each in its input's dtype
    (dinitial_states float32 and zero-sized along batch when there is no initial state)."""
    from lambdaskip.kernels.ssd import ssd_backward
    return ssd_backward(dy, dfinal, x, dt, A, B, C, chunk_size, initial_states)


@ssd_chunk_scan_backward.register_fake
def _(dy, dfinal, x, dt, A, B, C, chunk_size, initial_states):
    b, h, p, n = dfinal.shape
    dh0 = (initial_states.new_empty(initial_states.shape) if initial_states is not None
           else x.new_empty((0, h, p, n), dtype=torch.float32))
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), dh0)


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, chunk_size, initial_states = inputs
    ctx.save_for_backward(x, dt, A, B, C, initial_states)
    ctx.chunk_size = chunk_size


def _backward(ctx, dy, dfinal):
    x, dt, A, B, C, initial_states = ctx.saved_tensors
    b, l, h, p = x.shape
    dy = torch.zeros_like(x, dtype=torch.float32) if dy is None else dy.contiguous()
    dfinal = (x.new_zeros((b, h, p, B.shape[-1]), dtype=torch.float32) if dfinal is None
              else dfinal.contiguous())
    dx, ddt, dA, dB, dC, dh0 = torch.ops.lambdaskip.ssd_chunk_scan_backward(
        dy, dfinal, x, dt, A, B, C, ctx.chunk_size, initial_states)
    return dx, ddt, dA, dB, dC, None, (dh0 if initial_states is not None else None)


ssd_chunk_scan.register_autograd(_backward, setup_context=_setup_context)
