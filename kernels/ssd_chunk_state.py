"""SSD step 2: each chunk's contribution to the state, ``Σ_s w_s · x_s ⊗ B_s`` over the chunk's tokens.

Forward (``decay_to_end=True``): ``w_s = exp(dA_cumsum[end] − dA_cumsum[s]) · dt_s``, the state a chunk
adds by its end (exponents ≤ 0 for A ≤ 0). Backward (``decay_to_end=False``) reuses the same contraction
with ``w_s = exp(dA_cumsum[s])``, ``x → dy`` and ``B → C``: the gradient that a chunk's outputs send to
the state entering it, ``Σ_t exp(dA_cumsum[t]) · dy_t ⊗ C_t``.

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
                 key=["CHUNK", "BLOCK_P", "BLOCK_N", "DECAY_TO_END"])
@triton.jit
def _chunk_state_kernel(x_ptr, v_ptr, dt_chunked_ptr, dA_cumsum_ptr, out_ptr,
                        seqlen, nheads, ngroups, headdim, dstate, nchunks,
                        DECAY_TO_END: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
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
        acc += tl.dot(x_t.to(tl.float32), v.to(tl.float32) * weight[:, None], input_precision="tf32x3")

    out_base = ((batch * nchunks + chunk) * nheads + head) * headdim * dstate
    tl.store(out_ptr + out_base + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=(offs_p < headdim)[:, None] & (offs_n < dstate)[None, :])


def chunk_state(x: torch.Tensor, v: torch.Tensor, dt_chunked: torch.Tensor, dA_cumsum: torch.Tensor,
                decay_to_end: bool) -> torch.Tensor:
    """Per-chunk states ``Σ_s w_s x_s ⊗ v_s``.

    Args:
        x: (b, l, h, p) (x, or dy in the backward); v: (b, l, g, n) (B, or C in the backward).
        dt_chunked, dA_cumsum: (b, h, nchunks, CHUNK) float32 from :func:`chunk_cumsum`.
        decay_to_end: the forward weights (True) or the backward ones (False), see the module docstring.
    Returns:
        (b, nchunks, h, p, n) float32.
    """
    b, l, h, p = x.shape
    g, n = v.shape[2], v.shape[3]
    nchunks, chunk_size = dA_cumsum.shape[2], dA_cumsum.shape[3]
    out = torch.empty((b, nchunks, h, p, n), device=x.device, dtype=torch.float32)
    block_p = min(64, max(16, triton.next_power_of_2(p)))
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    grid = (triton.cdiv(p, block_p) * triton.cdiv(n, block_n), b * nchunks, h)
    _chunk_state_kernel[grid](x, v, dt_chunked, dA_cumsum, out, l, h, g, p, n, nchunks, DECAY_TO_END=decay_to_end,
                              CHUNK=chunk_size, BLOCK_P=block_p, BLOCK_N=block_n)
    return out
