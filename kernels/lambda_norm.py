"""Triton kernels for ``out = Norm(x + λ·residual)`` (LayerNorm / RMSNorm / ℓ2) and its backward.

Rows are tokens: inputs are 2-D (n_rows, d) and contiguous. Each program owns a contiguous range of
rows (``rows_per_program``). A row of up to ``max_block_d`` columns is held in registers (one pass);
longer rows are processed in chunks of ``CHUNK_D`` columns ("looped" kernels: statistics pass(es),
then the output pass, re-reading the row, which is then mostly in L2).

Forward: writes ``out``, optionally ``h = x + λ·residual``, the row statistics (mean for LayerNorm,
rstd) for the backward, and for μ per-program partial statistics of ``out`` over the program's rows
(Welford: the column mean and the sum of squared deviations from it). :func:`finish_mu` combines the
partials of one batch element with Chan's formula, μ² = Σ_p M2_p + Σ_p n_p‖m_p − m‖². Neither step
subtracts two large sums, so μ keeps its relative accuracy (about rows_per_program·u for Welford plus
the final sums) even when the tokens have nearly collapsed (μ ≪ ‖out‖_F) — the regime μ exists to
detect. The naive Σ‖y_i‖² − N‖ȳ‖² would lose all digits there.

Backward: per row, dh = rstd·(g − x̂·c₁ − c₀) with g = dout·weight, x̂ the normalised row,
c₁ = Σ g·x̂ / D (LayerNorm, RMSNorm) or Σ g·x̂ (ℓ2), c₀ = Σ g / D (LayerNorm only), plus the gradient
of the pre-norm output h. dx = dh, dresidual = λ·dh. dweight, dbias and dλ = Σ dh·residual are summed
per program into partial buffers, then over programs by :func:`torch.sum` — no atomics, so the
backward is bitwise deterministic for a given shape, dtype and device.

λ is one value (loaded once per program) or, with ``LAM_PER_ELEMENT``, one value per batch element:
row r uses ``λ[r // lam_rows]`` (``lam_rows`` rows per element; one scalar load per row, a compile-time
switch, so the one-λ kernels are unchanged). Then dλ is reduced per row into a partial buffer (one float
per row) and summed per element by :func:`torch.sum`, still without atomics.

Math runs in float32 (float64 when any input is float64). Norm codes: 0 LayerNorm, 1 RMSNorm, 2 ℓ2.

Long file: one op's forward and backward kernels (one-pass and looped) and their launchers belong
together (the layout's one-op-one-file rule); splitting them would separate kernels that share the row
statistics' layout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lambdaskip.common import compute_dtype

NORM_CODES = {"layernorm": 0, "rmsnorm": 1, "l2": 2}
MAX_FUSED_D = 4096  # 8192-column rows at 16 warps spill on sm_90 (bench/results/sm90-static): looped past 4096
CHUNK_D = 2048


@triton.jit
def _program_rows(n_rows, group_rows, programs_per_group, rows_per_program):
    """(program id, first row, row count) of this program; programs never straddle a group of rows."""
    pid = tl.program_id(0)
    group = pid // programs_per_group
    row_start = group * group_rows + (pid % programs_per_group) * rows_per_program
    row_end = tl.minimum(tl.minimum(row_start + rows_per_program, (group + 1) * group_rows), n_rows)
    return pid, row_start, row_end - row_start


# Helpers are written inline below (h = x + λ·r, the affine, the backward row terms): under Triton's
# CPU interpreter every nested @triton.jit call costs milliseconds, which the CPU tests pay per row.

@triton.jit
def _forward_fused_kernel(X, RES, LAM, W, B, OUT, H, MEAN, RSTD, PART_MEAN, PART_M2,
                          n_rows, D, eps, group_rows, programs_per_group, rows_per_program, lam_rows,
                          NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          STORE_H: tl.constexpr, WANT_MU: tl.constexpr, LAM_PER_ELEMENT: tl.constexpr,
                          COMPUTE: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: ``rows_per_program`` rows of at most BLOCK_D columns, each in one pass."""
    pid, row_start, n_own = _program_rows(n_rows, group_rows, programs_per_group, rows_per_program)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    lam = tl.load(LAM).to(COMPUTE)
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE) if HAS_WEIGHT else 1.0
    b = tl.load(B + cols, mask=mask, other=0.0).to(COMPUTE) if HAS_BIAS else 0.0
    base = row_start.to(tl.int64) * D
    mu_mean = tl.zeros([BLOCK_D], COMPUTE)
    mu_m2 = tl.zeros([BLOCK_D], COMPUTE)
    for i in range(0, n_own):
        lam_r = tl.load(LAM + (row_start + i) // lam_rows).to(COMPUTE) if LAM_PER_ELEMENT else lam
        offs = base + i * D + cols
        h = (tl.load(X + offs, mask=mask, other=0.0).to(COMPUTE)
             + lam_r * tl.load(RES + offs, mask=mask, other=0.0).to(COMPUTE))
        if STORE_H:
            tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)
        if NORM == 0:
            mean = tl.sum(h, axis=0) / D
            centered = tl.where(mask, h - mean, 0.0)
            rstd = tl.rsqrt(tl.sum(centered * centered, axis=0) / D + eps)
            xhat = centered * rstd
            tl.store(MEAN + row_start + i, mean)
        elif NORM == 1:
            rstd = tl.rsqrt(tl.sum(h * h, axis=0) / D + eps)
            xhat = h * rstd
        else:
            rstd = tl.rsqrt(tl.sum(h * h, axis=0) + eps)
            xhat = h * rstd
        tl.store(RSTD + row_start + i, rstd)
        y = tl.where(mask, xhat * w + b, 0.0)
        tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)
        if WANT_MU:
            delta = y - mu_mean
            mu_mean += delta / (i + 1)
            mu_m2 += delta * (y - mu_mean)
    if WANT_MU:
        tl.store(PART_MEAN + pid.to(tl.int64) * D + cols, mu_mean, mask=mask)
        tl.store(PART_M2 + pid, tl.sum(mu_m2, axis=0))


@triton.jit
def _forward_looped_kernel(X, RES, LAM, W, B, OUT, H, MEAN, RSTD, PART_MEAN, PART_M2,
                           n_rows, D, eps, group_rows, programs_per_group, rows_per_program, lam_rows,
                           NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           STORE_H: tl.constexpr, WANT_MU: tl.constexpr, LAM_PER_ELEMENT: tl.constexpr,
                           COMPUTE: tl.constexpr, BLOCK_D: tl.constexpr):
    """As the fused kernel for rows longer than a block: statistics pass(es), then the output pass.

    The running μ column mean lives in this program's PART_MEAN row (read-modify-write per chunk)."""
    pid, row_start, n_own = _program_rows(n_rows, group_rows, programs_per_group, rows_per_program)
    cols0 = tl.arange(0, BLOCK_D)
    lam = tl.load(LAM).to(COMPUTE)
    base = row_start.to(tl.int64) * D
    part = PART_MEAN + pid.to(tl.int64) * D
    mu_m2 = tl.zeros([BLOCK_D], COMPUTE)
    if WANT_MU:
        for start in range(0, D, BLOCK_D):
            tl.store(part + start + cols0, tl.zeros([BLOCK_D], COMPUTE), mask=start + cols0 < D)
    for i in range(0, n_own):
        lam_r = tl.load(LAM + (row_start + i) // lam_rows).to(COMPUTE) if LAM_PER_ELEMENT else lam
        row = base + i * D
        acc = tl.zeros([BLOCK_D], COMPUTE)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            mask = cols < D
            h = (tl.load(X + row + cols, mask=mask, other=0.0).to(COMPUTE)
                 + lam_r * tl.load(RES + row + cols, mask=mask, other=0.0).to(COMPUTE))
            acc += h if NORM == 0 else h * h
        if NORM == 0:
            mean = tl.sum(acc, axis=0) / D
            acc = tl.zeros([BLOCK_D], COMPUTE)
            for start in range(0, D, BLOCK_D):
                cols = start + cols0
                mask = cols < D
                h = (tl.load(X + row + cols, mask=mask, other=0.0).to(COMPUTE)
                     + lam_r * tl.load(RES + row + cols, mask=mask, other=0.0).to(COMPUTE))
                centered = tl.where(mask, h - mean, 0.0)
                acc += centered * centered
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / D + eps)
            tl.store(MEAN + row_start + i, mean)
        elif NORM == 1:
            mean = 0.0
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / D + eps)
        else:
            mean = 0.0
            rstd = tl.rsqrt(tl.sum(acc, axis=0) + eps)
        tl.store(RSTD + row_start + i, rstd)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            mask = cols < D
            h = (tl.load(X + row + cols, mask=mask, other=0.0).to(COMPUTE)
                 + lam_r * tl.load(RES + row + cols, mask=mask, other=0.0).to(COMPUTE))
            if STORE_H:
                tl.store(H + row + cols, h.to(H.dtype.element_ty), mask=mask)
            y = (h - mean) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
            if HAS_BIAS:
                y = y + tl.load(B + cols, mask=mask, other=0.0).to(COMPUTE)
            y = tl.where(mask, y, 0.0)
            tl.store(OUT + row + cols, y.to(OUT.dtype.element_ty), mask=mask)
            if WANT_MU:
                mu_mean = tl.load(part + cols, mask=mask, other=0.0)
                delta = y - mu_mean
                mu_mean += delta / (i + 1)
                mu_m2 += delta * (y - mu_mean)
                tl.store(part + cols, mu_mean, mask=mask)
    if WANT_MU:
        tl.store(PART_M2 + pid, tl.sum(mu_m2, axis=0))


@triton.jit
def _backward_fused_kernel(DOUT, DH_IN, X, RES, LAM, W, MEAN, RSTD, DX, DRES, PART_DW, PART_DB, PART_DLAM,
                           n_rows, D, rows_per_program, lam_rows,
                           NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           HAS_DH: tl.constexpr, LAM_PER_ELEMENT: tl.constexpr, COMPUTE: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """One program: ``rows_per_program`` rows of at most BLOCK_D columns; partial dW, dB, dλ per program."""
    pid, row_start, n_own = _program_rows(n_rows, n_rows, tl.cdiv(n_rows, rows_per_program), rows_per_program)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    lam = tl.load(LAM).to(COMPUTE)
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE) if HAS_WEIGHT else 1.0
    base = row_start.to(tl.int64) * D
    dw = tl.zeros([BLOCK_D], COMPUTE)
    db = tl.zeros([BLOCK_D], COMPUTE)
    dlam = tl.zeros([BLOCK_D], COMPUTE)
    for i in range(0, n_own):
        lam_r = tl.load(LAM + (row_start + i) // lam_rows).to(COMPUTE) if LAM_PER_ELEMENT else lam
        offs = base + i * D + cols
        r = tl.load(RES + offs, mask=mask, other=0.0).to(COMPUTE)
        h = tl.load(X + offs, mask=mask, other=0.0).to(COMPUTE) + lam_r * r
        mean = tl.load(MEAN + row_start + i).to(COMPUTE) if NORM == 0 else 0.0
        rstd = tl.load(RSTD + row_start + i).to(COMPUTE)
        dy = tl.load(DOUT + offs, mask=mask, other=0.0).to(COMPUTE)
        xhat = tl.where(mask, h - mean, 0.0) * rstd
        g = dy * w
        c1 = tl.sum(g * xhat, axis=0) if NORM == 2 else tl.sum(g * xhat, axis=0) / D
        c0 = tl.sum(g, axis=0) / D if NORM == 0 else 0.0
        dh = (g - xhat * c1 - c0) * rstd
        if HAS_DH:
            dh += tl.load(DH_IN + offs, mask=mask, other=0.0).to(COMPUTE)
        tl.store(DX + offs, dh.to(DX.dtype.element_ty), mask=mask)
        tl.store(DRES + offs, (lam_r * dh).to(DRES.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
        if LAM_PER_ELEMENT:
            tl.store(PART_DLAM + row_start + i, tl.sum(dh * r, axis=0))
        else:
            dlam += dh * r
    part = pid.to(tl.int64) * D + cols
    if HAS_WEIGHT:
        tl.store(PART_DW + part, dw, mask=mask)
    if HAS_BIAS:
        tl.store(PART_DB + part, db, mask=mask)
    if not LAM_PER_ELEMENT:
        tl.store(PART_DLAM + pid, tl.sum(dlam, axis=0))


@triton.jit
def _backward_looped_kernel(DOUT, DH_IN, X, RES, LAM, W, MEAN, RSTD, DX, DRES, PART_DW, PART_DB, PART_DLAM,
                            n_rows, D, rows_per_program, lam_rows,
                            NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                            HAS_DH: tl.constexpr, LAM_PER_ELEMENT: tl.constexpr, COMPUTE: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    """As the fused backward for long rows: a pass for c₀, c₁, then the gradient pass.

    The partial dW / dB live in this program's PART_DW / PART_DB rows (read-modify-write per chunk)."""
    pid, row_start, n_own = _program_rows(n_rows, n_rows, tl.cdiv(n_rows, rows_per_program), rows_per_program)
    cols0 = tl.arange(0, BLOCK_D)
    lam = tl.load(LAM).to(COMPUTE)
    base = row_start.to(tl.int64) * D
    part = pid.to(tl.int64) * D
    for start in range(0, D, BLOCK_D):
        zero_mask = start + cols0 < D
        if HAS_WEIGHT:
            tl.store(PART_DW + part + start + cols0, tl.zeros([BLOCK_D], COMPUTE), mask=zero_mask)
        if HAS_BIAS:
            tl.store(PART_DB + part + start + cols0, tl.zeros([BLOCK_D], COMPUTE), mask=zero_mask)
    dlam = tl.zeros([BLOCK_D], COMPUTE)
    for i in range(0, n_own):
        lam_r = tl.load(LAM + (row_start + i) // lam_rows).to(COMPUTE) if LAM_PER_ELEMENT else lam
        row = base + i * D
        mean = tl.load(MEAN + row_start + i).to(COMPUTE) if NORM == 0 else 0.0
        rstd = tl.load(RSTD + row_start + i).to(COMPUTE)
        acc_gxhat = tl.zeros([BLOCK_D], COMPUTE)
        acc_g = tl.zeros([BLOCK_D], COMPUTE)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            mask = cols < D
            h = (tl.load(X + row + cols, mask=mask, other=0.0).to(COMPUTE)
                 + lam_r * tl.load(RES + row + cols, mask=mask, other=0.0).to(COMPUTE))
            xhat = tl.where(mask, h - mean, 0.0) * rstd
            g = tl.load(DOUT + row + cols, mask=mask, other=0.0).to(COMPUTE)
            if HAS_WEIGHT:
                g = g * tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
            acc_gxhat += g * xhat
            acc_g += g
        c1 = tl.sum(acc_gxhat, axis=0) if NORM == 2 else tl.sum(acc_gxhat, axis=0) / D
        c0 = tl.sum(acc_g, axis=0) / D if NORM == 0 else 0.0
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            mask = cols < D
            r = tl.load(RES + row + cols, mask=mask, other=0.0).to(COMPUTE)
            h = tl.load(X + row + cols, mask=mask, other=0.0).to(COMPUTE) + lam_r * r
            xhat = tl.where(mask, h - mean, 0.0) * rstd
            dy = tl.load(DOUT + row + cols, mask=mask, other=0.0).to(COMPUTE)
            g = dy
            if HAS_WEIGHT:
                g = g * tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
            dh = (g - xhat * c1 - c0) * rstd
            if HAS_DH:
                dh += tl.load(DH_IN + row + cols, mask=mask, other=0.0).to(COMPUTE)
            tl.store(DX + row + cols, dh.to(DX.dtype.element_ty), mask=mask)
            tl.store(DRES + row + cols, (lam_r * dh).to(DRES.dtype.element_ty), mask=mask)
            dlam += dh * r
            if HAS_WEIGHT:
                dw = tl.load(PART_DW + part + cols, mask=mask, other=0.0)
                tl.store(PART_DW + part + cols, dw + dy * xhat, mask=mask)
            if HAS_BIAS:
                db = tl.load(PART_DB + part + cols, mask=mask, other=0.0)
                tl.store(PART_DB + part + cols, db + dy, mask=mask)
        if LAM_PER_ELEMENT:
            tl.store(PART_DLAM + row_start + i, tl.sum(dlam, axis=0))
            dlam = tl.zeros([BLOCK_D], COMPUTE)
    if not LAM_PER_ELEMENT:
        tl.store(PART_DLAM + pid, tl.sum(dlam, axis=0))


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_and_warps(d: int, max_block_d: int) -> tuple[int, int, bool]:
    """(BLOCK_D, num_warps, looped) for rows of ``d`` columns."""
    looped = triton.next_power_of_2(d) > max_block_d
    block = min(CHUNK_D, max_block_d) if looped else triton.next_power_of_2(d)
    return block, min(max(block // 256, 1), 16), looped


def _forward_rows_per_program(device: torch.device) -> int:
    """Rows per forward program: enough to amortise weight loads and make μ partials small (1/8 of out)."""
    return 8 if device.type == "cuda" else 4


def _backward_rows_per_program(n_rows: int, device: torch.device, num_warps: int) -> int:
    """Rows per backward program: on CUDA enough programs for about 32 resident warps per SM (and no more:
    each program writes a partial dW row); four programs on CPU."""
    if device.type == "cuda":
        programs = torch.cuda.get_device_properties(device).multi_processor_count * max(1, 32 // num_warps)
    else:
        programs = 4
    return triton.cdiv(n_rows, min(n_rows, programs))


def finish_mu(part_mean: torch.Tensor, part_m2: torch.Tensor, group_rows: int, rows_per_program: int) -> torch.Tensor:
    """μ per group from per-program (column mean, M2) partials of shape (G, P, D) and (G, P) (Chan's merge)."""
    programs = part_m2.shape[1]
    counts = torch.full((programs,), float(rows_per_program), dtype=part_m2.dtype, device=part_m2.device)
    counts[-1] = group_rows - rows_per_program * (programs - 1)
    mean = (part_mean * counts[:, None]).sum(dim=1) / group_rows
    spread = (counts[:, None] * (part_mean - mean[:, None]).square()).sum(dim=(1, 2))
    return (part_m2.sum(dim=1) + spread).sqrt()


def lambda_norm_forward(x: torch.Tensor, residual: torch.Tensor, lam: torch.Tensor, weight, bias, eps: float,
                        norm: str, store_h: bool, h_dtype: torch.dtype, group_rows: int, *,
                        max_block_d: int = MAX_FUSED_D, rows_per_program: int | None = None):
    """Forward launcher.

    Args:
        x, residual: (n_rows, d) contiguous; weight, bias: (d,) or None;
        lam: 0-d or (1,) tensor, or (batch,) contiguous with batch > 1 dividing n_rows (one λ per
            n_rows // batch consecutive rows).
        store_h: write h in ``h_dtype``. group_rows: rows per batch element for μ (0: no μ); must divide n_rows.
        max_block_d: rows longer than this use the looped kernel; rows_per_program: rows per program.
    Returns:
        (out (n_rows, d) x.dtype, h (n_rows, d) or (0,), mean (n_rows,) [layernorm] or (0,), rstd (n_rows,),
        mu (n_rows // group_rows,) or (0,)); statistics and μ in the compute dtype.
    """
    n_rows, d = x.shape
    compute = compute_dtype(x, residual, lam, weight, bias)
    lam_per_element = lam.numel() > 1
    want_mu = group_rows > 0
    block, num_warps, looped = _block_and_warps(d, max_block_d)
    rows = rows_per_program or _forward_rows_per_program(x.device)
    groups, rows_in_group = (n_rows // group_rows, group_rows) if want_mu else (1, n_rows)
    programs_per_group = triton.cdiv(rows_in_group, rows)
    programs = groups * programs_per_group

    out = torch.empty_like(x)
    h = torch.empty((n_rows, d) if store_h else (0,), dtype=h_dtype, device=x.device)
    mean = torch.empty((n_rows,) if norm == "layernorm" else (0,), dtype=compute, device=x.device)
    rstd = torch.empty((n_rows,), dtype=compute, device=x.device)
    part_mean = torch.empty((programs, d) if want_mu else (0,), dtype=compute, device=x.device)
    part_m2 = torch.empty((programs,) if want_mu else (0,), dtype=compute, device=x.device)
    kernel = _forward_looped_kernel if looped else _forward_fused_kernel
    kernel[(programs,)](
        x, residual, lam, weight if weight is not None else x, bias if bias is not None else x, out,
        h if store_h else out, mean if norm == "layernorm" else rstd, rstd,
        part_mean if want_mu else rstd, part_m2 if want_mu else rstd,
        n_rows, d, eps, rows_in_group, programs_per_group, rows, n_rows // lam.numel(),
        NORM=NORM_CODES[norm], HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_H=store_h,
        WANT_MU=want_mu, LAM_PER_ELEMENT=lam_per_element, COMPUTE=_tl_dtype(compute), BLOCK_D=block,
        num_warps=num_warps)
    if want_mu:
        mu = finish_mu(part_mean.view(groups, programs_per_group, d), part_m2.view(groups, programs_per_group),
                       group_rows, rows)
    else:
        mu = torch.empty((0,), dtype=compute, device=x.device)
    return out, h, mean, rstd, mu


def lambda_norm_backward(dout: torch.Tensor, dh: torch.Tensor | None, x: torch.Tensor, residual: torch.Tensor,
                         lam: torch.Tensor, weight, bias, mean: torch.Tensor, rstd: torch.Tensor, norm: str, *,
                         max_block_d: int = MAX_FUSED_D, rows_per_program: int | None = None):
    """Backward launcher.

    Args:
        dout: (n_rows, d) gradient of ``out``; dh: (n_rows, d) gradient of the pre-norm output h, or None;
        x, residual, lam, weight, bias: the forward's inputs (bias only for its dtype; lam as in the forward);
        mean, rstd: the forward's row statistics.
    Returns:
        (dx x.dtype, dresidual residual.dtype, dlam lam's shape and dtype, dweight (d,) weight.dtype or (0,),
        dbias (d,) bias.dtype or (0,)); partials are reduced in the forward's compute dtype (rstd's).
    """
    n_rows, d = x.shape
    compute = rstd.dtype
    block, num_warps, looped = _block_and_warps(d, max_block_d)
    rows = rows_per_program or _backward_rows_per_program(n_rows, x.device, num_warps)
    programs = triton.cdiv(n_rows, rows)
    lam_per_element = lam.numel() > 1

    dx = torch.empty_like(x)
    dres = torch.empty_like(residual)
    has_weight, has_bias = weight is not None, bias is not None
    part_dw = torch.empty((programs, d) if has_weight else (0,), dtype=compute, device=x.device)
    part_db = torch.empty((programs, d) if has_bias else (0,), dtype=compute, device=x.device)
    part_dlam = torch.empty((n_rows if lam_per_element else programs,), dtype=compute, device=x.device)
    kernel = _backward_looped_kernel if looped else _backward_fused_kernel
    kernel[(programs,)](
        dout, dh if dh is not None else dout, x, residual, lam, weight if has_weight else x,
        mean if norm == "layernorm" else rstd, rstd, dx, dres,
        part_dw if has_weight else part_dlam, part_db if has_bias else part_dlam, part_dlam,
        n_rows, d, rows, n_rows // lam.numel(),
        NORM=NORM_CODES[norm], HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, HAS_DH=dh is not None,
        LAM_PER_ELEMENT=lam_per_element, COMPUTE=_tl_dtype(compute), BLOCK_D=block, num_warps=num_warps)
    dlam = part_dlam.view(lam.numel(), -1).sum(dim=1).to(lam.dtype).reshape(lam.shape)
    dweight = part_dw.sum(dim=0).to(weight.dtype) if has_weight else x.new_empty((0,))
    dbias = part_db.sum(dim=0).to(bias.dtype) if has_bias else x.new_empty((0,))
    return dx, dres, dlam, dweight, dbias
