"""SSD step 4: the outputs, from the state entering each chunk plus the quadratic form within it.

For token t of chunk c (``dA_cumsum`` ≡ Λ, ``S_c`` the state entering the chunk)::

    y_t = exp(Λ_t) · S_c C_t  +  Σ_{s ≤ t in chunk} (C_t·B_s) · exp(Λ_t − Λ_s) · dt_s · x_s

The causal mask, and the mask of tokens past the sequence end, are applied to the exponent before
``exp`` (−inf there), so only exponents ≤ 0 are ever exponentiated (for A ≤ 0). One program per (block of rows × block of headdim, batch·chunk,
head); dstate is held whole (``BLOCK_N``); the row blocks only visit the column blocks at or left of
the diagonal. ``C_t·B_s`` and the product with x run as ``tl.dot`` in the inputs' dtype with float32
accumulation; the state term in float32.
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_chunk_scan_kernel"),
                 key=["CHUNK", "BLOCK_N", "headdim"])
@triton.jit
def _chunk_scan_kernel(x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, y_ptr,
                       seqlen, nheads, ngroups, headdim, dstate, nchunks,
                       CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_S: tl.constexpr):
    pid_mp = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    n_pblocks = tl.cdiv(headdim, BLOCK_P)
    offs_m = (pid_mp // n_pblocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = (pid_mp % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    row_ok = offs_m < chunk_len
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    x_base = x_ptr + ((batch * seqlen + chunk_start) * nheads + head) * headdim
    bc_offset = ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK

    dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_m, mask=row_ok, other=0.0)
    C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_n[None, :],
                     mask=row_ok[:, None] & n_ok[None, :], other=0.0)
    state_t = tl.load(states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate
                      + offs_p[None, :] * dstate + offs_n[:, None], mask=n_ok[:, None] & p_ok[None, :], other=0.0)
    acc = tl.dot(C_rows.to(tl.float32), state_t) * tl.exp(dA_t)[:, None]

    row_end = tl.minimum((pid_mp // n_pblocks + 1) * BLOCK_M, chunk_len)
    for s0 in range(0, row_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        col_ok = offs_s < chunk_len
        B_t = tl.load(B_ptr + bc_offset + offs_s[None, :] * (ngroups * dstate) + offs_n[:, None],
                      mask=n_ok[:, None] & col_ok[None, :], other=0.0)
        scores = tl.dot(C_rows, B_t.to(C_rows.dtype))
        dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
        dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
        causal = (offs_m[:, None] >= offs_s[None, :]) & row_ok[:, None] & col_ok[None, :]
        scores *= tl.exp(tl.where(causal, dA_t[:, None] - dA_s[None, :], float("-inf"))) * dt_s[None, :]
        x_s = tl.load(x_base + offs_s[:, None] * (nheads * headdim) + offs_p[None, :],
                      mask=col_ok[:, None] & p_ok[None, :], other=0.0)
        acc += tl.dot(scores.to(x_s.dtype), x_s)

    tl.store(y_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * headdim + offs_p[None, :],
             acc, mask=row_ok[:, None] & p_ok[None, :])


def chunk_scan(x, B, C, dt_chunked, dA_cumsum, states) -> torch.Tensor:
    """x (b, l, h, p), B/C (b, l, g, n), dt_chunked/dA_cumsum (b, h, nchunks, CHUNK) float32, states
    (b, nchunks + 1, h, p, n) float32 from :func:`state_passing` → y (b, l, h, p) float32."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    y = torch.empty((b, l, h, p), device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK_M"]) * triton.cdiv(p, meta["BLOCK_P"]), b * nchunks, h)

    _chunk_scan_kernel[grid](x, B, C, dt_chunked, dA_cumsum, states, y, l, h, g, p, n, nchunks, CHUNK=chunk_size,
                             BLOCK_N=max(16, triton.next_power_of_2(n)))
    return y
