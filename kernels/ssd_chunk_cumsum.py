"""SSD step 1: per-chunk cumulative log-decay, and its backward.

Forward: for each chunk of ``CHUNK`` tokens, ``dA_cumsum[t] = Σ_{k≤t} dt_k·A`` (the log of the decay
from the chunk's start to token t, ≤ 0 for A ≤ 0), and ``dt`` copied into the same chunked layout.
Positions past the sequence end get dt = 0, so they neither decay nor update the state. Any chunk
size works: the kernels run on a power-of-two block of ``BLOCK_CHUNK >= CHUNK`` steps, masked.

Backward: the gradient with respect to ``dA_cumsum[t]`` is ``C_t·dC_t − dt_t·ddt_direct_t`` (plus, at a
chunk's last step, the state-passing term); a reverse cumulative sum turns it into the gradient ``g_t``
of each increment ``dt_t·A``, which is split into ``ddt_t = ddt_direct_t + A·g_t`` and ``dA = Σ dt_t·g_t``.

Layouts: dt (b, l, h) float32; chunked tensors (b, h, nchunks, CHUNK) float32.
"""
import torch
import triton
import triton.language as tl

BLOCK_H = 8


@triton.jit
def _chunk_cumsum_kernel(dt_ptr, A_ptr, dt_chunked_ptr, dA_cumsum_ptr, seqlen, nheads, nchunks,
                         CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    steps = tl.arange(0, BLOCK_CHUNK)
    tokens = pid_c * CHUNK + steps
    head_ok = heads < nheads
    step_ok = (steps < CHUNK)[:, None] & head_ok[None, :]
    dt = tl.load(dt_ptr + (pid_b * seqlen + tokens[:, None]) * nheads + heads[None, :],
                 mask=(tokens < seqlen)[:, None] & step_ok, other=0.0)
    A = tl.load(A_ptr + heads, mask=head_ok, other=0.0)
    dA_cumsum = tl.cumsum(dt * A[None, :], axis=0)
    out = ((pid_b * nheads + heads[None, :]) * nchunks + pid_c) * CHUNK + steps[:, None]
    tl.store(dt_chunked_ptr + out, dt, mask=step_ok)
    tl.store(dA_cumsum_ptr + out, dA_cumsum, mask=step_ok)


@triton.jit
def _chunk_cumsum_bwd_kernel(row_terms_ptr, end_partials_ptr, ddt_direct_ptr, dt_chunked_ptr, A_ptr, ddt_ptr,
                             dA_partial_ptr, seqlen, nheads, nchunks, nparts,
                             CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, BLOCK_H: tl.constexpr,
                             BLOCK_PARTS: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    steps = tl.arange(0, BLOCK_CHUNK)
    tokens = pid_c * CHUNK + steps
    head_ok = heads < nheads
    step_ok = (steps < CHUNK)[:, None] & head_ok[None, :]
    chunked = ((pid_b * nheads + heads[None, :]) * nchunks + pid_c) * CHUNK + steps[:, None]
    dt = tl.load(dt_chunked_ptr + chunked, mask=step_ok, other=0.0)
    ddt_direct = tl.load(ddt_direct_ptr + chunked, mask=step_ok, other=0.0)
    d_cumsum = tl.load(row_terms_ptr + chunked, mask=step_ok, other=0.0) - dt * ddt_direct
    # The chunk's total log-decay (its last entry) also carries the state-passing gradient.
    parts = tl.arange(0, BLOCK_PARTS)
    end = tl.sum(tl.load(end_partials_ptr + ((pid_b * nheads + heads[:, None]) * nchunks + pid_c) * nparts
                         + parts[None, :], mask=head_ok[:, None] & (parts < nparts)[None, :], other=0.0), axis=1)
    d_cumsum += tl.where(steps[:, None] == CHUNK - 1, end[None, :], 0.0)
    d_increment = tl.cumsum(d_cumsum, axis=0, reverse=True)
    A = tl.load(A_ptr + heads, mask=head_ok, other=0.0)
    ddt = ddt_direct + A[None, :] * d_increment
    tl.store(ddt_ptr + (pid_b * seqlen + tokens[:, None]) * nheads + heads[None, :], ddt,
             mask=(tokens < seqlen)[:, None] & step_ok)
    tl.store(dA_partial_ptr + (pid_b * nchunks + pid_c) * nheads + heads, tl.sum(dt * d_increment, axis=0),
             mask=head_ok)


def _block_chunk(chunk_size: int) -> int:
    return max(16, triton.next_power_of_2(chunk_size))


def chunk_cumsum(dt: torch.Tensor, A: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dt (b, l, h) float32, A (h,) float32 → (dt_chunked, dA_cumsum), each (b, h, nchunks, chunk_size) float32."""
    b, l, h = dt.shape
    nchunks = triton.cdiv(l, chunk_size)
    dt_chunked = torch.empty((b, h, nchunks, chunk_size), device=dt.device, dtype=torch.float32)
    dA_cumsum = torch.empty_like(dt_chunked)
    grid = (b, nchunks, triton.cdiv(h, BLOCK_H))
    _chunk_cumsum_kernel[grid](dt, A, dt_chunked, dA_cumsum, l, h, nchunks, CHUNK=chunk_size,
                               BLOCK_CHUNK=_block_chunk(chunk_size), BLOCK_H=BLOCK_H)
    return dt_chunked, dA_cumsum


def chunk_cumsum_backward(row_terms, end_partials, ddt_direct, dt_chunked, A, seqlen):
    """Gradients through :func:`chunk_cumsum` and the direct dt terms.

    Args:
        row_terms: (b, h, nchunks, CHUNK) ``C_t·dC_t`` per head (the output side of the dA_cumsum gradient).
        end_partials: (b, h, nchunks, nparts) partial sums of the gradient with respect to each chunk's
            total log-decay (from state passing); summed here.
        ddt_direct: (b, h, nchunks, CHUNK) gradient with respect to dt where it multiplies x.
        dt_chunked: (b, h, nchunks, CHUNK); A: (h,).
    Returns:
        ddt (b, seqlen, h) float32 and dA (h,) float32.
    """
    b, h, nchunks, chunk_size = row_terms.shape
    nparts = end_partials.shape[-1]
    ddt = torch.empty((b, seqlen, h), device=row_terms.device, dtype=torch.float32)
    dA_partial = torch.empty((b, nchunks, h), device=row_terms.device, dtype=torch.float32)
    grid = (b, nchunks, triton.cdiv(h, BLOCK_H))
    _chunk_cumsum_bwd_kernel[grid](row_terms, end_partials, ddt_direct, dt_chunked, A, ddt, dA_partial, seqlen, h,
                                   nchunks, nparts, CHUNK=chunk_size, BLOCK_CHUNK=_block_chunk(chunk_size),
                                   BLOCK_H=BLOCK_H,
                                   BLOCK_PARTS=max(2, triton.next_power_of_2(nparts)))
    return ddt, dA_partial.sum(dim=(0, 1))
