"""Input builders shared by the S4D tests (tests/test_s4d.py, tests/test_s4d_extension.py)."""
from __future__ import annotations

import torch

from lambdaskip.reference.s4d import s4d_init


def make_params(H: int, N: int, init: str = "inv", seed: int = 0, dtype: torch.dtype = torch.float64,
                dt_max: float = 1e-1, log_dt: float | None = None, device: str | torch.device = "cpu") -> list:
    """[log_dt (H,), A_re (H, N/2), A_im (H, N/2), C (H, N/2) complex] drawn in float64 by ``s4d_init``
    with ``seed``; A_re is perturbed so the modes decay at different rates (the init has all A_re = −1/2);
    ``log_dt`` (a number) replaces the drawn steps. Cast to ``dtype`` (C to the matching complex dtype)."""
    g = torch.Generator().manual_seed(seed)
    params = list(s4d_init(H, N, init, dt_max=dt_max, generator=g, dtype=torch.float64))
    params[1] = params[1] - 0.3 * torch.rand(params[1].shape, generator=g, dtype=torch.float64)
    if log_dt is not None:
        params[0] = torch.full((H,), log_dt, dtype=torch.float64)
    cdtype = torch.complex64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.complex128
    return [p.to(device=device, dtype=cdtype if p.is_complex() else dtype) for p in params]


def conv_loop(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """y[b,h,t] = Σ_{s≤t} K[h,t−s]·u[b,h,s] (+ D[h]·u[b,h,t]) by explicit float64 loops.

    u: (batch, H, L); K: (H, ≥ L); D: optional (H,). Returns (batch, H, L) float64.
    """
    u, K = u.double(), K.double()
    y = torch.zeros_like(u)
    for t in range(u.shape[-1]):
        for s in range(t + 1):
            y[..., t] += K[:, t - s] * u[..., s]
    return y if D is None else y + D.double()[:, None] * u
