"""SSD backward, input columns: the gradients of x, B (per head) and the direct part of dt.

For token s of chunk c (Λ = ``dA_cumsum``, ``G`` the gradient of the state leaving the chunk)::

    dx_s / dt_s = exp(Λ_end − Λ_s) · G B_s  +  Σ_{t ≥ s} (C_t·B_s) · exp(Λ_t − Λ_s) · dy_t
    dB_s / dt_s = exp(Λ_end − Λ_s) · x_s G  +  Σ_{t ≥ s} (dy_t·x_s) · exp(Λ_t − Λ_s) · C_t
    ddt_direct_s = x_s · (dx_s / dt_s)      (dt where it multiplies x; also −dΛ_s's share, see kernels.ssd)

One program per (block of columns, batch·chunk, head); each visits the row blocks at or below the
diagonal. headdim and dstate are held whole. dB is written per head, float32 (no atomics). The dx
products run on float32 operands with float32-accurate ``tf32x3`` dots because ``ddt_direct`` enters
dΛ (see ssd_chunk_scan_bwd_dc); the dB products use the inputs' dtype.
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_chunk_scan_bwd_dx_kernel"),
                 key=["CHUNK", "BLOCK_N", "BLOCK_P"])
@triton.jit
def _chunk_scan_bwd_dx_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, d_states_ptr, dx_ptr,
                              dB_ptr, ddt_direct_ptr, seqlen, nheads, ngroups, headdim, dstate, nchunks,
                              CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    offs_s = pid_s * BLOCK + tl.arange(0, BLOCK)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    col_ok = offs_s < chunk_len
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    head_offset = ((batch * seqlen + chunk_start) * nheads + head) * headdim
    bc_offset = ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK

    x_s = tl.load(x_ptr + head_offset + offs_s[:, None] * (nheads * headdim) + offs_p[None, :],
                  mask=col_ok[:, None] & p_ok[None, :], other=0.0)
    B_s = tl.load(B_ptr + bc_offset + offs_s[:, None] * (ngroups * dstate) + offs_n[None, :],
                  mask=col_ok[:, None] & n_ok[None, :], other=0.0)
    dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    dA_end = tl.load(dA_cumsum_ptr + chunked_base + CHUNK - 1)
    grad_state = tl.load(d_states_ptr + ((batch * (nchunks + 1) + chunk + 1) * nheads + head) * headdim * dstate
                         + offs_p[:, None] * dstate + offs_n[None, :], mask=p_ok[:, None] & n_ok[None, :], other=0.0)
    to_end = tl.exp(dA_end - dA_s)[:, None]
    dx_acc = tl.dot(B_s.to(tl.float32), tl.trans(grad_state), input_precision="tf32x3") * to_end
    dB_acc = tl.dot(x_s.to(tl.float32), grad_state) * to_end

    for t0 in range(pid_s * BLOCK, chunk_len, BLOCK):
        offs_t = t0 + tl.arange(0, BLOCK)
        row_ok = offs_t < chunk_len
        C_t = tl.load(C_ptr + bc_offset + offs_t[:, None] * (ngroups * dstate) + offs_n[None, :],
                      mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        dy_t = tl.load(dy_ptr + head_offset + offs_t[:, None] * (nheads * headdim) + offs_p[None, :],
                       mask=row_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_t, mask=row_ok, other=0.0)
        causal = (offs_t[None, :] >= offs_s[:, None]) & col_ok[:, None] & row_ok[None, :]
        decay = tl.exp(tl.where(causal, dA_t[None, :] - dA_s[:, None], float("-inf")))
        from_C = tl.dot(B_s, tl.trans(C_t).to(B_s.dtype)) * decay
        dx_acc += tl.dot(from_C, dy_t, input_precision="tf32x3")
        from_dy = tl.dot(x_s, tl.trans(dy_t.to(x_s.dtype))) * decay
        dB_acc += tl.dot(from_dy.to(C_t.dtype), C_t)

    dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    rows = (batch * seqlen + chunk_start + offs_s[:, None]) * nheads + head
    tl.store(dx_ptr + rows * headdim + offs_p[None, :], dx_acc * dt_s[:, None], mask=col_ok[:, None] & p_ok[None, :])
    tl.store(dB_ptr + rows * dstate + offs_n[None, :], dB_acc * dt_s[:, None], mask=col_ok[:, None] & n_ok[None, :])
    tl.store(ddt_direct_ptr + chunked_base + offs_s, tl.sum(dx_acc * x_s.to(tl.float32), axis=1), mask=offs_s < CHUNK)


def chunk_scan_bwd_dx(dy, x, B, C, dt_chunked, dA_cumsum, d_states):
    """dy (b, l, h, p) float32, x (b, l, h, p), B/C (b, l, g, n), dt_chunked/dA_cumsum (b, h, nchunks, CHUNK),
    d_states (b, nchunks + 1, h, p, n) from :func:`state_passing_backward`
    → dx (b, l, h, p) in x's dtype, dB per head (b, l, h, n) float32, ddt_direct (b, h, nchunks, CHUNK) float32."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    dx = torch.empty_like(x)
    dB_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    ddt_direct = torch.empty_like(dA_cumsum)

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK"]), b * nchunks, h)

    _chunk_scan_bwd_dx_kernel[grid](dy, x, B, C, dt_chunked, dA_cumsum, d_states, dx, dB_heads, ddt_direct, l, h, g,
                                    p, n, nchunks, CHUNK=chunk_size, BLOCK_P=max(16, triton.next_power_of_2(p)),
                                    BLOCK_N=max(16, triton.next_power_of_2(n)))
    return dx, dB_heads, ddt_direct
