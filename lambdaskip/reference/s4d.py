"""S4D (diagonal state-space) reference: initialisation, ZOH convolution kernel, causal convolution.

An S4D channel h has N/2 complex modes (the conjugate halves are implicit, hence the factor 2·Re):

    dtA[h, n] = exp(log_dt[h]) · (A_re[h, n] + i·A_im[h, n])          (A_re < 0: stable)
    C'[h, n]  = C[h, n] · (exp(dtA[h, n]) − 1) / A[h, n]                (zero-order hold)
    K[h, l]   = 2·Re Σ_n C'[h, n] · exp(dtA[h, n] · l),   l = 0 … L−1
    y[b, h, t] = Σ_{s ≤ t} K[h, t − s] · u[b, h, s] + D[h] · u[b, h, t]

``A_re`` is stored as the real part itself (a negative number), not as log(−A_re); a module that
wants the positivity constraint by construction parametrises it and passes ``-exp(log_neg_A_re)``.
Every function here is plain PyTorch, differentiable by autograd and float64-capable: the
specification that :mod:`lambdaskip.ops.s4d` and the C++/CUDA extension are tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

INITS = ("inv", "lin")

# Modes per step of the memory-lean kernel: temporaries are (H, MODES_PER_STEP, L), i.e. O(H·L).
MODES_PER_STEP = 8


def _complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def s4d_init(H: int, N: int, init: str = "inv", dt_min: float = 1e-3, dt_max: float = 1e-1,
             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
    """Parameters of ``H`` S4D channels with state size ``N`` (N/2 complex modes each).

    Args:
        H: number of channels (> 0).
        N: state size, even and > 0.
        init: "inv" (S4D-Inv: A = −1/2 + i·(N/π)·(N/(2n+1) − 1)) or "lin" (S4D-Lin: A = −1/2 + iπn).
        dt_min, dt_max: log_dt is drawn uniformly in [log dt_min, log dt_max] (0 < dt_min ≤ dt_max).
        generator: optional torch.Generator for log_dt and C.
        dtype: float32 or float64 (C gets the matching complex dtype).
    Returns:
        ``(log_dt (H,), A_re (H, N/2), A_im (H, N/2), C (H, N/2) complex)``; A_re = −1/2 everywhere
        (the real part itself, not its log), C ~ complex standard normal.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if H <= 0 or N <= 0 or N % 2:
        raise ValueError(f"H must be > 0 and N even and > 0, got H={H}, N={N}")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    else:
        imag = (N / math.pi) * (N / (2 * n + 1) - 1)
    A_re = torch.full((H, N // 2), -0.5, dtype=dtype)
    A_im = imag.to(dtype).expand(H, N // 2).clone()
    u = torch.rand(H, dtype=torch.float64, generator=generator)
    log_dt = (math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))).to(dtype)
    C = torch.randn(H, N // 2, dtype=_complex_dtype(dtype), generator=generator)
    return log_dt, A_re, A_im, C


def complex_expm1(z: torch.Tensor) -> torch.Tensor:
    """``exp(z) − 1`` for complex z without the cancellation of the naive form when |z| ≪ 1.

    (``exp(x+iy) − 1 = expm1(x)·cos y − 2 sin²(y/2) + i·exp(x)·sin y``; torch.expm1 is real-only.)
    """
    x, y = z.real, z.imag
    return torch.complex(torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2, torch.exp(x) * torch.sin(y))


def s4d_discretize(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C: torch.Tensor):
    """ZOH discretisation: returns ``(dtA, C')``, both complex (H, N/2), as in the module docstring."""
    A = torch.complex(A_re, A_im)
    dtA = log_dt.exp().unsqueeze(-1) * A
    return dtA, C * complex_expm1(dtA) / A


def s4d_kernel_naive(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C: torch.Tensor,
                     L: int) -> torch.Tensor:
    """The S4D kernel through the full (H, N/2, L) Vandermonde matrix (the spec, O(H·N·L) memory).

    Args:
        log_dt: (H,) float32/float64. A_re, A_im: (H, N/2), same dtype. C: (H, N/2) complex.
        L: kernel length (> 0).
    Returns:
        K: (H, L) in log_dt's dtype.
    """
    dtA, C_prime = s4d_discretize(log_dt, A_re, A_im, C)
    l = torch.arange(L, device=log_dt.device, dtype=log_dt.dtype)
    vandermonde = torch.exp(dtA.unsqueeze(-1) * l)                       # (H, N/2, L)
    return 2 * torch.einsum("hn,hnl->hl", C_prime, vandermonde).real


def s4d_kernel(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C: torch.Tensor,
               L: int) -> torch.Tensor:
    """The same kernel as :func:`s4d_kernel_naive` with O(H·(N + L)) memory.

    Sums over the modes :data:`MODES_PER_STEP` at a time, so no (H, N/2, L) tensor is ever built.
    Returns K: (H, L) in log_dt's dtype.
    """
    dtA, C_prime = s4d_discretize(log_dt, A_re, A_im, C)
    l = torch.arange(L, device=log_dt.device, dtype=log_dt.dtype)
    K = None
    for start in range(0, dtA.shape[-1], MODES_PER_STEP):
        modes = slice(start, start + MODES_PER_STEP)
        part = torch.einsum("hn,hnl->hl", C_prime[:, modes], torch.exp(dtA[:, modes, None] * l)).real
        K = part if K is None else K + part
    return 2 * K


def _with_skip(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    return y if D is None else y + D.unsqueeze(-1) * u


def s4d_conv_fft(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution by FFT of length 2L (no wrap-around).

    Args:
        u: (B, H, L) input. K: (H, L) kernel. D: optional (H,) skip.
    Returns:
        y: (B, H, L), ``y[t] = Σ_{s≤t} K[t−s]·u[s] + D·u[t]``, in u's dtype (float16/bfloat16 are
        computed in float32).
    """
    L = u.shape[-1]
    compute = torch.promote_types(torch.promote_types(u.dtype, K.dtype), torch.float32)
    y = torch.fft.irfft(torch.fft.rfft(u.to(compute), n=2 * L) * torch.fft.rfft(K.to(compute), n=2 * L),
                        n=2 * L)[..., :L]
    return _with_skip(y, u.to(compute), None if D is None else D.to(compute)).to(u.dtype)


def s4d_conv_direct(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution computed directly (O(B·H·L²)) as a depthwise conv1d with left padding.

    Same arguments and result as :func:`s4d_conv_fft`. A non-finite K[h, j] reaches y[..., h, t ≥ j]
    only, as the formula says (outside torch.compile; see :func:`_exact_non_finite_taps`).
    """
    L = u.shape[-1]
    compute = torch.promote_types(torch.promote_types(u.dtype, K.dtype), torch.float32)
    u_c, K_c = u.to(compute), K.to(compute)
    y = F.conv1d(F.pad(u_c, (L - 1, 0)), K_c.flip(-1).unsqueeze(1), groups=u.shape[1])  # cross-correlation
    if not torch.compiler.is_compiling():
        y = _exact_non_finite_taps(y, u_c, K_c)
    return _with_skip(y, u_c, None if D is None else D.to(compute)).to(u.dtype)


def _exact_non_finite_taps(y: torch.Tensor, u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """conv1d also multiplies each tap K[h, j] by the zero padding, so a NaN tap (0·NaN) reaches
    y[..., h, t < j] as well. Where K has non-finite taps, recompute y from the finite taps plus the
    non-finite ones at the positions the formula puts them. Reads K's values (one host sync)."""
    bad = ~torch.isfinite(K)
    if not bad.any():
        return y
    L = u.shape[-1]
    y = F.conv1d(F.pad(u, (L - 1, 0)), K.masked_fill(bad, 0).flip(-1).unsqueeze(1), groups=u.shape[1])
    for h, j in bad.nonzero().tolist():
        y[:, h, j:] = y[:, h, j:] + K[h, j] * u[:, h, :L - j]
    return y


def s4d_recurrence(u: torch.Tensor, log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The S4D layer as a ZOH recurrence over time (the state-space view; O(L) sequential steps).

    ``x_t = exp(dtA)·x_{t−1} + ((exp(dtA) − 1)/A)·u_t``,  ``y_t = 2·Re(Σ_n C·x_t) + D·u_t``, x_{−1} = 0.
    Equal to ``s4d_conv_*(u, s4d_kernel(...), D)``.

    Args:
        u: (B, H, L) real. log_dt, A_re, A_im, C, D: as in :func:`s4d_kernel_naive` / :func:`s4d_conv_fft`.
    Returns:
        y: (B, H, L) in u's dtype.
    """
    A = torch.complex(A_re, A_im)
    dtA = log_dt.exp().unsqueeze(-1) * A
    decay = torch.exp(dtA)
    B_bar = complex_expm1(dtA) / A
    x = torch.zeros(u.shape[0], *A.shape, dtype=A.dtype, device=u.device)
    ys = []
    for t in range(u.shape[-1]):
        x = decay * x + B_bar * u[..., t, None]
        ys.append(2 * (C * x).sum(-1).real)
    y = torch.stack(ys, dim=-1)
    return _with_skip(y, u, D).to(u.dtype)
