"""SSD backward, output rows: the gradient of C (per head) and the output side of dΛ.

For token t of chunk c (Λ = ``dA_cumsum``, ``S_c`` the state entering the chunk)::

    dC_t = exp(Λ_t) · dy_t S_c  +  Σ_{s ≤ t} (dy_t·x_s) · exp(Λ_t − Λ_s) · dt_s · B_s
    row_t = C_t · dC_t            (the part of dΛ_t due to the +Λ_t in every exponent)

One program per (block of rows, batch·chunk, head); headdim and dstate are held whole. dC is written
per head, float32; the caller sums each group's heads (no atomics). The products run on float32
operands with float32-accurate ``tf32x3`` dots: ``row_t`` enters dΛ, whose reverse cumulative sum and
sum over the sequence (dA, d dt_bias) cancel strongly; 16-bit operands here made those gradients ~10×
less accurate than the reference's (measured in float16).
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_chunk_scan_bwd_dc_kernel"),
                 key=["CHUNK", "BLOCK_N", "BLOCK_P"])
@triton.jit
def _chunk_scan_bwd_dc_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, dC_ptr,
                              row_terms_ptr, seqlen, nheads, ngroups, headdim, dstate, nchunks,
                              CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    row_ok = offs_m < chunk_len
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    head_offset = ((batch * seqlen + chunk_start) * nheads + head) * headdim
    bc_offset = ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK

    dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_m, mask=row_ok, other=0.0)
    dy_rows = tl.load(dy_ptr + head_offset + offs_m[:, None] * (nheads * headdim) + offs_p[None, :],
                      mask=row_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
    state = tl.load(states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate
                    + offs_p[:, None] * dstate + offs_n[None, :], mask=p_ok[:, None] & n_ok[None, :], other=0.0)
    acc = tl.dot(dy_rows, state, input_precision="tf32x3") * tl.exp(dA_t)[:, None]

    row_end = tl.minimum((pid_m + 1) * BLOCK_M, chunk_len)
    for s0 in range(0, row_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        col_ok = offs_s < chunk_len
        x_t = tl.load(x_ptr + head_offset + offs_s[None, :] * (nheads * headdim) + offs_p[:, None],
                      mask=p_ok[:, None] & col_ok[None, :], other=0.0)
        weights = tl.dot(dy_rows, x_t.to(tl.float32), input_precision="tf32x3")
        dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
        dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
        causal = (offs_m[:, None] >= offs_s[None, :]) & row_ok[:, None] & col_ok[None, :]
        weights *= tl.exp(tl.where(causal, dA_t[:, None] - dA_s[None, :], float("-inf"))) * dt_s[None, :]
        B_s = tl.load(B_ptr + bc_offset + offs_s[:, None] * (ngroups * dstate) + offs_n[None, :],
                      mask=col_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(weights, B_s.to(tl.float32), input_precision="tf32x3")

    C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_n[None, :],
                     mask=row_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    tl.store(dC_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * dstate + offs_n[None, :],
             acc, mask=row_ok[:, None] & n_ok[None, :])
    tl.store(row_terms_ptr + chunked_base + offs_m, tl.sum(acc * C_rows, axis=1), mask=offs_m < CHUNK)


def chunk_scan_bwd_dc(dy, x, B, C, dt_chunked, dA_cumsum, states) -> tuple[torch.Tensor, torch.Tensor]:
    """dy (b, l, h, p) float32, x (b, l, h, p), B/C (b, l, g, n), dt_chunked/dA_cumsum (b, h, nchunks, CHUNK),
    states (b, nchunks + 1, h, p, n) → dC per head (b, l, h, n) float32 and row terms (b, h, nchunks, CHUNK)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    dC_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    row_terms = torch.empty_like(dA_cumsum)

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK_M"]), b * nchunks, h)

    _chunk_scan_bwd_dc_kernel[grid](dy, x, B, C, dt_chunked, dA_cumsum, states, dC_heads, row_terms, l, h, g, p, n,
                                    nchunks, CHUNK=chunk_size, BLOCK_P=max(16, triton.next_power_of_2(p)),
                                    BLOCK_N=max(16, triton.next_power_of_2(n)))
    return dC_heads, row_terms
