"""SSD step 4: the outputs, from the state entering each chunk plus the quadratic form within it; and its backward.

For token t of chunk c (``dA_cumsum`` ≡ Λ, ``S_c`` the state entering the chunk)::

    y_t = exp(Λ_t) · S_c C_t  +  Σ_{s ≤ t in chunk} (C_t·B_s) · exp(Λ_t − Λ_s) · dt_s · x_s

With packed sequences (``seq_idx``) the sum runs over the s of t's sequence only, and the state term
is kept only for the tokens of the sequence entering the chunk. The causal and sequence masks, and
the mask of tokens past the sequence end, are applied to the exponent before ``exp`` (−inf there), so
only exponents ≤ 0 are ever exponentiated (for A ≤ 0).

Forward (:func:`chunk_scan`): one program per (block of rows × block of headdim, batch·chunk, head);
dstate is held whole (``BLOCK_N``); the row blocks only visit the column blocks at or left of the
diagonal. ``C_t·B_s`` and the product with x run as ``tl.dot`` in the inputs' dtype with float32
accumulation; the state term in float32.

Backward (:func:`chunk_scan_backward`), in two passes over a chunk:

- rows t: ``dC_t = exp(Λ_t) dy_t S_c + Σ_{s ≤ t} (dy_t·x_s) exp(Λ_t − Λ_s) dt_s B_s`` per head, and
  ``row_t = C_t·dC_t`` (the part of dΛ_t due to the +Λ_t in every exponent);
- columns s: ``dx_s / dt_s = Σ_{t ≥ s} (C_t·B_s) exp(Λ_t − Λ_s) dy_t`` and
  ``dB_s / dt_s = Σ_{t ≥ s} (dy_t·x_s) exp(Λ_t − Λ_s) C_t``, plus chunk state's backward from the
  gradient ``G`` of the state leaving the chunk (:func:`~lambdaskip.kernels.ssd_chunk_state.chunk_state_bwd_tile`,
  fused here so x and B are read once), and ``ddt_direct_s = x_s·dx_s / dt_s`` (the gradient of dt
  where it multiplies x; also −dΛ_s's share, see :mod:`lambdaskip.kernels.ssd`).

The gradient the outputs send to ``S_c`` is :func:`~lambdaskip.kernels.ssd_chunk_state.chunk_state`'s
contraction with weights ``exp(Λ_t)`` on (dy, C). headdim and dstate are held whole in the backward;
dC and dB are written per head in float32 (the caller sums each group's heads: no atomics). The
products that feed dΛ (rows, dx) run on float32 operands with float32-accurate ``tf32x3`` dots: dΛ's
reverse cumulative sum and sum over the sequence (dA, d dt_bias) cancel strongly, and 16-bit
operands there made those gradients ~10× less accurate than the reference's (measured in float16);
the dB products use the inputs' dtype.
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_chunk_state import chunk_state_bwd_tile
from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_chunk_scan_kernel"),
                 key=["CHUNK", "BLOCK_N", "headdim", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_scan_kernel(x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, seq_idx_ptr, y_ptr,
                       seqlen, nheads, ngroups, headdim, dstate, nchunks,
                       HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
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
    state_scale = tl.exp(dA_t)
    if HAS_SEQ_IDX:
        seq_base = seq_idx_ptr + batch * seqlen + chunk_start
        seq_t = tl.load(seq_base + offs_m, mask=row_ok, other=-1)
        state_scale = tl.where(seq_t == tl.load(seq_base - (chunk > 0).to(tl.int32)), state_scale, 0.0)
    C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_n[None, :],
                     mask=row_ok[:, None] & n_ok[None, :], other=0.0)
    state_t = tl.load(states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate
                      + offs_p[None, :] * dstate + offs_n[:, None], mask=n_ok[:, None] & p_ok[None, :], other=0.0)
    acc = tl.dot(C_rows.to(tl.float32), state_t) * state_scale[:, None]

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
        if HAS_SEQ_IDX:
            causal &= seq_t[:, None] == tl.load(seq_base + offs_s, mask=col_ok, other=-2)[None, :]
        scores *= tl.exp(tl.where(causal, dA_t[:, None] - dA_s[None, :], float("-inf"))) * dt_s[None, :]
        x_s = tl.load(x_base + offs_s[:, None] * (nheads * headdim) + offs_p[None, :],
                      mask=col_ok[:, None] & p_ok[None, :], other=0.0)
        acc += tl.dot(scores.to(x_s.dtype), x_s)

    tl.store(y_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * headdim + offs_p[None, :],
             acc, mask=row_ok[:, None] & p_ok[None, :])


@triton.autotune(configs=configs("_chunk_scan_bwd_rows_kernel"),
                 key=["CHUNK", "BLOCK_N", "BLOCK_P", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_scan_bwd_rows_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, seq_idx_ptr,
                                dC_ptr, row_terms_ptr, seqlen, nheads, ngroups, headdim, dstate, nchunks,
                                HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
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
    state_scale = tl.exp(dA_t)
    if HAS_SEQ_IDX:
        seq_base = seq_idx_ptr + batch * seqlen + chunk_start
        seq_t = tl.load(seq_base + offs_m, mask=row_ok, other=-1)
        state_scale = tl.where(seq_t == tl.load(seq_base - (chunk > 0).to(tl.int32)), state_scale, 0.0)
    dy_rows = tl.load(dy_ptr + head_offset + offs_m[:, None] * (nheads * headdim) + offs_p[None, :],
                      mask=row_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
    state = tl.load(states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate
                    + offs_p[:, None] * dstate + offs_n[None, :], mask=p_ok[:, None] & n_ok[None, :], other=0.0)
    acc = tl.dot(dy_rows, state, input_precision="tf32x3") * state_scale[:, None]

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
        if HAS_SEQ_IDX:
            causal &= seq_t[:, None] == tl.load(seq_base + offs_s, mask=col_ok, other=-2)[None, :]
        weights *= tl.exp(tl.where(causal, dA_t[:, None] - dA_s[None, :], float("-inf"))) * dt_s[None, :]
        B_s = tl.load(B_ptr + bc_offset + offs_s[:, None] * (ngroups * dstate) + offs_n[None, :],
                      mask=col_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(weights, B_s.to(tl.float32), input_precision="tf32x3")

    C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_n[None, :],
                     mask=row_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    tl.store(dC_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * dstate + offs_n[None, :],
             acc, mask=row_ok[:, None] & n_ok[None, :])
    tl.store(row_terms_ptr + chunked_base + offs_m, tl.sum(acc * C_rows, axis=1), mask=offs_m < CHUNK)


@triton.autotune(configs=configs("_chunk_scan_bwd_columns_kernel"),
                 key=["CHUNK", "BLOCK_N", "BLOCK_P", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_scan_bwd_columns_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, d_states_ptr,
                                   seq_idx_ptr, dx_ptr, dB_ptr, ddt_direct_ptr, seqlen, nheads, ngroups, headdim,
                                   dstate, nchunks, HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr,
                                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr):
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
    keep = col_ok
    if HAS_SEQ_IDX:
        seq_base = seq_idx_ptr + batch * seqlen + chunk_start
        seq_s = tl.load(seq_base + offs_s, mask=col_ok, other=-1)
        keep = seq_s == tl.load(seq_base + chunk_len - 1)  # only the chunk's last sequence reaches G
    dx_acc, dB_acc = chunk_state_bwd_tile(x_s, B_s, dA_s, dA_end, grad_state, keep)

    for t0 in range(pid_s * BLOCK, chunk_len, BLOCK):
        offs_t = t0 + tl.arange(0, BLOCK)
        row_ok = offs_t < chunk_len
        C_t = tl.load(C_ptr + bc_offset + offs_t[:, None] * (ngroups * dstate) + offs_n[None, :],
                      mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        dy_t = tl.load(dy_ptr + head_offset + offs_t[:, None] * (nheads * headdim) + offs_p[None, :],
                       mask=row_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_t, mask=row_ok, other=0.0)
        causal = (offs_t[None, :] >= offs_s[:, None]) & col_ok[:, None] & row_ok[None, :]
        if HAS_SEQ_IDX:
            causal &= seq_s[:, None] == tl.load(seq_base + offs_t, mask=row_ok, other=-2)[None, :]
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


def _block(size: int) -> int:
    return max(16, triton.next_power_of_2(size))


def chunk_scan(x, B, C, dt_chunked, dA_cumsum, states, seq_idx=None) -> torch.Tensor:
    """x (b, l, h, p), B/C (b, l, g, n), dt_chunked/dA_cumsum (b, h, nchunks, CHUNK) float32, states
    (b, nchunks + 1, h, p, n) float32 from :func:`state_passing`, seq_idx (b, l) int32 or None
    → y (b, l, h, p) float32."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    y = torch.empty((b, l, h, p), device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK_M"]) * triton.cdiv(p, meta["BLOCK_P"]), b * nchunks, h)

    _chunk_scan_kernel[grid](x, B, C, dt_chunked, dA_cumsum, states, seq_idx, y, l, h, g, p, n, nchunks,
                             HAS_SEQ_IDX=seq_idx is not None, CHUNK=chunk_size, BLOCK_N=_block(n))
    return y


def chunk_scan_backward(dy, x, B, C, dt_chunked, dA_cumsum, states, d_states, seq_idx=None):
    """The backward of :func:`chunk_scan`, with chunk state's backward fused into the column pass.

    Args:
        dy: (b, l, h, p) float32; x, B, C, dt_chunked, dA_cumsum, states, seq_idx: as in :func:`chunk_scan`;
        d_states: (b, nchunks + 1, h, p, n) float32, ``G``: entry c + 1 is the gradient of the state leaving
            chunk c (:func:`state_passing_backward`); entry 0 is not read.
    Returns:
        dx (b, l, h, p) in x's dtype; dB and dC per head (b, l, h, n) float32; ddt_direct and row_terms
        (b, h, nchunks, CHUNK) float32 (see the module docstring).
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    dC_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    row_terms = torch.empty_like(dA_cumsum)
    dx = torch.empty_like(x)
    dB_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    ddt_direct = torch.empty_like(dA_cumsum)
    has_seq_idx = seq_idx is not None

    def rows_grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK_M"]), b * nchunks, h)

    def columns_grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK"]), b * nchunks, h)

    _chunk_scan_bwd_rows_kernel[rows_grid](dy, x, B, C, dt_chunked, dA_cumsum, states, seq_idx, dC_heads, row_terms,
                                           l, h, g, p, n, nchunks, HAS_SEQ_IDX=has_seq_idx, CHUNK=chunk_size,
                                           BLOCK_P=_block(p), BLOCK_N=_block(n))
    _chunk_scan_bwd_columns_kernel[columns_grid](dy, x, B, C, dt_chunked, dA_cumsum, d_states, seq_idx, dx, dB_heads,
                                                 ddt_direct, l, h, g, p, n, nchunks, HAS_SEQ_IDX=has_seq_idx,
                                                 CHUNK=chunk_size, BLOCK_P=_block(p), BLOCK_N=_block(n))
    return dx, dB_heads, dC_heads, ddt_direct, row_terms
