"""One decode step of the Mamba-2 scan: ``h ← exp(dt·A)·h + dt·x ⊗ B``, ``y = (h·C + D·x)·silu(z)``, in place.

The reference is :func:`lambdaskip.reference.ssd_step.ssd_step`. One program per (block of ``BLOCK_P``
headdim rows, batch, head) holds its rows of the state whole along dstate (``BLOCK_N`` = dstate rounded
up to a power of two, ≤ 256): it loads them, updates them in float32, writes them back in the state's
dtype and reduces them against C for y. The step ``dt`` is prepared in the kernel (bias, softplus, clamp),
so one launch is the whole token. The step is memory-bound: it reads and writes the state once.

Autotuning times the kernel by running it, which would advance the state once per trial, so the tuner
restores the state buffer between trials (``restore_value``).
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_ssd_step_kernel"),
                 key=["headdim", "BLOCK_N"], restore_value=["state_ptr"])
@triton.jit
def _ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, y_ptr,
                     nheads, ngroups, headdim, dstate, dt_low, dt_high,
                     HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, DT_CLAMP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    group = head // (nheads // ngroups)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    row = batch * nheads + head

    dt = tl.load(dt_ptr + row).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + head).to(tl.float32)
    if DT_SOFTPLUS:  # max(dt, 0) + log1p(exp(−|dt|)), log1p by Kahan's trick (no libdevice on the interpreter)
        u = tl.exp(-tl.abs(dt))
        w = 1.0 + u
        log1p_u = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
        dt = tl.maximum(dt, 0.0) + log1p_u
    if DT_CLAMP:
        dt = tl.minimum(tl.maximum(dt, dt_low), dt_high)
    decay = tl.exp(dt * tl.load(A_ptr + head).to(tl.float32))

    x = tl.load(x_ptr + row * headdim + offs_p, mask=p_ok, other=0.0).to(tl.float32)
    bc_offset = (batch * ngroups + group) * dstate + offs_n
    B = tl.load(B_ptr + bc_offset, mask=n_ok, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + bc_offset, mask=n_ok, other=0.0).to(tl.float32)
    state_ptrs = state_ptr + row * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
    tile_ok = p_ok[:, None] & n_ok[None, :]
    state = tl.load(state_ptrs, mask=tile_ok, other=0.0).to(tl.float32)
    state = state * decay + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=tile_ok)

    y = tl.sum(state * C[None, :], axis=1)
    if HAS_D:
        if D_PER_CHANNEL:
            y += x * tl.load(D_ptr + head * headdim + offs_p, mask=p_ok, other=0.0).to(tl.float32)
        else:
            y += x * tl.load(D_ptr + head).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * headdim + offs_p, mask=p_ok, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + row * headdim + offs_p, y.to(y_ptr.dtype.element_ty), mask=p_ok)


def ssd_step_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
                    dt_softplus: bool, dt_limit: tuple[float, float]) -> torch.Tensor:
    """Advance ``state`` (b, h, p, n) by one token in place and return y (b, h, p) in x's dtype.

    Inputs contiguous and validated by :func:`lambdaskip.ops.ssd_step.ssd_step`: x, z (b, h, p); dt (b, h);
    A, dt_bias (h,); B, C (b, g, n); D (h,) or (h, p); dstate ≤ 256.
    """
    b, h, p, n = state.shape
    g = B.shape[1]
    y = torch.empty_like(x)
    clamp = tuple(dt_limit) != (0.0, float("inf"))
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_P"]), b, h)  # noqa: E731
    _ssd_step_kernel[grid](state, x, dt, A, B, C, D, z, dt_bias, y, h, g, p, n, float(dt_limit[0]),
                           float(dt_limit[1]) if clamp else 0.0,
                           HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
                           HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, DT_CLAMP=clamp,
                           BLOCK_N=max(16, triton.next_power_of_2(n)))
    return y
