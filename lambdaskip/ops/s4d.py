"""S4D ops: the ZOH convolution kernel (a Vandermonde reduction) and the causal convolution with it.

The references are in :mod:`lambdaskip.reference.s4d`; this module validates input and dispatches by
``backend``: "reference" (plain PyTorch) or "extension" (the C++/CUDA kernels of ``csrc/``, loaded by
:mod:`lambdaskip._extension` on first use). The extension's kernels are wrapped as torch custom ops
``lambdaskip::s4d_*`` with fake implementations and registered autograd, so torch.compile traces
through them without graph breaks. The O(H·N) discretisation (dtA, C') stays in PyTorch either way;
the extension does the O(H·N·L) Vandermonde reduction and the O(B·H·L²) direct convolution.
"""
from __future__ import annotations

import torch

from lambdaskip.common import FLOAT_DTYPES, check_same_device, check_tensor
from lambdaskip.ops._backend import choose_backend
from lambdaskip.reference import s4d as reference

SUPPORTED_BACKENDS = ("reference", "extension")
METHODS = ("auto", "direct", "fft")
# method="auto": direct convolution up to this length, FFT above. Re-measured 2026-12-02 on the shared 2-core
# CPU machine under heavy load (load average 13-14), so in process CPU time, not wall time (torch 2.13, 1
# thread, B=8, H=64; bench/results/cpu-s4d-conv-crossover-cputime, from `OMP_NUM_THREADS=1
# LAMBDASKIP_BENCH_FULL=1 pytest bench/bench_s4d.py -k "conv and not reference and (32 or 64 or 128)"
# --benchmark-timer=time.process_time`). Extension direct vs torch.fft, median (min) ms: forward+backward
# 0.49 (0.34) vs 0.67 (0.37) at L=32, 1.24 (0.68) vs 1.15 (0.56) at L=64, 2.4 (1.8) vs 1.8 (0.94) at
# L=128; forward alone the FFT already wins at L=32, 0.15 (0.13) vs 0.10 (0.09). The crossover for a
# training step (forward+backward) lies between 32 and 64, the threshold stays; the load makes the medians
# noisy (interquartile ranges up to the median itself). Not measured on CUDA yet; the same switch is used.
DIRECT_MAX_LENGTH = 32
PARAM_DTYPES = (torch.float32, torch.float64)
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _check_length(L) -> int:
    if isinstance(L, bool) or not isinstance(L, int):
        raise TypeError(f"L must be an int, got {type(L).__name__}")
    if L < 0:
        raise ValueError(f"L must be >= 0, got {L}")
    return L


def _odd_one_out(values: dict):
    """The name whose value differs from the value every other name shares, else None."""
    for name, value in values.items():
        others = {v for n, v in values.items() if n != name}
        if len(others) == 1 and value not in others:
            return name
    return None


def _check_kernel_params(log_dt, A_re, A_im, C) -> torch.device:
    """Types, ranks, then shapes and dtypes; a mismatch blames the one argument that disagrees with the rest."""
    check_tensor("log_dt", log_dt, ndim=1, dtypes=PARAM_DTYPES)
    check_tensor("A_re", A_re, ndim=2, dtypes=PARAM_DTYPES)
    check_tensor("A_im", A_im, ndim=2, dtypes=PARAM_DTYPES)
    check_tensor("C", C, ndim=2, dtypes=tuple(COMPLEX_OF.values()))
    device = check_same_device(log_dt=log_dt, A_re=A_re, A_im=A_im, C=C)
    real_of = {v: k for k, v in COMPLEX_OF.items()}
    dtypes = {"log_dt": log_dt.dtype, "A_re": A_re.dtype, "A_im": A_im.dtype, "C": real_of[C.dtype]}
    if len(set(dtypes.values())) > 1:
        wrong = _odd_one_out(dtypes)
        listing = ", ".join(f"{n} {str(t).replace('torch.', '')}" for n, t in
                            zip(dtypes, (log_dt.dtype, A_re.dtype, A_im.dtype, C.dtype)))
        raise TypeError(f"{wrong or 'log_dt, A_re, A_im and C'} must match the others' precision: float32 "
                        f"parameters with complex64 C, or float64 with complex128; got {listing}")
    shapes = {"A_re": tuple(A_re.shape), "A_im": tuple(A_im.shape), "C": tuple(C.shape)}
    if len(set(shapes.values())) > 1:
        wrong = _odd_one_out(shapes)
        listing = ", ".join(f"{n} {shape}" for n, shape in shapes.items())
        raise ValueError(f"{wrong or 'A_re, A_im and C'} must have the shape (H, N/2) of the others, got {listing}")
    H, M = A_re.shape
    if log_dt.shape[0] != H:
        raise ValueError(f"log_dt must have shape (H,) with H = {H} channels as in A_re, A_im and C, "
                         f"got {tuple(log_dt.shape)}")
    if H == 0 or M == 0:
        raise ValueError(f"A_re, A_im and C must have H > 0 channels and N/2 > 0 modes, got shape {(H, M)}")
    if not torch.compiler.is_compiling() and bool((A_re > 0).any()):   # one host sync, on a (H, N/2) tensor
        h, n = (int(i) for i in (A_re > 0).nonzero()[0])
        raise ValueError(f"A_re must be <= 0 everywhere (A_re < 0: a decaying mode; exp(dt·A_re·l) overflows "
                         f"for A_re > 0), got A_re[{h}, {n}] = {A_re[h, n].item():.6g}")
    return device


def s4d_kernel(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C: torch.Tensor, L: int, *,
               backend: str = "auto") -> torch.Tensor:
    """The S4D ZOH convolution kernel ``K[h, l] = 2·Re Σ_n C'[h, n]·exp(dtA[h, n]·l)``.

    Args:
        log_dt: (H,) float32/float64.
        A_re: (H, N/2), log_dt's dtype: the real part of A itself, <= 0 (< 0: a decaying, stable mode).
            A positive entry is refused (ValueError): its kernel grows like exp(dt·A_re·l) and overflows.
            The check reads the values (one host sync); it is skipped inside torch.compile.
        A_im: (H, N/2), log_dt's dtype.
        C: (H, N/2), complex64 for float32 parameters, complex128 for float64.
        L: kernel length, >= 0 (L = 0 gives an empty (H, 0) kernel that still carries gradients).
        backend: "auto", "reference" or "extension" (see :mod:`lambdaskip.ops._backend`). The extension
            computes dtA and the phases l·Im(dtA) in float64: at the ~1e5 rad phases of S4D-Inv
            (N=64, L=1024, dt=0.1) its float32 error vs the float64 reference is 1.2e-7, the float32
            reference's 9.2e-7 (the rounded phases hit the high-frequency modes, whose C' is small).
    Returns:
        K: (H, L) in log_dt's dtype; differentiable w.r.t. log_dt, A_re, A_im and C.
    Non-finite input:
        NaN or ±inf in log_dt[h], or in any mode n of A_re/A_im/C[h, n], makes the whole row K[h, :]
        NaN, on every backend. (A_re = A_im = 0, a pure integrator, divides by A = 0: NaN too.)
    Raises:
        TypeError / ValueError naming the argument that disagrees with the others.
    """
    device = _check_kernel_params(log_dt, A_re, A_im, C)
    L = _check_length(L)
    chosen = choose_backend("s4d_kernel", backend, device, SUPPORTED_BACKENDS, _extension_can_run)
    log_dt, A_re, A_im, C = log_dt.contiguous(), A_re.contiguous(), A_im.contiguous(), C.contiguous()
    if chosen == "reference" or L == 0:
        return reference.s4d_kernel(log_dt, A_re, A_im, C, L)
    _, C_prime = reference.s4d_discretize(log_dt, A_re, A_im, C)
    return _vandermonde(log_dt, A_re, A_im, torch.view_as_real(C_prime).contiguous(), L)


def s4d_conv(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None, *, method: str = "auto",
             backend: str = "auto") -> torch.Tensor:
    """Causal depthwise convolution ``y[b, h, t] = Σ_{s≤t} K[h, t−s]·u[b, h, s] + D[h]·u[b, h, t]``.

    Args:
        u: (B, H, L) float16/bfloat16/float32/float64; B and L may be 0 (an empty y that still carries
            gradients to u, K and D), H must be > 0.
        K: (H, L) real float kernel (e.g. from :func:`s4d_kernel`).
        D: optional (H,) real float skip.
        method: "direct" (O(L²) per channel), "fft" (O(L log L), always torch.fft) or "auto" (direct
            for L <= :data:`DIRECT_MAX_LENGTH`, else FFT).
        backend: "auto", "reference" or "extension"; selects the implementation of the direct method.
    Returns:
        y: (B, H, L) in u's dtype (float16/bfloat16 computed in float32).
    Non-finite input:
        NaN or ±inf in u[b, h, s] or K[h, s] makes NaN the outputs it reaches: y[b, h, t ≥ s] with the
        direct method (reference and extension alike), all of y[b, h, :] with the FFT, which mixes every
        position of a channel. NaN in D[h] makes y[:, h, :] NaN.
    """
    check_tensor("u", u, ndim=3, dtypes=FLOAT_DTYPES)
    _, H, L = u.shape
    if H == 0:
        raise ValueError(f"u must have H > 0 channels, got shape {tuple(u.shape)}")
    check_tensor("K", K, shape=(H, L), dtypes=FLOAT_DTYPES)
    if D is not None:
        check_tensor("D", D, shape=(H,), dtypes=FLOAT_DTYPES)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    device = check_same_device(u=u, K=K, D=D)
    u, K = u.contiguous(), K.contiguous()
    D = None if D is None else D.contiguous()
    if u.numel() == 0:  # B = 0 or L = 0: nothing to convolve (and no FFT of length 0)
        choose_backend("s4d_conv", backend, device, SUPPORTED_BACKENDS, _extension_can_run)  # still validated
        return _empty_conv(u, K, D)
    use_fft = method == "fft" or (method == "auto" and L > DIRECT_MAX_LENGTH)
    if use_fft and backend in ("auto", "reference"):  # the FFT path never needs (or builds) the extension
        return reference.s4d_conv_fft(u, K, D)
    chosen = choose_backend("s4d_conv", backend, device, SUPPORTED_BACKENDS, _extension_can_run)
    if use_fft:
        return reference.s4d_conv_fft(u, K, D)
    if chosen == "reference":
        return reference.s4d_conv_direct(u, K, D)
    compute = torch.promote_types(torch.promote_types(u.dtype, K.dtype), torch.float32)
    u_c = u.to(compute)
    y = _causal_conv(u_c, K.to(compute))
    if D is not None:
        y = y + D.to(compute).unsqueeze(-1) * u_c
    return y.to(u.dtype)


def _empty_conv(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """The zero-size (B, H, L) result of a convolution with B = 0 or L = 0, differentiable (zero
    gradients for K and D): ``u·ΣK`` has y's shape and reaches every input."""
    compute = torch.promote_types(torch.promote_types(u.dtype, K.dtype), torch.float32)
    u_c = u.to(compute)
    y = u_c * K.to(compute).sum(-1, keepdim=True)
    if D is not None:
        y = y + D.to(compute).unsqueeze(-1) * u_c
    return y.to(u.dtype)


# ------------------------------------------------------------------ custom ops around the extension
# lambdaskip._extension is imported on first use only: it pulls in torch._dynamo (for
# assume_constant_result), which would add seconds to `import lambdaskip`.
def _extension_can_run(device: torch.device) -> bool:
    from lambdaskip._extension import can_run

    return can_run(device)


def _require_extension() -> None:
    from lambdaskip import _extension

    if not _extension.load():
        raise RuntimeError(f"the S4D extension is unavailable: {_extension.extension_status()}")


@torch.library.custom_op("lambdaskip::s4d_vandermonde", mutates_args=())
def _vandermonde(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C_prime: torch.Tensor,
                 L: int) -> torch.Tensor:
    """K (H, L) from log_dt (H,), A_re/A_im (H, M) and C' as (H, M, 2) real pairs (csrc/s4d.h)."""
    _require_extension()
    return torch.ops.lambdaskip_ext.vandermonde(log_dt, A_re, A_im, C_prime, L)


@_vandermonde.register_fake
def _(log_dt, A_re, A_im, C_prime, L):
    return log_dt.new_empty((log_dt.shape[0], L))


@torch.library.custom_op("lambdaskip::s4d_vandermonde_backward", mutates_args=())
def _vandermonde_backward(grad_K: torch.Tensor, log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor,
                          C_prime: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of C' (H, M, 2), grad of dtA (H, M, 2) as d/dRe, d/dIm pairs) from grad_K (H, L)."""
    _require_extension()
    return torch.ops.lambdaskip_ext.vandermonde_backward(grad_K, log_dt, A_re, A_im, C_prime)


@_vandermonde_backward.register_fake
def _(grad_K, log_dt, A_re, A_im, C_prime):
    return torch.empty_like(C_prime), torch.empty_like(C_prime)


def _vandermonde_setup_context(ctx, inputs, output):
    log_dt, A_re, A_im, C_prime, _ = inputs
    ctx.save_for_backward(log_dt, A_re, A_im, C_prime)


def _vandermonde_grad(ctx, grad_K):
    log_dt, A_re, A_im, C_prime = ctx.saved_tensors
    grad_C_prime, grad_dtA = _vandermonde_backward(grad_K.contiguous(), log_dt, A_re, A_im, C_prime)
    dt = log_dt.exp().unsqueeze(-1)
    grad_x, grad_y = grad_dtA[..., 0], grad_dtA[..., 1]                 # d/d Re(dtA), d/d Im(dtA)
    grad_log_dt = (grad_x * A_re + grad_y * A_im).mul(dt).sum(-1)       # dtA = exp(log_dt)·A
    return grad_log_dt, grad_x * dt, grad_y * dt, grad_C_prime, None


_vandermonde.register_autograd(_vandermonde_grad, setup_context=_vandermonde_setup_context)


@torch.library.custom_op("lambdaskip::s4d_causal_conv", mutates_args=())
def _causal_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """y (B, H, L) = causal convolution of u (B, H, L) with K (H, L), direct; float32/float64."""
    _require_extension()
    return torch.ops.lambdaskip_ext.causal_conv(u, K)


@_causal_conv.register_fake
def _(u, K):
    return torch.empty_like(u)


@torch.library.custom_op("lambdaskip::s4d_causal_conv_backward", mutates_args=())
def _causal_conv_backward(grad_y: torch.Tensor, u: torch.Tensor, K: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_u (B, H, L), grad_K (H, L)) of the direct causal convolution."""
    _require_extension()
    return torch.ops.lambdaskip_ext.causal_conv_backward(grad_y, u, K)


@_causal_conv_backward.register_fake
def _(grad_y, u, K):
    return torch.empty_like(u), torch.empty_like(K)


def _causal_conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _causal_conv_grad(ctx, grad_y):
    u, K = ctx.saved_tensors
    return _causal_conv_backward(grad_y.contiguous(), u, K)


_causal_conv.register_autograd(_causal_conv_grad, setup_context=_causal_conv_setup_context)
