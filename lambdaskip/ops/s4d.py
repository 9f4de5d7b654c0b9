"""S4D ops: the ZOH convolution kernel (a Vandermonde reduction) and the causal convolution with it.

The references are in :mod:`lambdaskip.reference.s4d`; this module validates input and dispatches by
``backend``.
"""
from __future__ import annotations

import torch

from lambdaskip.ops._backend import choose_backend
from lambdaskip.ops._checks import FLOAT_DTYPES, check_same_device, check_tensor
from lambdaskip.reference import s4d as reference

SUPPORTED_BACKENDS = ("reference",)
METHODS = ("auto", "direct", "fft")
PARAM_DTYPES = (torch.float32, torch.float64)
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _check_length(L) -> int:
    if isinstance(L, bool) or not isinstance(L, int):
        raise TypeError(f"L must be an int, got {type(L).__name__}")
    if L <= 0:
        raise ValueError(f"L must be > 0, got {L}")
    return L


def _check_kernel_params(log_dt, A_re, A_im, C) -> torch.device:
    check_tensor("log_dt", log_dt, ndim=1, dtypes=PARAM_DTYPES)
    H = log_dt.shape[0]
    check_tensor("A_re", A_re, ndim=2, dtypes=PARAM_DTYPES)
    M = A_re.shape[1]
    if A_re.shape[0] != H:
        raise ValueError(f"A_re must have shape (H, N/2) with H = len(log_dt) = {H}, got {tuple(A_re.shape)}")
    check_tensor("A_im", A_im, shape=(H, M), dtypes=PARAM_DTYPES)
    check_tensor("C", C, shape=(H, M), dtypes=tuple(COMPLEX_OF.values()))
    for name, t in (("A_re", A_re), ("A_im", A_im)):
        if t.dtype != log_dt.dtype:
            raise TypeError(f"{name} must have log_dt's dtype {log_dt.dtype}, got {t.dtype}")
    if C.dtype != COMPLEX_OF[log_dt.dtype]:
        raise TypeError(f"C must be {COMPLEX_OF[log_dt.dtype]} to match log_dt's {log_dt.dtype}, got {C.dtype}")
    if M == 0:
        raise ValueError("A_re, A_im and C must have at least one mode (N/2 > 0), got 0")
    return check_same_device(log_dt=log_dt, A_re=A_re, A_im=A_im, C=C)


def s4d_kernel(log_dt: torch.Tensor, A_re: torch.Tensor, A_im: torch.Tensor, C: torch.Tensor, L: int, *,
               backend: str = "auto") -> torch.Tensor:
    """The S4D ZOH convolution kernel ``K[h, l] = 2·Re Σ_n C'[h, n]·exp(dtA[h, n]·l)``.

    Args:
        log_dt: (H,) float32/float64.
        A_re: (H, N/2), log_dt's dtype: the real part of A itself (< 0 for a stable channel).
        A_im: (H, N/2), log_dt's dtype.
        C: (H, N/2), complex64 for float32 parameters, complex128 for float64.
        L: kernel length, > 0.
        backend: "auto" or "reference" (see :mod:`lambdaskip.ops._backend`).
    Returns:
        K: (H, L) in log_dt's dtype; differentiable w.r.t. log_dt, A_re, A_im and C.
    """
    device = _check_kernel_params(log_dt, A_re, A_im, C)
    L = _check_length(L)
    choose_backend("s4d_kernel", backend, device, SUPPORTED_BACKENDS)
    return reference.s4d_kernel(log_dt.contiguous(), A_re.contiguous(), A_im.contiguous(), C.contiguous(), L)


def s4d_conv(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None, *, method: str = "auto",
             backend: str = "auto") -> torch.Tensor:
    """Causal depthwise convolution ``y[b, h, t] = Σ_{s≤t} K[h, t−s]·u[b, h, s] + D[h]·u[b, h, t]``.

    Args:
        u: (B, H, L) float16/bfloat16/float32/float64.
        K: (H, L) real float kernel (e.g. from :func:`s4d_kernel`).
        D: optional (H,) real float skip.
        method: "direct" (O(L²) per channel), "fft" (O(L log L)) or "auto" (direct for short L).
        backend: "auto" or "reference".
    Returns:
        y: (B, H, L) in u's dtype (float16/bfloat16 computed in float32).
    """
    check_tensor("u", u, ndim=3, dtypes=FLOAT_DTYPES)
    Bsz, H, L = u.shape
    if L == 0:
        raise ValueError(f"u must have sequence length L > 0, got shape {tuple(u.shape)}")
    check_tensor("K", K, shape=(H, L), dtypes=FLOAT_DTYPES)
    if D is not None:
        check_tensor("D", D, shape=(H,), dtypes=FLOAT_DTYPES)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    device = check_same_device(u=u, K=K, D=D)
    choose_backend("s4d_conv", backend, device, SUPPORTED_BACKENDS)
    u, K = u.contiguous(), K.contiguous()
    D = None if D is None else D.contiguous()
    if method == "fft" or (method == "auto" and L > 256):
        return reference.s4d_conv_fft(u, K, D)
    return reference.s4d_conv_direct(u, K, D)
