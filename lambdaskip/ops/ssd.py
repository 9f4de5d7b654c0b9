"""The Mamba-2 selective scan (SSD) op, a drop-in for mamba_ssm's ``mamba_chunk_scan_combined``.

The reference is :func:`lambdaskip.reference.ssd.ssd_scan_chunked` (the composition of the step
references in :mod:`lambdaskip.reference.ssd_steps`). The Triton path splits the work:

- PyTorch (differentiated by autograd, fused by torch.compile): the step chain
  ``dt ← clamp(softplus?(dt + dt_bias))``, the skip ``+ D·x`` and the gate ``· silu(z)``;
- the custom op ``lambdaskip::ssd_scan_core`` (Triton, float32 accumulation, the steps of
  :mod:`lambdaskip.kernels.ssd`): the scan itself, ``y_t = C_t·h_t`` with
  ``h_t = exp(dt_t·A) h_{t−1} + dt_t x_t ⊗ B_t`` (reset at packed-sequence boundaries), the final state
  and the per-sequence final states; its backward, ``lambdaskip::ssd_scan_core_backward``, is Triton
  too and deterministic (no atomics: per-head partial gradients of B and C are summed over each
  group's heads afterwards).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from lambdaskip.ops._backend import choose_backend
from lambdaskip.ops._checks import check_bool, check_same_device, check_tensor
from lambdaskip.ops.ssd_packed import (check_packed_shapes, check_seq_idx_matches_cu_seqlens, packed_value_flags,
                                       refuse_gradient)
from lambdaskip.reference.ssd import prepare_dt, seq_idx_from_cu_seqlens, ssd_scan_chunked

SUPPORTED_BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_DIM = 256  # headdim and dstate are split into blocks: the sizes compiled, tested and checked for spills
_warned_shapes: set[tuple[int, int]] = set()


def _check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
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


def _check_no_float64_mix(**tensors) -> None:
    """float64 runs only with float64: mixing it with 16/32-bit inputs is refused (half with float32 is fine)."""
    given = {name: t.dtype for name, t in tensors.items() if t is not None}
    wide = [name for name, dtype in given.items() if dtype == torch.float64]
    narrow = [name for name, dtype in given.items() if dtype != torch.float64]
    if wide and narrow:
        raise TypeError(f"{narrow[0]} is {given[narrow[0]]} but {wide[0]} is float64: pass every float input "
                        f"in float64, or none")


def _check_values(A, seq_idx, cu_seqlens, seqlen: int, initial_states) -> None:
    """The checks that read tensor values, gathered into one device synchronisation (skipped while compiling)."""
    if torch.compiler.is_compiling():
        return
    flags = {"A must be < 0 (a decaying state, as Mamba-2's A = -exp(A_log))": ~(A < 0).all(),
             **packed_value_flags(seq_idx, cu_seqlens, seqlen, initial_states)}
    failed = [message for message, bad in zip(flags, torch.stack(list(flags.values())).tolist()) if bad]
    if failed:
        raise ValueError(failed[0] + (f", got A = {A.tolist()}" if failed[0].startswith("A ") else ""))
    if seq_idx is not None and cu_seqlens is not None:
        check_seq_idx_matches_cu_seqlens(seq_idx, cu_seqlens, seqlen)


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
             cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False,
             return_varlen_states=False, *, backend="auto"):
    """Mamba-2 selective scan (SSD) with ``mamba_chunk_scan_combined``'s arguments, order and returns.

    Per batch element and head, with ``dt ← clamp(softplus?(dt + dt_bias), *dt_limit)``::

        h_t = exp(dt_t·A)·h_{t−1} + dt_t · x_t ⊗ B_t,   y_t = (h_t·C_t + D·x_t) · silu(z_t)

    Args:
        x: (batch, seqlen, nheads, headdim), float16/bfloat16/float32/float64. batch and seqlen may be 0
            (an empty y that backpropagates; the final state is then ``initial_states`` or zeros); nheads
            and headdim may not.
        dt: (batch, seqlen, nheads) steps before ``dt_bias`` / softplus / clamp.
        A: (nheads,) decay rates, all < 0 (Mamba-2's ``-exp(A_log)``).
        B, C: (batch, seqlen, ngroups, dstate); nheads divisible by ngroups, head i uses group
            i // (nheads // ngroups).
        chunk_size: any int >= 1 (mamba_ssm uses 256 or 64); any seqlen works (the last chunk may be
            partial). Only speed depends on it.
        D: optional (nheads,) or (nheads, headdim) skip weight.
        z: optional (batch, seqlen, nheads, headdim) gate: the output is multiplied by silu(z).
        dt_bias: optional (nheads,) added to dt.
        initial_states: optional (batch, nheads, headdim, dstate) state before the first token. Packed, it
            seeds only the row's first sequence (every later boundary resets to 0), as in mamba_ssm; each
            row's seq_idx must then start at 0. Its gradient flows back too.
        seq_idx: optional (batch, seqlen) int32/int64, non-decreasing: packed sequences; the state is reset
            wherever it changes. Defaults to the one ``cu_seqlens`` implies (mamba_ssm resets only at
            ``seq_idx``: pass both to match it).
        cu_seqlens: optional (num_seqs + 1,) int32/int64 offsets of packed sequences (batch must be 1):
            0, len_0, len_0 + len_1, …, seqlen.
        dt_softplus: apply softplus to dt (after the bias).
        dt_limit: (low, high) clamp of dt, skipped at the default (0, inf).
        return_final_states: also return the state after the last token.
        return_varlen_states: also return each packed sequence's final state (needs ``cu_seqlens``); the
            first includes the initial state (mamba_ssm drops it when that sequence ends in the first chunk).
            Gradients: differentiable on the reference backend; on Triton, as mamba_ssm's, they carry none,
            and a backward pass that reaches them raises (detached under torch.compile); gradients of ``y``
            and the final states flow.
        backend: keyword only. "auto" (Triton on CUDA, else the reference), "reference" or "triton" (on CPU
            only under TRITON_INTERPRET=1). Triton takes float16/bfloat16/float32 and headdim,
            dstate <= 256 and accumulates in float32; "auto" uses the reference for float64 input, and,
            with a warning naming the shape, for larger heads or states.
    Returns:
        ``y`` (batch, seqlen, nheads, headdim) in x's dtype; with ``return_final_states`` and/or
        ``return_varlen_states`` a tuple ``(y, final_states, varlen_states)`` holding those asked for, in
        that order: final states (batch, nheads, headdim, dstate) and varlen states (num_seqs, nheads,
        headdim, dstate), float32 (float64 for float64 input) as mamba_ssm returns them.
    Non-finite values (NaN in → NaN out): a NaN or ±inf in x, dt or B at token s reaches the outputs it feeds
    from the start of s's chunk on (the chunked form's masked products are 0·NaN) and the final state; in C
    or z, token s only; in D, dt_bias or initial_states, every token. Every backend puts NaN where
    :func:`~lambdaskip.reference.ssd.ssd_scan_chunked` does (A must be finite and < 0).
    Raises:
        TypeError / ValueError naming the offending argument; RuntimeError when a forced backend cannot
        run here.
    """
    check_tensor("x", x, ndim=4)
    b, l, h, p = x.shape
    if h < 1 or p < 1:  # batch and seqlen may be 0 (the empty-tensor rule of lambdaskip.ops)
        raise ValueError(f"x must have nheads > 0 and headdim > 0, got shape {tuple(x.shape)}")
    check_tensor("dt", dt, shape=(b, l, h))
    check_tensor("A", A, shape=(h,))
    check_tensor("B", B, ndim=4)
    g, n = B.shape[2], B.shape[3]
    check_tensor("B", B, shape=(b, l, None, None))
    if g < 1 or n < 1:
        raise ValueError(f"B must have ngroups >= 1 and dstate >= 1, got shape {tuple(B.shape)}")
    if h % g:
        raise ValueError(f"B: nheads ({h}) must be divisible by ngroups ({g})")
    check_tensor("C", C, shape=(b, l, None, None))
    if C.shape != B.shape:  # (ngroups, dstate) are read from B, so either one may be the wrong one
        raise ValueError(f"B and C must have the same (ngroups, dstate), got B {tuple(B.shape)} and "
                         f"C {tuple(C.shape)}")
    _check_chunk_size(chunk_size)
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        if D.shape not in (torch.Size([h]), torch.Size([h, p])):
            raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(b, l, h, p))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(h,))
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(b, h, p, n))
    check_bool("dt_softplus", dt_softplus)
    dt_limit = _check_dt_limit(dt_limit)
    check_bool("return_final_states", return_final_states)
    check_bool("return_varlen_states", return_varlen_states)
    check_packed_shapes(seq_idx, cu_seqlens, b, l, return_varlen_states)
    _check_no_float64_mix(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    device = check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                               initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
    _check_values(A, seq_idx, cu_seqlens, l, initial_states)
    if seq_idx is None and cu_seqlens is not None:
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, l)

    chosen = choose_backend("ssd_scan", backend, device, SUPPORTED_BACKENDS)
    if b == 0 or l == 0:  # no token: nothing to launch
        return _empty_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, return_final_states)
    if chosen == "triton" and backend == "auto" and _triton_limit_broken(x.dtype, p, n) is not None:
        if x.dtype != torch.float64 and (p, n) not in _warned_shapes:
            _warned_shapes.add((p, n))
            warnings.warn(f"ssd_scan: headdim={p}, dstate={n} exceeds the Triton kernels' limit "
                          f"({TRITON_MAX_DIM}); backend='auto' runs the PyTorch reference", stacklevel=2)
        chosen = "reference"
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_limit)
    if chosen == "reference":
        y, final, *varlen = ssd_scan_chunked(*args, return_final_states=True,
                                             return_varlen_states=return_varlen_states)
    else:
        broken = _triton_limit_broken(x.dtype, p, n)
        if broken is not None:
            raise broken
        y, final, *varlen = _ssd_scan_triton(*args, return_varlen_states)
    out = (y,) + ((final,) if return_final_states else ()) + tuple(varlen)
    return out[0] if len(out) == 1 else out


def _empty_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, return_final_states):
    """Batch 0 or seqlen 0: an empty y that reaches every input (zero gradients); the final state is then the
    initial state (or zeros)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    reach = sum(t.sum() for t in (dt, A, B, C, D, z, dt_bias, initial_states) if t is not None)
    y = (x.to(dtype) * reach.to(dtype)).to(x.dtype)
    final = (x.new_zeros((x.shape[0], x.shape[2], x.shape[3], B.shape[-1]), dtype=dtype) if initial_states is None
             else initial_states.to(dtype, copy=True))
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


def _ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
                     dt_limit, return_varlen_states):
    """The step chain, skip and gate in PyTorch around the Triton scan op (see the module docstring)."""
    dt_eff = prepare_dt(dt.float(), None if dt_bias is None else dt_bias.float(), dt_softplus, dt_limit)
    y, final, varlen = torch.ops.lambdaskip.ssd_scan_core(
        x.contiguous(), dt_eff.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(), chunk_size,
        None if initial_states is None else initial_states.contiguous(),
        None if seq_idx is None else seq_idx.to(torch.int32).contiguous(),
        cu_seqlens.to(torch.int32).contiguous() if return_varlen_states else None)
    if D is not None:
        y = y + x.float() * (D.float()[:, None] if D.dim() == 1 else D.float())
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return (y.to(x.dtype), final) + ((refuse_gradient(varlen),) if return_varlen_states else ())


@torch.library.custom_op("lambdaskip::ssd_scan_core", mutates_args=())
def ssd_scan_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  chunk_size: int, initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                  cu_seqlens: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bare scan in Triton: ``y`` (b, l, h, p), the final state (b, h, p, n) and, with ``cu_seqlens``, each
    sequence's final state (num_seqs, h, p, n) (else a (0, h, p, n) tensor); all float32.

    ``dt`` (b, l, h) float32 is the effective step, ``A`` (h,) float32; ``seq_idx`` (b, l) and ``cu_seqlens``
    int32; inputs contiguous.
    """
    from lambdaskip.kernels.ssd import ssd_forward
    return ssd_forward(x, dt, A, B, C, chunk_size, initial_states, seq_idx, cu_seqlens)


@ssd_scan_core.register_fake
def _(x, dt, A, B, C, chunk_size, initial_states, seq_idx, cu_seqlens):
    b, l, h, p = x.shape
    n = B.shape[-1]
    nseqs = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty((b, l, h, p), dtype=torch.float32), x.new_empty((b, h, p, n), dtype=torch.float32),
            x.new_empty((nseqs, h, p, n), dtype=torch.float32))


@torch.library.custom_op("lambdaskip::ssd_scan_core_backward", mutates_args=())
def ssd_scan_core_backward(dy: torch.Tensor, dfinal: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
                           initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor]:
    """Gradients of :func:`ssd_scan_core`'s y and final state: (dx, ddt, dA, dB, dC, dinitial_states), each in
    its input's dtype (dinitial_states float32 and zero-sized along batch when there is no initial state)."""
    from lambdaskip.kernels.ssd import ssd_backward
    return ssd_backward(dy, dfinal, x, dt, A, B, C, chunk_size, initial_states, seq_idx)


@ssd_scan_core_backward.register_fake
def _(dy, dfinal, x, dt, A, B, C, chunk_size, initial_states, seq_idx):
    b, h, p, n = dfinal.shape
    dh0 = (initial_states.new_empty(initial_states.shape) if initial_states is not None
           else x.new_empty((0, h, p, n), dtype=torch.float32))
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), dh0)


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, chunk_size, initial_states, seq_idx, cu_seqlens = inputs
    ctx.save_for_backward(x, dt, A, B, C, initial_states, seq_idx)
    ctx.chunk_size = chunk_size


def _backward(ctx, dy, dfinal, _dvarlen):
    x, dt, A, B, C, initial_states, seq_idx = ctx.saved_tensors
    b, l, h, p = x.shape
    dy = torch.zeros_like(x, dtype=torch.float32) if dy is None else dy.contiguous()
    dfinal = (x.new_zeros((b, h, p, B.shape[-1]), dtype=torch.float32) if dfinal is None
              else dfinal.contiguous())
    dx, ddt, dA, dB, dC, dh0 = torch.ops.lambdaskip.ssd_scan_core_backward(
        dy, dfinal, x, dt, A, B, C, ctx.chunk_size, initial_states, seq_idx)
    return dx, ddt, dA, dB, dC, None, (dh0 if initial_states is not None else None), None, None


ssd_scan_core.register_autograd(_backward, setup_context=_setup_context)
