"""The four steps of the chunked SSD (Mamba-2 scan), one reference each: the specification of each kernel.

:func:`lambdaskip.reference.ssd.ssd_scan_chunked` is their composition. Each function computes in
its inputs' dtype (the tests pass float64) and uses the kernels' layouts, so that a step's kernel is
tested against its own reference (tests/test_ssd_steps.py)::

    x (b, l, h, p)    B, C (b, l, g, n)    seq_idx (b, l) integer or None
    dt_chunked, dA_cumsum (b, h, nchunks, Q)     chunk_states (b, nchunks, h, p, n)
    states (b, nchunks + 1, h, p, n): the state entering each chunk, then the final state

Λ ≡ ``dA_cumsum``: the log-decay from a chunk's start to token t (inclusive). Tokens past the end of
the sequence are padding with dt = 0 (no decay, no update).

Packed sequences (``seq_idx``): the state is reset where ``seq_idx`` changes, inside a chunk too. Let
``last(c)`` be the sequence of chunk c's last real token and ``prev(c)`` that of the token before
the chunk (for chunk 0: the row's first token, so the initial state belongs to the row's first
sequence). Then a token only sees tokens of its own sequence, a chunk adds to the state only the
tokens of ``last(c)``, and a state passes into chunk c only to the tokens of ``prev(c)``, and on to
the next chunk only if ``last(c) == prev(c)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) → (b, l, nheads, n): each group shared by nheads // g consecutive heads."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def _chunked(t: torch.Tensor, chunk_size: int, mode: str = "constant") -> torch.Tensor:
    """Pad the time axis (dim 1) of ``t`` to a multiple of ``chunk_size`` and split it: (b, c, Q, ...)."""
    pad = (-t.shape[1]) % chunk_size
    if pad and mode == "replicate":
        t = torch.cat([t, t[:, -1:].expand(-1, pad, *t.shape[2:])], dim=1)
    elif pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.unflatten(1, (-1, chunk_size))


def chunk_sequences(seq_idx: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """seq_idx (b, l) → per token (b, c, Q) (padding repeats the last token's), ``last`` and ``prev`` (b, c)."""
    per_token = _chunked(seq_idx, chunk_size, mode="replicate")
    last = per_token[:, :, -1]
    prev = torch.cat([seq_idx[:, :1], last[:, :-1]], dim=1)
    return per_token, last, prev


def chunk_cumsum(dt: torch.Tensor, A: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1. dt (b, l, h) effective steps, A (h,) → dt_chunked and Λ = cumsum(dt·A) per chunk, (b, h, c, Q)."""
    dt_chunked = _chunked(dt, chunk_size).permute(0, 3, 1, 2)
    return dt_chunked, torch.cumsum(dt_chunked * A[:, None, None], dim=-1)


def chunk_state(x: torch.Tensor, B: torch.Tensor, dt_chunked: torch.Tensor, dA_cumsum: torch.Tensor,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Step 2. What each chunk adds to the state by its end: ``Σ_s exp(Λ_end − Λ_s) dt_s x_s ⊗ B_s`` over the
    chunk's tokens s (of sequence ``last(c)`` only) → (b, c, h, p, n)."""
    chunk_size = dA_cumsum.shape[-1]
    xs = _chunked(x, chunk_size)                                            # (b, c, Q, h, p)
    Bs = _chunked(heads_of_groups(B, x.shape[2]), chunk_size)               # (b, c, Q, h, n)
    weight = torch.exp(dA_cumsum[..., -1:] - dA_cumsum) * dt_chunked        # (b, h, c, Q), exponents ≤ 0
    if seq_idx is not None:
        per_token, last, _ = chunk_sequences(seq_idx, chunk_size)
        weight = weight * (per_token == last[..., None])[:, None]
    return torch.einsum("bcshn,bhcs,bcshp->bchpn", Bs, weight, xs)


def state_passing(chunk_states: torch.Tensor, dA_cumsum: torch.Tensor, initial_states: torch.Tensor | None = None,
                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Step 3. ``S_0`` = initial_states (or 0), ``S_{c+1} = exp(Λ_end,c) S_c + chunk_states_c`` (the decayed term
    dropped where chunk c's last token starts another sequence than ``prev(c)``) → (b, c + 1, h, p, n)."""
    b, nchunks, h, p, n = chunk_states.shape
    decay = torch.exp(dA_cumsum[..., -1])                                   # (b, h, c)
    if seq_idx is not None:
        _, last, prev = chunk_sequences(seq_idx, dA_cumsum.shape[-1])
        decay = decay * (last == prev)[:, None]
    state = (initial_states.to(chunk_states.dtype) if initial_states is not None
             else chunk_states.new_zeros(b, h, p, n))
    states = [state]
    for c in range(nchunks):
        state = decay[:, :, c, None, None] * state + chunk_states[:, c]
        states.append(state)
    return torch.stack(states, dim=1)


def chunk_scan(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt_chunked: torch.Tensor, dA_cumsum: torch.Tensor,
               states: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Step 4. The outputs (b, l, h, p): for token t of chunk c,
    ``y_t = exp(Λ_t) S_c C_t + Σ_{s ≤ t} (C_t·B_s) exp(Λ_t − Λ_s) dt_s x_s`` with s of t's sequence, and the
    state term only for tokens of ``prev(c)``."""
    b, l, h, p = x.shape
    chunk_size = dA_cumsum.shape[-1]
    xs = _chunked(x, chunk_size)
    Bs = _chunked(heads_of_groups(B, h), chunk_size)
    Cs = _chunked(heads_of_groups(C, h), chunk_size)
    q = torch.arange(chunk_size, device=x.device)
    keep = q[:, None] >= q[None, :]                                         # (Q, Q): t ≥ s
    state_mask = torch.ones_like(dA_cumsum, dtype=torch.bool)               # (b, h, c, Q)
    if seq_idx is not None:
        per_token, _, prev = chunk_sequences(seq_idx, chunk_size)
        keep = keep & (per_token[..., :, None] == per_token[..., None, :])[:, None]   # (b, 1, c, Q, Q)
        state_mask = (per_token == prev[..., None])[:, None].expand_as(dA_cumsum)
    # Mask before exp: only exponents ≤ 0 are exponentiated (no overflow for A ≤ 0).
    exponent = (dA_cumsum[..., :, None] - dA_cumsum[..., None, :]).masked_fill(~keep, float("-inf"))
    weights = torch.exp(exponent) * dt_chunked[..., None, :]                # (b, h, c, t, s)
    y = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", Cs, Bs, weights, xs)
    from_state = torch.exp(dA_cumsum) * state_mask
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", Cs, states[:, :-1].to(Cs.dtype), from_state)
    return y.flatten(1, 2)[:, :l]


def varlen_states(x: torch.Tensor, B: torch.Tensor, dt_chunked: torch.Tensor, dA_cumsum: torch.Tensor,
                  states: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Each packed sequence's final state (num_seqs, h, p, n), for batch 1 and ``cu_seqlens`` (num_seqs + 1,).

    For sequence i ending at token e in chunk c: ``exp(Λ_e) S_c`` if the sequence began before the chunk
    (or is the row's first, which owns the initial state), plus ``Σ exp(Λ_e − Λ_s) dt_s x_s ⊗ B_s`` over its
    tokens s ≤ e in the chunk.
    """
    chunk_size = dA_cumsum.shape[-1]
    h = x.shape[2]
    Bh = heads_of_groups(B, h)
    out = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        e = end - 1
        c, j = divmod(e, chunk_size)
        first = max(start, c * chunk_size)
        lam = dA_cumsum[0, :, c]                                            # (h, Q)
        weight = torch.exp(lam[:, j, None] - lam[:, first - c * chunk_size:j + 1]) \
            * dt_chunked[0, :, c, first - c * chunk_size:j + 1]             # (h, s)
        state = torch.einsum("hs,shp,shn->hpn", weight, x[0, first:end], Bh[0, first:end])
        if start < c * chunk_size or start == 0:
            state = state + torch.exp(lam[:, j])[:, None, None] * states[0, c].to(state.dtype)
        out.append(state)
    return torch.stack(out)
