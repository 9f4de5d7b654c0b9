"""SSD step 3: pass the state from chunk to chunk, and the reverse pass of the backward.

Forward: ``S_0 = initial state (or 0)``, ``S_{c+1} = exp(dA_chunk_c) · S_c + chunk_state_c`` where
``dA_chunk_c`` is chunk c's total log-decay (the last entry of its ``dA_cumsum``). All ``nchunks + 1``
states are written: ``S_c`` enters chunk c and ``S_nchunks`` is the final state. With packed sequences
(``seq_idx``) the decay factor is 0 where chunk c ends in another sequence than the one entering it
(the token before the chunk's; for chunk 0 the row's first token), so the state restarts there.

Backward: with ``G_nchunks = d final state`` and ``G_c = exp(dA_chunk_c) · G_{c+1} + dS_c`` (the same decay factor) (dS_c: the
gradient chunk c's outputs send to ``S_c``), ``G_{c+1}`` is also the gradient of chunk c's own state and
``G_0`` that of the initial state. The gradient of ``dA_chunk_c`` is ``⟨G_{c+1}, S_{c+1}⟩`` (which folds in
the chunk-state term, see :mod:`lambdaskip.kernels.ssd`); each program writes its partial sum of it.

One program per (block of headdim·dstate, batch, head), looping over the chunks in order; float32.
"""
import torch
import triton
import triton.language as tl

BLOCK_SIZE = 1024


@triton.jit
def _decay(dA_cumsum_ptr, seq_idx_ptr, batch, head, chunk, nheads, nchunks, seqlen,
           HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr):
    """exp(chunk's total log-decay), or 0 where the chunk ends in another sequence than enters it."""
    decay = tl.exp(tl.load(dA_cumsum_ptr + ((batch * nheads + head) * nchunks + chunk) * CHUNK + CHUNK - 1))
    if HAS_SEQ_IDX:
        seq_last = tl.load(seq_idx_ptr + batch * seqlen + tl.minimum((chunk + 1) * CHUNK, seqlen) - 1)
        seq_prev = tl.load(seq_idx_ptr + batch * seqlen + tl.maximum(chunk * CHUNK - 1, 0))
        decay = tl.where(seq_last == seq_prev, decay, 0.0)
    return decay


@triton.jit
def _state_passing_kernel(chunk_states_ptr, initial_ptr, dA_cumsum_ptr, seq_idx_ptr, states_ptr, nheads, nchunks,
                          state_size, seqlen, HAS_INITIAL: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
                          CHUNK: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    batch = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    ok = offs < state_size
    if HAS_INITIAL:
        state = tl.load(initial_ptr + (batch * nheads + head) * state_size + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    tl.store(states_ptr + (batch * (nchunks + 1) * nheads + head) * state_size + offs, state, mask=ok)
    for chunk in range(nchunks):
        decay = _decay(dA_cumsum_ptr, seq_idx_ptr, batch, head, chunk, nheads, nchunks, seqlen, HAS_SEQ_IDX, CHUNK)
        added = tl.load(chunk_states_ptr + ((batch * nchunks + chunk) * nheads + head) * state_size + offs,
                        mask=ok, other=0.0)
        state = decay * state + added
        tl.store(states_ptr + ((batch * (nchunks + 1) + chunk + 1) * nheads + head) * state_size + offs, state,
                 mask=ok)


@triton.jit
def _state_passing_bwd_kernel(d_states_from_outputs_ptr, d_final_ptr, states_ptr, dA_cumsum_ptr, seq_idx_ptr,
                              d_states_ptr, end_partials_ptr, nheads, nchunks, state_size, seqlen,
                              HAS_SEQ_IDX: tl.constexpr, CHUNK: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    batch = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    nparts = tl.num_programs(0)
    ok = offs < state_size
    grad = tl.load(d_final_ptr + (batch * nheads + head) * state_size + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(d_states_ptr + ((batch * (nchunks + 1) + nchunks) * nheads + head) * state_size + offs, grad, mask=ok)
    for step in range(nchunks):
        chunk = nchunks - 1 - step
        state_after = tl.load(states_ptr + ((batch * (nchunks + 1) + chunk + 1) * nheads + head) * state_size + offs,
                              mask=ok, other=0.0)
        tl.store(end_partials_ptr + ((batch * nheads + head) * nchunks + chunk) * nparts + pid,
                 tl.sum(grad * state_after, axis=0))
        decay = _decay(dA_cumsum_ptr, seq_idx_ptr, batch, head, chunk, nheads, nchunks, seqlen, HAS_SEQ_IDX, CHUNK)
        from_outputs = tl.load(d_states_from_outputs_ptr + ((batch * nchunks + chunk) * nheads + head) * state_size
                               + offs, mask=ok, other=0.0)
        grad = decay * grad + from_outputs
        tl.store(d_states_ptr + ((batch * (nchunks + 1) + chunk) * nheads + head) * state_size + offs, grad, mask=ok)


def _block(state_size: int) -> int:
    return min(BLOCK_SIZE, triton.next_power_of_2(state_size))


def state_passing(chunk_states: torch.Tensor, dA_cumsum: torch.Tensor, initial_states, seq_idx=None,
                  seqlen: int = 0) -> torch.Tensor:
    """chunk_states (b, nchunks, h, p, n) float32, dA_cumsum (b, h, nchunks, CHUNK), initial_states
    (b, h, p, n) or None, seq_idx (b, seqlen) int32 or None → states (b, nchunks + 1, h, p, n) float32
    (entering each chunk, then final)."""
    b, nchunks, h, p, n = chunk_states.shape
    states = torch.empty((b, nchunks + 1, h, p, n), device=chunk_states.device, dtype=torch.float32)
    block = _block(p * n)
    grid = (triton.cdiv(p * n, block), b, h)
    _state_passing_kernel[grid](chunk_states, chunk_states if initial_states is None else initial_states, dA_cumsum,
                                seq_idx, states, h, nchunks, p * n, seqlen, HAS_INITIAL=initial_states is not None,
                                HAS_SEQ_IDX=seq_idx is not None, CHUNK=dA_cumsum.shape[-1], BLOCK_SIZE=block)
    return states


def state_passing_backward(d_states_from_outputs: torch.Tensor, d_final: torch.Tensor, states: torch.Tensor,
                           dA_cumsum: torch.Tensor, seq_idx=None, seqlen: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse pass.

    Args:
        seq_idx, seqlen: as in :func:`state_passing`.
        d_states_from_outputs: (b, nchunks, h, p, n) float32, ``Σ_t exp(dA_cumsum[t]) dy_t ⊗ C_t`` per chunk.
        d_final: (b, h, p, n) gradient of the final state; states: (b, nchunks + 1, h, p, n) from the forward.
    Returns:
        d_states (b, nchunks + 1, h, p, n) float32 (``G_c``: entering chunk c; the last is d_final) and
        end_partials (b, h, nchunks, nparts) float32 whose sum over the last axis is the gradient of each
        chunk's total log-decay.
    """
    b, nchunks, h, p, n = d_states_from_outputs.shape
    block = _block(p * n)
    nparts = triton.cdiv(p * n, block)
    d_states = torch.empty((b, nchunks + 1, h, p, n), device=states.device, dtype=torch.float32)
    end_partials = torch.empty((b, h, nchunks, nparts), device=states.device, dtype=torch.float32)
    _state_passing_bwd_kernel[(nparts, b, h)](d_states_from_outputs, d_final, states, dA_cumsum, seq_idx, d_states,
                                              end_partials, h, nchunks, p * n, seqlen,
                                              HAS_SEQ_IDX=seq_idx is not None, CHUNK=dA_cumsum.shape[-1],
                                              BLOCK_SIZE=block)
    return d_states, end_partials
