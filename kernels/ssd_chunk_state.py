"""SSD step 2: each chunk's contribution to the state, ``Σ_s w_s · x_s ⊗ B_s`` over the chunk's tokens.

Forward (:func:`chunk_state`, ``decay_to_end=True``): ``w_s = exp(Λ_end − Λ_s) · dt_s`` (Λ =
``dA_cumsum``), the state a chunk adds by its end (exponents ≤ 0 for A ≤ 0). With packed sequences
(``seq_idx``) only the tokens of the chunk's last sequence count. :func:`chunk_state_varlen` gives each
packed sequence's final state the same way, from its last chunk.

Backward: given ``G`` (the gradient of the state a chunk adds), token s of the chunk receives
``dx_s = dt_s exp(Λ_end − Λ_s) G B_s`` and ``dB_s = dt_s exp(Λ_end − Λ_s) x_s G``
(:func:`chunk_state_bwd_tile`, a block of dstate or headdim at a time). Chunk scan's column passes call
this tile on the columns they already hold (:func:`lambdaskip.kernels.ssd_chunk_scan.chunk_scan_backward`),
so x and B are read once per pass. The
gradient of the log-decays follows from these (see :mod:`lambdaskip.kernels.ssd`). Chunk scan's
backward also reuses :func:`chunk_state`'s contraction (``decay_to_end=False``: ``w_t = exp(Λ_t)``,
``x → dy``, ``B → C``, only tokens of the sequence that enters the chunk) for the gradient its
outputs send to the state entering each chunk.

One program per (block of headdim × block of dstate, batch·chunk, head); the contraction over the
chunk's tokens is a ``tl.dot`` in blocks of ``BLOCK_S`` tokens on float32 operands with float32-accurate
products (``tf32x3``): the states feed the gradient of A and dt, whose sums over the sequence cancel
strongly, and rounding the weighted operands to 16 bits here raised those errors 5× (measured).
"""
import torch
import triton
import triton.language as tl

from lambdaskip.kernels.ssd_configs import configs


@triton.autotune(configs=configs("_chunk_state_kernel"),
                 key=["CHUNK", "BLOCK_P", "BLOCK_N", "DECAY_TO_END", "HAS_SEQ_IDX"])
@triton.jit
def _chunk_state_kernel(x_ptr, v_ptr, dt_chunked_ptr, dA_cumsum_ptr, seq_idx_ptr, out_ptr,
                        seqlen, nheads, ngroups, headdim, dstate, nchunks,
                        DECAY_TO_END: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_pn = tl.program_id(0)
    pid_bc = tl.program_id(1)
    head = tl.program_id(2)
    batch = (pid_bc // nchunks).to(tl.int64)
    chunk = pid_bc % nchunks
    group = head // (nheads // ngroups)
    n_pblocks = tl.cdiv(headdim, BLOCK_P)
    offs_p = (pid_pn % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn // n_pblocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk_start = chunk * CHUNK
    chunk_len = tl.minimum(CHUNK, seqlen - chunk_start)
    x_base = x_ptr + ((batch * seqlen + chunk_start) * nheads + head) * headdim
    v_base = v_ptr + ((batch * seqlen + chunk_start) * ngroups + group) * dstate
    chunked_base = ((batch * nheads + head) * nchunks + chunk) * CHUNK
    dA_end = tl.load(dA_cumsum_ptr + chunked_base + CHUNK - 1)
    if HAS_SEQ_IDX:
        seq_base = seq_idx_ptr + batch * seqlen + chunk_start
        if DECAY_TO_END:
            seq_kept = tl.load(seq_base + chunk_len - 1)          # the sequence the added state belongs to
        else:
            seq_kept = tl.load(seq_base - (chunk > 0).to(tl.int32))  # the sequence entering the chunk

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for s0 in range(0, chunk_len, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        token_ok = offs_s < chunk_len
        x_t = tl.load(x_base + offs_s[None, :] * (nheads * headdim) + offs_p[:, None],
                      mask=(offs_p < headdim)[:, None] & token_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_s[:, None] * (ngroups * dstate) + offs_n[None, :],
                    mask=token_ok[:, None] & (offs_n < dstate)[None, :], other=0.0)
        dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=token_ok, other=0.0)
        if DECAY_TO_END:
            weight = tl.exp(dA_end - dA_s) * tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=token_ok, other=0.0)
        else:
            weight = tl.exp(dA_s)
        if HAS_SEQ_IDX:
            seq_s = tl.load(seq_base + offs_s, mask=token_ok, other=-1)
            weight = tl.where(seq_s == seq_kept, weight, 0.0)
        acc += tl.dot(x_t.to(tl.float32), v.to(tl.float32) * weight[:, None], input_precision="tf32x3")

    out_base = ((batch * nchunks + chunk) * nheads + head) * headdim * dstate
    tl.store(out_ptr + out_base + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=(offs_p < headdim)[:, None] & (offs_n < dstate)[None, :])


@triton.jit
def chunk_state_bwd_tile(key_s, grad_state, dA_s, dA_end, keep):
    """The chunk-state backward for a block of a chunk's tokens s (``keep``: the tokens that count), one block
    of the contracted dimension at a time (the caller sums the blocks).

    With key_s = B_s (S, K) and grad_state a (K, O) block of Gᵀ: ``dx_s / dt_s``; with key_s = x_s (S, K) and
    a (K, O) block of G: ``dB_s / dt_s``. Returns ``exp(Λ_end − Λ_s) · key_s grad_state`` (S, O) float32;
    dA_s (S,), dA_end scalar, grad_state float32.
    """
    to_end = tl.where(keep, tl.exp(dA_end - dA_s), 0.0)[:, None]
    return tl.dot(key_s.to(tl.float32), grad_state, input_precision="tf32x3") * to_end


@triton.autotune(configs=configs("_chunk_state_varlen_kernel"),
                 key=["CHUNK", "BLOCK_P", "BLOCK_N"])
@triton.jit
def _chunk_state_varlen_kernel(x_ptr, B_ptr, dt_chunked_ptr, dA_cumsum_ptr, states_ptr, cu_seqlens_ptr, out_ptr,
                               nheads, ngroups, headdim, dstate, nchunks, CHUNK: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_pn = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    group = head // (nheads // ngroups)
    n_pblocks = tl.cdiv(headdim, BLOCK_P)
    offs_p = (pid_pn % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn // n_pblocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    last_token = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int64) - 1
    chunk = last_token // CHUNK
    chunk_start = chunk * CHUNK
    last = last_token - chunk_start                                 # the sequence's end within its last chunk
    chunked_base = (head * nchunks + chunk) * CHUNK
    dA_last = tl.load(dA_cumsum_ptr + chunked_base + last)

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for s0 in range(tl.maximum(start - chunk_start, 0), last + 1, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        token_ok = offs_s <= last
        x_t = tl.load(x_ptr + ((chunk_start + offs_s[None, :]) * nheads + head) * headdim + offs_p[:, None],
                      mask=p_ok[:, None] & token_ok[None, :], other=0.0)
        b_s = tl.load(B_ptr + ((chunk_start + offs_s[:, None]) * ngroups + group) * dstate + offs_n[None, :],
                      mask=token_ok[:, None] & n_ok[None, :], other=0.0)
        dA_s = tl.load(dA_cumsum_ptr + chunked_base + offs_s, mask=token_ok, other=0.0)
        dt_s = tl.load(dt_chunked_ptr + chunked_base + offs_s, mask=token_ok, other=0.0)
        weight = tl.exp(tl.where(token_ok, dA_last - dA_s, float("-inf"))) * dt_s
        acc += tl.dot(x_t.to(tl.float32), b_s.to(tl.float32) * weight[:, None], input_precision="tf32x3")
    if (start < chunk_start) | (start == 0):  # the state entering the chunk is this sequence's
        entering = tl.load(states_ptr + (chunk * nheads + head) * headdim * dstate + offs_p[:, None] * dstate
                           + offs_n[None, :], mask=p_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.exp(dA_last) * entering
    tl.store(out_ptr + (seq * nheads + head) * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=p_ok[:, None] & n_ok[None, :])


def _blocks(p: int, n: int) -> tuple[int, int]:
    return min(64, max(16, triton.next_power_of_2(p))), min(64, max(16, triton.next_power_of_2(n)))


def chunk_state(x: torch.Tensor, v: torch.Tensor, dt_chunked: torch.Tensor, dA_cumsum: torch.Tensor,
                decay_to_end: bool, seq_idx=None) -> torch.Tensor:
    """Per-chunk states ``Σ_s w_s x_s ⊗ v_s``.

    Args:
        x: (b, l, h, p) (x, or dy in chunk scan's backward); v: (b, l, g, n) (B, or C there).
        dt_chunked, dA_cumsum: (b, h, nchunks, CHUNK) float32 from :func:`chunk_cumsum`.
        decay_to_end: the forward weights (True) or the backward ones (False), see the module docstring.
        seq_idx: (b, l) int32 or None.
    Returns:
        (b, nchunks, h, p, n) float32.
    """
    b, l, h, p = x.shape
    g, n = v.shape[2], v.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    out = torch.empty((b, nchunks, h, p, n), device=x.device, dtype=torch.float32)
    block_p, block_n = _blocks(p, n)
    grid = (triton.cdiv(p, block_p) * triton.cdiv(n, block_n), b * nchunks, h)
    _chunk_state_kernel[grid](x, v, dt_chunked, dA_cumsum, seq_idx, out, l, h, g, p, n, nchunks,
                              DECAY_TO_END=decay_to_end, HAS_SEQ_IDX=seq_idx is not None, CHUNK=chunk_size,
                              BLOCK_P=block_p, BLOCK_N=block_n)
    return out


def chunk_state_varlen(x, B, dt_chunked, dA_cumsum, states, cu_seqlens) -> torch.Tensor:
    """Each packed sequence's final state, for batch 1.

    Args:
        x: (1, l, h, p); B: (1, l, g, n); dt_chunked, dA_cumsum: (1, h, nchunks, CHUNK) float32;
        states: (1, nchunks + 1, h, p, n) float32 from :func:`state_passing` (with seq_idx);
        cu_seqlens: (num_seqs + 1,) int32.
    Returns:
        (num_seqs, h, p, n) float32.
    """
    _, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    nseqs = cu_seqlens.shape[0] - 1
    out = torch.empty((nseqs, h, p, n), device=x.device, dtype=torch.float32)
    block_p, block_n = _blocks(p, n)
    grid = (triton.cdiv(p, block_p) * triton.cdiv(n, block_n), nseqs, h)
    _chunk_state_varlen_kernel[grid](x, B, dt_chunked, dA_cumsum, states, cu_seqlens, out, h, g, p, n, nchunks,
                                     CHUNK=chunk_size, BLOCK_P=block_p, BLOCK_N=block_n)
    return out
