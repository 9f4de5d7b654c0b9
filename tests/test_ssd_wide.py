"""Wide heads and states on the SSD Triton backend (headdim, dstate up to 256) against the float64 reference.

No program holds headdim or dstate whole: the forward loops over dstate in blocks, the backward splits its
outputs (dC, dx, dB) into blocks of at most 64 and loops over the contracted dimension, with the sums across
blocks (row terms, ddt_direct) written as partials. These sizes make every such loop and partial run more
than once under the interpreter (blocks of 32 there), with ragged last blocks (72, 200), at chunk sizes that
are and are not powers of two. Outputs, final states and all gradients; small lengths and one or two heads
keep the interpreter fast.
"""
import warnings

import pytest
import torch

from lambdaskip.ops import prefer_backend
from lambdaskip.ops.ssd import TRITON_MAX_DIM, ssd_scan
from lambdaskip.reference.ssd import ssd_scan_chunked
from lambdaskip.testing import assert_close, count_custom_ops
from ssd_inputs import DEVICE, make_inputs, split
from test_ssd_triton import check_against_float64

pytest.importorskip("triton")

WIDE = [  # (headdim, dstate, chunk_size, seed)
    (16, 256, 24, 0),
    (256, 16, 48, 1),
    (72, 200, 8, 2),
    (256, 256, 64, 3),
    (40, 256, 256, 4),
]


@pytest.mark.parametrize("p,n,chunk_size,seed", WIDE, ids=[f"p{p}-n{n}-chunk{c}" for p, n, c, _ in WIDE])
def test_wide_heads_and_states_match_float64(p, n, chunk_size, seed):
    inputs = make_inputs(1, 29, 2 if p * n <= 4096 else 1, p, n, 1, seed=seed, dtype=torch.float32,
                         D_shape="h", dt_bias=True, initial_states=True)
    with count_custom_ops() as calls:
        check_against_float64(inputs, chunk_size, torch.float32, dt_softplus=True, seed=seed)
    assert calls["ssd_scan_core"] == 1 and calls["ssd_scan_core_backward"] == 1, calls


def test_wide_packed_rows_match_float64():
    """seq_idx boundaries inside chunks, two rows, at headdim 72 and dstate 200 (ragged last blocks)."""
    inputs = make_inputs(2, 21, 1, 72, 200, 1, seed=7, dtype=torch.float32, initial_states=True)
    seq_idx = torch.tensor([[0] * 5 + [1] * 11 + [2] * 5, [0] * 13 + [1] * 8], dtype=torch.int32, device=DEVICE)
    check_against_float64(inputs, 16, torch.float32, seq_idx=seq_idx, seed=7)


def test_auto_runs_triton_up_to_the_limit_and_warns_only_above():
    assert TRITON_MAX_DIM == 256
    t = make_inputs(1, 9, 1, TRITON_MAX_DIM, TRITON_MAX_DIM, 1, seed=5, dtype=torch.float32)
    args, _ = split(t)
    with prefer_backend("triton"), warnings.catch_warnings(), count_custom_ops() as calls:
        warnings.simplefilter("error")
        y = ssd_scan(*args, 16)
    assert calls["ssd_scan_core"] == 1, calls
    assert_close(y, ssd_scan_chunked(*(a.double() for a in args), 16), torch.float32, "y")

    for p, n in ((4, TRITON_MAX_DIM + 1), (TRITON_MAX_DIM + 1, 4)):
        t = make_inputs(1, 5, 1, p, n, 1, seed=6, dtype=torch.float32)
        args, _ = split(t)
        with prefer_backend("triton"), count_custom_ops() as calls:
            with pytest.warns(UserWarning, match=f"headdim={p}, dstate={n}"):
                ssd_scan(*args, 16)
        assert calls["ssd_scan_core"] == 0, calls
        with pytest.raises(ValueError, match="headdim" if p > TRITON_MAX_DIM else "dstate"):
            ssd_scan(*args, 16, backend="triton")


@pytest.mark.parametrize("p,n", [(256, 256), (72, 200)])
def test_wide_decode_step_matches_float64(p, n):
    """The decode step holds dstate whole (up to 256) and splits headdim into blocks of rows."""
    from lambdaskip.ops import ssd_step
    from lambdaskip.reference.ssd_step import ssd_step as reference_ssd_step
    g = torch.Generator().manual_seed(p + n)
    b, h = 2, 1
    state = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    args = {"x": torch.randn(b, h, p, generator=g, dtype=torch.float64),
            "dt": 0.05 + torch.rand(b, h, generator=g, dtype=torch.float64),
            "A": -0.1 - torch.rand(h, generator=g, dtype=torch.float64),
            "B": torch.randn(b, 1, n, generator=g, dtype=torch.float64),
            "C": torch.randn(b, 1, n, generator=g, dtype=torch.float64),
            "D": torch.randn(h, p, generator=g, dtype=torch.float64),
            "z": torch.randn(b, h, p, generator=g, dtype=torch.float64)}
    want_y, want_state = reference_ssd_step(state, **args, dt_softplus=True)
    got_state = state.float().to(DEVICE)
    with count_custom_ops() as calls:
        got_y = ssd_step(got_state, **{k: v.float().to(DEVICE) for k, v in args.items()}, dt_softplus=True,
                         backend="triton")
    assert calls["ssd_step"] == 1, calls
    assert_close(got_y, want_y, torch.float32, "y")
    assert_close(got_state, want_state, torch.float32, "state (updated in place)")
