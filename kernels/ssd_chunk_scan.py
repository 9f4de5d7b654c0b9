"""SSD step 4: the outputs, from the state entering each chunk plus the quadratic form within it; and its backward.

Long file: one SSD step a file (forward, both backward passes and their launchers, see DESIGN.md).

For token t of chunk c (``dA_cumsum`` ≡ Λ, ``S_c`` the state entering the chunk)::

    y_t = exp(Λ_t) · S_c C_t  +  Σ_{s ≤ t in chunk} (C_t·B_s) · exp(Λ_t − Λ_s) · dt_s · x_s

With packed sequences (``seq_idx``) the sum runs over the s of t's sequence only, and the state term
is kept only for the tokens of the sequence entering the chunk. The causal and sequence masks, and
the mask of tokens past the sequence end, are applied to the exponent before ``exp`` (−inf there), so
only exponents ≤ 0 are ever exponentiated (for A ≤ 0).

Forward (:func:`chunk_scan`): one program per (block of rows × block of headdim, batch·chunk, head),
looping over dstate in blocks of ``BLOCK_K`` (y is linear in C, so each block adds its share of the
state term and of every ``C_t·B_s``); the row blocks only visit the column blocks at or left of the
diagonal. ``C_t·B_s`` and the product with x run as ``tl.dot`` in the inputs' dtype with float32
accumulation; the state term in float32.

Backward (:func:`chunk_scan_backward`), in two passes over a chunk:

- rows t: ``dC_t = exp(Λ_t) dy_t S_c + Σ_{s ≤ t} (dy_t·x_s) exp(Λ_t − Λ_s) dt_s B_s`` per head, and
  ``row_t = C_t·dC_t`` (the part of dΛ_t due to the +Λ_t in every exponent);
- columns s: ``dx_s / dt_s = Σ_{t ≥ s} (C_t·B_s) exp(Λ_t − Λ_s) dy_t`` and
  ``dB_s / dt_s = Σ_{t ≥ s} (dy_t·x_s) exp(Λ_t − Λ_s) C_t``, plus chunk state's backward from the
  gradient ``G`` of the state leaving the chunk (:func:`~lambdaskip.kernels.ssd_chunk_state.chunk_state_bwd_tile`,
  fused here), and ``ddt_direct_s = x_s·dx_s / dt_s`` (the gradient of dt where it multiplies x; also
  −dΛ_s's share, see :mod:`lambdaskip.kernels.ssd`). dx and dB have the same form, keys (B, C) or
  (x, dy) contracted into scores that weigh values dy or C, so one kernel computes either (``FOR_DX``),
  launched once for each.

The gradient the outputs send to ``S_c`` is :func:`~lambdaskip.kernels.ssd_chunk_state.chunk_state`'s
contraction with weights ``exp(Λ_t)`` on (dy, C). No program holds headdim or dstate whole: each writes
a block of at most :data:`MAX_BLOCK_OUT` of its output (dC, dx or dB) and loops over the contracted
dimension in blocks of ``BLOCK_K``, so any size up to 256 runs in the same registers. The sums across
output blocks (row_t over dstate, ddt_direct over headdim) are written as per-block partials and added
afterwards; dC and dB are written per head in float32 (the caller sums each group's heads): no atomics. The
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

MAX_BLOCK_OUT = 64  # the widest block of headdim or dstate one backward program writes


@triton.jit
def _row_decays(dA_cumsum_ptr, chunked_base, offs_m, row_ok, seq_idx_ptr, seq_offset, chunk,
                HAS_SEQ_IDX: tl.constexpr):
    """For rows t of a chunk: Λ_t, the state term's factor exp(Λ_t) (0 for tokens not of the sequence that
    enters the chunk) and the rows' sequence numbers (``offs_m`` when not packed: unused then)."""
    dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_m, mask=row_ok, other=0.0)
    state_scale = tl.exp(dA_t)
    seq_t = offs_m
    if HAS_SEQ_IDX:
        seq_t = tl.load(seq_idx_ptr + seq_offset + offs_m, mask=row_ok, other=-1)
        entering = tl.load(seq_idx_ptr + seq_offset - (chunk > 0).to(tl.int32))
        state_scale = tl.where(seq_t == entering, state_scale, 0.0)
    return dA_t, state_scale, seq_t


@triton.jit
def _within_chunk_weights(dA_t, offs_m, row_ok, seq_t, offs_s, col_ok, dA_cumsum_ptr, dt_chunked_ptr, chunked_base,
                          seq_idx_ptr, seq_offset, HAS_SEQ_IDX: tl.constexpr):
    """(rows t, columns s) float32: ``exp(Λ_t − Λ_s) · dt_s`` where s ≤ t in the same sequence, else 0 (the
    masks applied to the exponent, so only exponents ≤ 0 are exponentiated)."""
    dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    causal = (offs_m[:, None] >= offs_s[None, :]) & row_ok[:, None] & col_ok[None, :]
    if HAS_SEQ_IDX:
        causal &= seq_t[:, None] == tl.load(seq_idx_ptr + seq_offset + offs_s, mask=col_ok, other=-2)[None, :]
    return tl.exp(tl.where(causal, dA_t[:, None] - dA_s[None, :], float("-inf"))) * dt_s[None, :]


@triton.autotune(configs=configs("_chunk_scan_kernel"),
                 key=["CHUNK", "headdim", "dstate", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_scan_kernel(x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, seq_idx_ptr, y_ptr,
                       seqlen, nheads, ngroups, headdim, dstate, nchunks,
                       HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_mp = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    n_pblocks = tl.cdiv(headdim, BLOCK_P)
    offs_m = (pid_mp // n_pblocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = (pid_mp % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    row_ok = offs_m < chunk_len
    p_ok = offs_p < headdim
    x_base = x_ptr + ((batch * seqlen + chunk_start) * nheads + head) * headdim
    bc_offset = ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK
    state_base = states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate

    seq_offset = batch * seqlen + chunk_start
    dA_t, state_scale, seq_t = _row_decays(dA_cumsum_ptr, chunked_base, offs_m, row_ok, seq_idx_ptr, seq_offset, chunk,
                                           HAS_SEQ_IDX)
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    row_end = tl.minimum((pid_mp // n_pblocks + 1) * BLOCK_M, chunk_len)
    # y is linear in C: each block of dstate adds its share of the state term and of every C_t·B_s
    for k0 in range(0, dstate, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < dstate
        C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_k[None, :],
                         mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        state_t = tl.load(state_base + offs_p[None, :] * dstate + offs_k[:, None], mask=k_ok[:, None] & p_ok[None, :],
                          other=0.0)
        acc += tl.dot(C_rows.to(tl.float32), state_t) * state_scale[:, None]
        for s0 in range(0, row_end, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            col_ok = offs_s < chunk_len
            B_t = tl.load(B_ptr + bc_offset + offs_s[None, :] * (ngroups * dstate) + offs_k[:, None],
                          mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            scores = tl.dot(C_rows, B_t.to(C_rows.dtype))
            scores *= _within_chunk_weights(dA_t, offs_m, row_ok, seq_t, offs_s, col_ok, dA_cumsum_ptr, dt_chunked_ptr,
                                            chunked_base, seq_idx_ptr, seq_offset, HAS_SEQ_IDX)
            x_s = tl.load(x_base + offs_s[:, None] * (nheads * headdim) + offs_p[None, :],
                          mask=col_ok[:, None] & p_ok[None, :], other=0.0)
            acc += tl.dot(scores.to(x_s.dtype), x_s)

    tl.store(y_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * headdim + offs_p[None, :],
             acc, mask=row_ok[:, None] & p_ok[None, :])


@triton.autotune(configs=configs("_chunk_scan_bwd_rows_kernel"),
                 key=["CHUNK", "headdim", "dstate", "BLOCK_N", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_scan_bwd_rows_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, seq_idx_ptr,
                                dC_ptr, row_partials_ptr, seqlen, nheads, ngroups, headdim, dstate, nchunks,
                                HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_mn = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    n_nblocks = tl.cdiv(dstate, BLOCK_N)
    pid_m = pid_mn // n_nblocks
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid_mn % n_nblocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    row_ok = offs_m < chunk_len
    n_ok = offs_n < dstate
    head_offset = ((batch * seqlen + chunk_start) * nheads + head) * headdim
    bc_offset = ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK
    state_base = states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * headdim * dstate

    seq_offset = batch * seqlen + chunk_start
    dA_t, state_scale, seq_t = _row_decays(dA_cumsum_ptr, chunked_base, offs_m, row_ok, seq_idx_ptr, seq_offset, chunk,
                                           HAS_SEQ_IDX)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, headdim, BLOCK_K):  # the state term, a block of headdim at a time
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < headdim
        dy_rows = tl.load(dy_ptr + head_offset + offs_m[:, None] * (nheads * headdim) + offs_k[None, :],
                          mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        state = tl.load(state_base + offs_k[:, None] * dstate + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0)
        acc += tl.dot(dy_rows, state, input_precision="tf32x3")
    acc *= state_scale[:, None]

    row_end = tl.minimum((pid_m + 1) * BLOCK_M, chunk_len)
    for s0 in range(0, row_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        col_ok = offs_s < chunk_len
        weights = tl.zeros((BLOCK_M, BLOCK_S), dtype=tl.float32)
        for k0 in range(0, headdim, BLOCK_K):  # dy_t·x_s, a block of headdim at a time
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < headdim
            dy_rows = tl.load(dy_ptr + head_offset + offs_m[:, None] * (nheads * headdim) + offs_k[None, :],
                              mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            x_t = tl.load(x_ptr + head_offset + offs_s[None, :] * (nheads * headdim) + offs_k[:, None],
                          mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            weights += tl.dot(dy_rows, x_t.to(tl.float32), input_precision="tf32x3")
        weights *= _within_chunk_weights(dA_t, offs_m, row_ok, seq_t, offs_s, col_ok, dA_cumsum_ptr, dt_chunked_ptr,
                                         chunked_base, seq_idx_ptr, seq_offset, HAS_SEQ_IDX)
        B_s = tl.load(B_ptr + bc_offset + offs_s[:, None] * (ngroups * dstate) + offs_n[None, :],
                      mask=col_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(weights, B_s.to(tl.float32), input_precision="tf32x3")

    C_rows = tl.load(C_ptr + bc_offset + offs_m[:, None] * (ngroups * dstate) + offs_n[None, :],
                     mask=row_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    tl.store(dC_ptr + ((batch * seqlen + chunk_start + offs_m[:, None]) * nheads + head) * dstate + offs_n[None, :],
             acc, mask=row_ok[:, None] & n_ok[None, :])
    tl.store(row_partials_ptr + (chunked_base + offs_m) * n_nblocks + pid_mn % n_nblocks,
             tl.sum(acc * C_rows, axis=1), mask=offs_m < CHUNK)


@triton.autotune(configs=configs("_chunk_scan_bwd_columns_kernel"),
                 key=["CHUNK", "key_dim", "out_dim", "BLOCK_O", "HAS_SEQ_IDX", "FOR_DX"])
@triton.jit
def _chunk_scan_bwd_columns_kernel(key_ptr, query_ptr, value_ptr, x_ptr, dt_chunked_ptr, dA_cumsum_ptr, d_states_ptr,
                                   seq_idx_ptr, out_ptr, ddt_partials_ptr, seqlen, nheads, key_heads, key_dim,
                                   value_heads, out_dim, nchunks, g_key_stride, g_out_stride,
                                   FOR_DX: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr,
                                   BLOCK_O: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_so = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    n_oblocks = tl.cdiv(out_dim, BLOCK_O)
    pid_s = pid_so // n_oblocks
    offs_s = pid_s * BLOCK + tl.arange(0, BLOCK)
    offs_o = (pid_so % n_oblocks) * BLOCK_O + tl.arange(0, BLOCK_O)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    col_ok = offs_s < chunk_len
    o_ok = offs_o < out_dim
    first_token = batch * seqlen + chunk_start
    key_stride = key_heads * key_dim
    key_base = (first_token * key_heads + head // (nheads // key_heads)) * key_dim
    value_stride = value_heads * out_dim
    value_base = (first_token * value_heads + head // (nheads // value_heads)) * out_dim
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK
    g_base = d_states_ptr + ((batch * (nchunks + 1) + chunk + 1) * nheads + head) * key_dim * out_dim

    dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    dA_end = tl.load(dA_cumsum_ptr + chunked_base + CHUNK - 1)
    keep = col_ok
    if HAS_SEQ_IDX:
        seq_base = seq_idx_ptr + batch * seqlen + chunk_start
        seq_s = tl.load(seq_base + offs_s, mask=col_ok, other=-1)
        keep = seq_s == tl.load(seq_base + chunk_len - 1)  # only the chunk's last sequence reaches G
    acc = tl.zeros((BLOCK, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, key_dim, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < key_dim
        key_s = tl.load(key_ptr + key_base + offs_s[:, None] * key_stride + offs_k[None, :],
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        grad_state = tl.load(g_base + offs_k[:, None] * g_key_stride + offs_o[None, :] * g_out_stride,
                             mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        acc += chunk_state_bwd_tile(key_s, grad_state, dA_s, dA_end, keep)

    for t0 in range(pid_s * BLOCK, chunk_len, BLOCK):
        offs_t = t0 + tl.arange(0, BLOCK)
        row_ok = offs_t < chunk_len
        scores = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, key_dim, BLOCK_K):  # B_s·C_t (dx) or x_s·dy_t (dB), a block of the keys at a time
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < key_dim
            key_s = tl.load(key_ptr + key_base + offs_s[:, None] * key_stride + offs_k[None, :],
                            mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            query_t = tl.load(query_ptr + key_base + offs_t[:, None] * key_stride + offs_k[None, :],
                              mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            scores += tl.dot(key_s, tl.trans(query_t.to(key_s.dtype)))
        dA_t = tl.load(dA_cumsum_ptr + chunked_base + offs_t, mask=row_ok, other=0.0)
        causal = (offs_t[None, :] >= offs_s[:, None]) & col_ok[:, None] & row_ok[None, :]
        if HAS_SEQ_IDX:
            causal &= seq_s[:, None] == tl.load(seq_base + offs_t, mask=row_ok, other=-2)[None, :]
        scores *= tl.exp(tl.where(causal, dA_t[None, :] - dA_s[:, None], float("-inf")))
        value_t = tl.load(value_ptr + value_base + offs_t[:, None] * value_stride + offs_o[None, :],
                          mask=row_ok[:, None] & o_ok[None, :], other=0.0)
        if FOR_DX:  # feeds dΛ through ddt_direct: float32 operands, float32-accurate products
            acc += tl.dot(scores, value_t.to(tl.float32), input_precision="tf32x3")
        else:
            acc += tl.dot(scores.to(value_t.dtype), value_t)

    dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=col_ok, other=0.0)
    tl.store(out_ptr + ((first_token + offs_s[:, None]) * nheads + head) * out_dim + offs_o[None, :],
             acc * dt_s[:, None], mask=col_ok[:, None] & o_ok[None, :])
    if FOR_DX:  # x has dy's layout
        x_s = tl.load(x_ptr + value_base + offs_s[:, None] * value_stride + offs_o[None, :],
                      mask=col_ok[:, None] & o_ok[None, :], other=0.0)
        tl.store(ddt_partials_ptr + (chunked_base + offs_s) * n_oblocks + pid_so % n_oblocks,
                 tl.sum(acc * x_s.to(tl.float32), axis=1), mask=offs_s < CHUNK)


def _block(size: int) -> int:
    """The tile of a dimension split across programs: the dimension rounded up to a power of two, at most
    :data:`MAX_BLOCK_OUT`."""
    return min(MAX_BLOCK_OUT, max(16, triton.next_power_of_2(size)))


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
                             HAS_SEQ_IDX=seq_idx is not None, CHUNK=chunk_size)
    return y


def chunk_scan_backward(dy, x, B, C, dt_chunked, dA_cumsum, states, d_states, seq_idx=None):
    """The backward of :func:`chunk_scan`, with chunk state's backward fused into the column passes.

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
    block_p, block_n = _block(p), _block(n)
    dC_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    row_partials = torch.empty((b, h, nchunks, chunk_size, triton.cdiv(n, block_n)), device=x.device,
                               dtype=torch.float32)
    dx = torch.empty_like(x)
    dB_heads = torch.empty((b, l, h, n), device=x.device, dtype=torch.float32)
    ddt_partials = torch.empty((b, h, nchunks, chunk_size, triton.cdiv(p, block_p)), device=x.device,
                               dtype=torch.float32)
    has_seq_idx = seq_idx is not None

    def rows_grid(meta):
        return (triton.cdiv(chunk_size, meta["BLOCK_M"]) * triton.cdiv(n, block_n), b * nchunks, h)

    def columns_grid(out_dim, block_out):
        return lambda meta: (triton.cdiv(chunk_size, meta["BLOCK"]) * triton.cdiv(out_dim, block_out), b * nchunks, h)

    _chunk_scan_bwd_rows_kernel[rows_grid](dy, x, B, C, dt_chunked, dA_cumsum, states, seq_idx, dC_heads,
                                           row_partials, l, h, g, p, n, nchunks, HAS_SEQ_IDX=has_seq_idx,
                                           CHUNK=chunk_size, BLOCK_N=block_n)
    # dx: keys B_s·C_t over dstate, values dy_t, G read transposed (element (p, n) at p·n_total + n)
    _chunk_scan_bwd_columns_kernel[columns_grid(p, block_p)](
        B, C, dy, x, dt_chunked, dA_cumsum, d_states, seq_idx, dx, ddt_partials, l, h, g, n, h, p, nchunks, 1, n,
        FOR_DX=True, HAS_SEQ_IDX=has_seq_idx, CHUNK=chunk_size, BLOCK_O=block_p)
    # dB: keys x_s·dy_t over headdim, values C_t
    _chunk_scan_bwd_columns_kernel[columns_grid(n, block_n)](
        x, dy, C, None, dt_chunked, dA_cumsum, d_states, seq_idx, dB_heads, None, l, h, h, p, g, n, nchunks, n, 1,
        FOR_DX=False, HAS_SEQ_IDX=has_seq_idx, CHUNK=chunk_size, BLOCK_O=block_n)
    return dx, dB_heads, dC_heads, ddt_partials.sum(dim=-1), row_partials.sum(dim=-1)
