"""The SSD decode step: the Triton kernel (on CPU under TRITON_INTERPRET=1) against the float64 reference, and
token-by-token decoding against one ``ssd_scan`` over the whole sequence (outputs and final state).

Tolerances (lambdaskip.testing): y in its inputs' dtype; a float32 state updated from 16-bit inputs is
compared at float32's tolerance, since the kernel computes it in float32 from the same (rounded) inputs.
"""
import pytest
import torch

from lambdaskip.ops import ssd_scan, ssd_step
from lambdaskip.reference.ssd import ssd_scan_chunked
from lambdaskip.reference.ssd_step import ssd_step as reference_ssd_step
from lambdaskip.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64


def make_inputs(b, h, p, n, g, *, seed, dtype, state_dtype=torch.float32, seqlen=None, D_shape="h", z=True,
                dt_bias=True):
    """Random decode inputs (A < 0; dt around softplus's knee), one token, or ``seqlen`` tokens along dim 1."""
    gen = torch.Generator().manual_seed(seed)
    tokens = () if seqlen is None else (seqlen,)

    def rand(*shape, scale=1.0, shift=0.0, to=dtype):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift).to(dtype=to, device=DEVICE)

    t = {"state": rand(b, h, p, n, to=state_dtype), "x": rand(b, *tokens, h, p), "dt": rand(b, *tokens, h, scale=0.5),
         "A": (-torch.rand(h, generator=gen, dtype=F64) * 1.5 - 0.1).to(dtype=dtype, device=DEVICE),
         "B": rand(b, *tokens, g, n), "C": rand(b, *tokens, g, n)}
    if D_shape == "h":
        t["D"] = rand(h)
    elif D_shape == "hp":
        t["D"] = rand(h, p)
    if z:
        t["z"] = rand(b, *tokens, h, p)
    if dt_bias:
        t["dt_bias"] = rand(h, scale=0.5, shift=-0.5)
    return t


def split(t):
    """(state, the step's other keyword arguments)."""
    rest = dict(t)
    return rest.pop("state"), rest


CASES = [  # (b, h, p, n, g, D_shape, z, dt_bias, dt_softplus, dt_limit)
    (1, 1, 4, 16, 1, None, False, False, False, (0.0, float("inf"))),
    (2, 3, 20, 16, 1, "h", True, True, True, (0.0, float("inf"))),
    (3, 4, 17, 24, 2, "hp", True, False, True, (0.05, 0.6)),
    (1, 2, 33, 40, 2, "h", False, True, True, (0.0, float("inf"))),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_triton_step_matches_float64_reference(case, dtype, seed):
    b, h, p, n, g, D_shape, z, dt_bias, dt_softplus, dt_limit = case
    t = make_inputs(b, h, p, n, g, seed=seed, dtype=dtype, D_shape=D_shape, z=z, dt_bias=dt_bias)
    state, args = split(t)
    state64, args64 = split({k: v.to(F64) for k, v in t.items()})
    y64, new64 = reference_ssd_step(state64, **args64, dt_softplus=dt_softplus, dt_limit=dt_limit)
    y = ssd_step(state, **args, dt_softplus=dt_softplus, dt_limit=dt_limit, backend="triton")
    assert y.dtype == dtype and state.dtype == torch.float32
    assert_close(y, y64, dtype, "y")
    assert_close(state, new64, torch.float32, "state (updated in place)")


def test_half_state_rounds_like_the_reference():
    t = make_inputs(2, 2, 20, 16, 1, seed=3, dtype=torch.float16, state_dtype=torch.float16)
    state, args = split(t)
    y_ref, new_ref = reference_ssd_step(state, **args, dt_softplus=True)
    y = ssd_step(state, **args, dt_softplus=True, backend="triton")
    assert state.dtype == torch.float16
    assert_close(y, y_ref, torch.float16, "y")
    assert_close(state, new_ref, torch.float16, "state")


def test_reference_backend_updates_in_place_and_leaves_inputs_alone():
    t = make_inputs(2, 2, 5, 7, 1, seed=4, dtype=torch.float32)
    state, args = split(t)
    before = {k: v.clone() for k, v in args.items()}
    y_ref, new_ref = reference_ssd_step(state.clone(), **args)
    y = ssd_step(state, **args, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(state, new_ref, rtol=0, atol=0)
    for k, v in args.items():
        assert torch.equal(v, before[k]), k


def decode(t, dt_softplus, dt_limit, backend):
    """Feed ``t``'s sequence token by token; returns (y (b, l, h, p), final state)."""
    state = t["state"].clone()
    per_token = {k: v for k, v in t.items() if k in ("x", "dt", "B", "C", "z")}
    shared = {k: v for k, v in t.items() if k in ("A", "D", "dt_bias")}
    ys = [ssd_step(state, **{k: v[:, i] for k, v in per_token.items()}, **shared, dt_softplus=dt_softplus,
                   dt_limit=dt_limit, backend=backend)
          for i in range(t["x"].shape[1])]
    return torch.stack(ys, dim=1), state


def scan(fn, t, dt_softplus, dt_limit, **backend):
    args = {k: v for k, v in t.items() if k not in ("x", "dt", "A", "B", "C", "state")}
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=16, **args, dt_softplus=dt_softplus,
              dt_limit=dt_limit, initial_states=t["state"], return_final_states=True, **backend)


@pytest.mark.parametrize("case", [(2, 21, 2, 20, 16, 1, "h", (0.0, float("inf"))),
                                  (1, 18, 4, 12, 24, 2, "hp", (0.05, 0.6))])
def test_token_by_token_decoding_equals_one_scan(case):
    b, l, h, p, n, g, D_shape, dt_limit = case
    # float64: the same math, so decoding and the chunked scan agree to rounding
    t64 = make_inputs(b, h, p, n, g, seed=5, dtype=F64, state_dtype=F64, seqlen=l, D_shape=D_shape)
    y_scan, final_scan = scan(ssd_scan_chunked, t64, True, dt_limit)
    y_dec, final_dec = decode(t64, True, dt_limit, "reference")
    assert_close(y_dec, y_scan, F64, "y (reference decode vs chunked scan)")
    assert_close(final_dec, final_scan, F64, "final state (reference decode vs chunked scan)")
    # Triton step vs Triton scan on the same float32 / float16 inputs (float32 state for the decode)
    for dtype in (torch.float32, torch.float16):
        t = {k: v.to(dtype if k != "state" else torch.float32) for k, v in t64.items()}
        y_dec, final_dec = decode(t, True, dt_limit, "triton")
        y_scan, final_scan = scan(ssd_scan, {**t, "state": t["state"].to(dtype)}, True, dt_limit, backend="triton")
        assert y_dec.dtype == dtype
        assert_close(y_dec, y_scan.to(F64), dtype, f"y ({dtype} decode vs scan)")
        assert_close(final_dec, final_scan.to(F64), dtype, f"final state ({dtype} decode vs scan)")


@pytest.mark.parametrize("change, error, match", [
    (lambda t: t.update(x=t["x"][:, :, :-1]), ValueError, "x must have shape"),
    (lambda t: t.update(dt=t["dt"][:, None]), ValueError, "dt must have shape"),
    (lambda t: t.update(A=t["A"].int()), TypeError, "A must have a floating dtype"),
    (lambda t: t.update(B=t["B"].repeat(1, 3, 1)), ValueError, "B: nheads"),
    (lambda t: t.update(C=t["C"][..., :-1]), ValueError, "C must have shape"),
    (lambda t: t.update(D=torch.ones(3, 1)), ValueError, "D must have shape"),
    (lambda t: t.update(z=t["z"][0]), ValueError, "z must have shape"),
    (lambda t: t.update(dt_bias=[0.0]), TypeError, "dt_bias must be a torch.Tensor"),
    (lambda t: t.update(state=t["state"].transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "contiguous"),
    (lambda t: t.update(state=t["state"][0]), ValueError, "state must have 4 dimensions"),
    (lambda t: t.update(dt_softplus=1), TypeError, "dt_softplus must be a bool"),
    (lambda t: t.update(dt_limit=(1.0, 0.5)), ValueError, "dt_limit"),
    (lambda t: t["x"].requires_grad_(True), ValueError, "x requires grad"),
])
def test_bad_input_is_named(change, error, match):
    t = make_inputs(2, 2, 5, 7, 1, seed=6, dtype=torch.float32)
    change(t)
    state, args = split(t)
    with pytest.raises(error, match=match):
        ssd_step(state, **args)


def test_forced_triton_refuses_what_it_cannot_run():
    t = make_inputs(1, 2, 5, 7, 1, seed=7, dtype=F64, state_dtype=F64)
    state, args = split(t)
    with pytest.raises(TypeError, match="state: backend='triton' takes float16"):
        ssd_step(state, **args, backend="triton")
    ssd_step(state, **args)  # "auto" takes float64 to the reference
    t = make_inputs(1, 1, 2, 257, 1, seed=7, dtype=torch.float32)
    state, args = split(t)
    with pytest.raises(ValueError, match="dstate <= 256"):
        ssd_step(state, **args, backend="triton")


def test_opcheck_and_compile():
    from lambdaskip.ops.ssd_step import ssd_step_triton
    t = make_inputs(2, 2, 5, 7, 1, seed=8, dtype=torch.float32, D_shape="hp")
    state, a = split(t)
    quick = ("test_schema", "test_faketensor")
    torch.library.opcheck(ssd_step_triton, (state, a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                            a["dt_bias"], True, 0.0, float("inf")), test_utils=quick)
    expected_state = state.clone()
    expected = ssd_step(expected_state, **a, dt_softplus=True, backend="reference")
    compiled = torch.compile(lambda s, kw: ssd_step(s, **kw, dt_softplus=True, backend="triton"), fullgraph=True,
                             backend="aot_eager")
    y = compiled(state, a)
    assert_close(y, expected, torch.float32, "compiled y")
    assert_close(state, expected_state, torch.float32, "compiled state")
