"""SSD (Mamba-2 scan) forward and backward: the four steps of the chunked algorithm, composed.

Each step is one file holding its forward and backward kernels and launchers, with a float64
reference of its own in :mod:`lambdaskip.reference.ssd_steps` (Λ = ``dA_cumsum``, the in-chunk
cumulative log-decay; ``CHUNK`` tokens a chunk):

1. :mod:`~lambdaskip.kernels.ssd_chunk_cumsum` — Λ_t = Σ_{k≤t} dt_k A per chunk;
2. :mod:`~lambdaskip.kernels.ssd_chunk_state` — each chunk's added state ``Σ_s exp(Λ_end − Λ_s) dt_s x_s ⊗ B_s``;
3. :mod:`~lambdaskip.kernels.ssd_state_passing` — the state entering every chunk, and the final state;
4. :mod:`~lambdaskip.kernels.ssd_chunk_scan` — ``y_t = exp(Λ_t) S_c C_t + Σ_{s≤t} (C_t·B_s) exp(Λ_t − Λ_s) dt_s x_s``.

Backward (states recomputed by steps 1–3, then in reverse):

4. chunk scan's gradient into the entering states (chunk state's contraction with weights ``exp(Λ_t)``
   on (dy, C));
3. state passing's reverse pass: the gradients ``G_c`` of the states, and of each chunk's total decay;
4+2. chunk scan's rows (dC, ``row_t = C_t·dC_t``) and columns (dx, dB, ``ddt_direct_s = x_s·dx_s / dt_s``,
   with chunk state's backward from ``G`` fused in);
1. chunk cumsum's backward: dΛ_t = row_t − dt_t·ddt_direct_t (+ ⟨G_{c+1}, S_{c+1}⟩ at a chunk's end),
   reversed cumulative sum → ddt and dA.

Why dΛ takes that form: every term of the output and of the chunk states is a product of a factor
``exp(Λ_t − Λ_s)`` (or ``exp(Λ_t)``, ``exp(Λ_end − Λ_s)``) with factors linear in C_t and in dt_s x_s, so
the part of dΛ_t from the exponent's +Λ_t equals what the same term sends to C_t, dotted with C_t, and
the part from −Λ_s equals dt_s times what it sends to dt_s. Summing a chunk's added state into the
state-passing term turns the gradient of Λ_end into ⟨G_{c+1}, S_{c+1}⟩. Packed sequences (``seq_idx``)
only zero some of these terms, so the identities hold term by term.

Precision: products accumulate in float32. The forward's in-chunk products take the inputs' dtype
(tensor cores); the products that feed dΛ (the states, dC, the dx path) run on float32 operands with
``tf32x3`` dots, float32-accurate on a GPU, because dA and d dt_bias are sums over the whole sequence of
strongly cancelling terms: with 16-bit operands there, their float16 error grew with the length (5e-3 at
600 tokens against the reference's 2e-4).

The backward is deterministic: no atomics; the per-head dB and dC are summed over each group's heads,
and the per-program partial sums of dA and of the chunk-end terms are reduced afterwards.
"""
import torch

from lambdaskip.kernels.ssd_chunk_cumsum import chunk_cumsum, chunk_cumsum_backward
from lambdaskip.kernels.ssd_chunk_scan import chunk_scan, chunk_scan_backward
from lambdaskip.kernels.ssd_chunk_state import chunk_state, chunk_state_varlen
from lambdaskip.kernels.ssd_state_passing import state_passing, state_passing_backward


def _states(x, dt, A, B, chunk_size, initial_states, seq_idx):
    dt_chunked, dA_cumsum = chunk_cumsum(dt, A, chunk_size)
    added = chunk_state(x, B, dt_chunked, dA_cumsum, decay_to_end=True, seq_idx=seq_idx)
    return dt_chunked, dA_cumsum, state_passing(added, dA_cumsum, initial_states, seq_idx, x.shape[1])


def ssd_forward(x, dt, A, B, C, chunk_size, initial_states=None, seq_idx=None, cu_seqlens=None):
    """The scan ``y_t = C_t·h_t``, ``h_t = exp(dt_t A) h_{t−1} + dt_t x_t ⊗ B_t`` (no D, no gate).

    Args:
        x: (b, l, h, p) float16/bfloat16/float32, contiguous; dt: (b, l, h) float32 effective steps;
        A: (h,) float32; B, C: (b, l, g, n), contiguous; chunk_size: any int >= 1;
        initial_states: (b, h, p, n) or None; seq_idx: (b, l) int32 or None (packed sequences);
        cu_seqlens: (num_seqs + 1,) int32 or None (batch 1): return each sequence's final state.
    Returns:
        y (b, l, h, p) float32, the final state (b, h, p, n) float32 and the sequences' final states
        (num_seqs, h, p, n) float32 (a (0, h, p, n) tensor without cu_seqlens).
    """
    dt_chunked, dA_cumsum, states = _states(x, dt, A, B, chunk_size, initial_states, seq_idx)
    y = chunk_scan(x, B, C, dt_chunked, dA_cumsum, states, seq_idx)
    if cu_seqlens is None:
        varlen = x.new_zeros((0,) + states.shape[2:], dtype=torch.float32)
    else:
        varlen = chunk_state_varlen(x, B, dt_chunked, dA_cumsum, states, cu_seqlens)
    return y, states[:, -1].clone(), varlen


def _sum_heads_per_group(per_head: torch.Tensor, ngroups: int) -> torch.Tensor:
    """(b, l, h, n) → (b, l, g, n): each group's gradient is the sum over the heads that read it."""
    b, l, h, n = per_head.shape
    return per_head.view(b, l, ngroups, h // ngroups, n).sum(dim=3)


def ssd_backward(dy, d_final, x, dt, A, B, C, chunk_size, initial_states=None, seq_idx=None):
    """Gradients of :func:`ssd_forward`'s y and final state.

    Args:
        dy: (b, l, h, p) and d_final: (b, h, p, n), contiguous (any float dtype); the rest as in
        :func:`ssd_forward`.
    Returns:
        dx (x's dtype), ddt (float32), dA (float32), dB (B's dtype), dC (C's dtype) and d_initial_states
        (initial_states' dtype; a (0, h, p, n) float32 tensor when there is none).
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dt_chunked, dA_cumsum, states = _states(x, dt, A, B, chunk_size, initial_states, seq_idx)
    dy = dy.float()
    d_states_from_outputs = chunk_state(dy, C, dt_chunked, dA_cumsum, decay_to_end=False, seq_idx=seq_idx)
    d_states, end_partials = state_passing_backward(d_states_from_outputs, d_final, states, dA_cumsum, seq_idx, l)
    dx, dB_heads, dC_heads, ddt_direct, row_terms = chunk_scan_backward(dy, x, B, C, dt_chunked, dA_cumsum, states,
                                                                        d_states, seq_idx)
    ddt, dA = chunk_cumsum_backward(row_terms, end_partials, ddt_direct, dt_chunked, A, l)
    d_initial = (d_states[:, 0].to(initial_states.dtype) if initial_states is not None
                 else x.new_zeros((0, h, p, n), dtype=torch.float32))
    return (dx, ddt, dA, _sum_heads_per_group(dB_heads, g).to(B.dtype),
            _sum_heads_per_group(dC_heads, g).to(C.dtype), d_initial)
