"""SSD (Mamba-2 scan): the chunked reference against the literal recurrence, gradients, validation.

The Triton kernels are tested against these references in tests/test_ssd_triton.py.
"""
import inspect
import itertools

import pytest
import torch

from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.reference.ssd import ssd_scan_chunked, ssd_scan_sequential
from lambdaskip.testing import assert_close
from ssd_inputs import F64, packed_seq_idx, split
from ssd_inputs import make_inputs as shared_inputs


def make_inputs(b=2, l=37, h=4, p=3, n=5, g=1, *, D_shape="h", **kwargs):
    """The shared random inputs (tests/ssd_inputs.py) on CPU, as (x, dt, A, B, C) and keyword arguments."""
    return split(shared_inputs(b, l, h, p, n, g, D_shape=D_shape, device="cpu", **kwargs))


CASES = [  # (l, chunk_size, g, D_shape, z, dt_bias + softplus, initial_states)
    (37, 16, 1, None, False, False, False),
    (37, 16, 4, "h", True, True, True),
    (37, 32, 2, "hp", False, True, False),
    (100, 32, 1, "hp", True, False, True),
    (100, 16, 4, None, True, True, True),
    (16, 16, 1, "h", False, False, True),
    (5, 64, 4, "h", True, True, False),
]


@pytest.mark.parametrize("l,chunk_size,g,D_shape,z,dt_extra,initial_states", CASES)
def test_chunked_matches_sequential(l, chunk_size, g, D_shape, z, dt_extra, initial_states):
    for seed in (0, 1):
        args, kwargs = make_inputs(l=l, g=g, seed=seed, D_shape=D_shape, z=z, dt_bias=dt_extra,
                                   initial_states=initial_states)
        kwargs.update(dt_softplus=dt_extra, return_final_states=True)
        y_seq, s_seq = ssd_scan_sequential(*args, chunk_size, **kwargs)
        y_chk, s_chk = ssd_scan_chunked(*args, chunk_size, **kwargs)
        assert y_chk.dtype == F64 and s_chk.dtype == F64
        assert (y_chk - y_seq).abs().max() <= 1e-10 * y_seq.abs().max()
        assert (s_chk - s_seq).abs().max() <= 1e-10 * s_seq.abs().max()


def test_dt_limit_clamps():
    args, kwargs = make_inputs(l=20, seed=3, dt_bias=True)
    kwargs.update(dt_softplus=True, dt_limit=(0.2, 0.6))
    y_seq = ssd_scan_sequential(*args, 16, **kwargs)
    assert_close(ssd_scan_chunked(*args, 16, **kwargs), y_seq, what="y")
    x, dt, A, B, C = args
    dt_clamped = torch.nn.functional.softplus(dt + kwargs["dt_bias"]).clamp(0.2, 0.6)
    no_limit = dict(kwargs, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")))
    assert_close(ssd_scan_sequential(x, dt_clamped, A, B, C, 16, **no_limit), y_seq, what="y (clamped by hand)")


def test_recurrence_by_hand_single_head():
    """One head, one group, no extras: y_t = Σ_{s≤t} (C_t·B_s) Π_{s<k≤t} exp(dt_k A) dt_s x_s."""
    (x, dt, A, B, C), _ = make_inputs(b=1, l=7, h=1, p=2, n=3, seed=5, D_shape=None)
    y = ssd_scan_chunked(x, dt, A, B, C, 16)
    expected = torch.zeros_like(y)
    for t in range(7):
        for s in range(t + 1):
            decay = torch.exp(A[0] * dt[0, s + 1:t + 1, 0].sum())
            expected[0, t, 0] += (C[0, t, 0] @ B[0, s, 0]) * decay * dt[0, s, 0] * x[0, s, 0]
    assert_close(y, expected, what="y")


def test_output_dtypes_follow_x():
    args, kwargs = make_inputs(l=9, dtype=torch.float32, initial_states=True)
    y, s = ssd_scan_chunked(*args, 16, **kwargs, return_final_states=True)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    args16 = tuple(a.half() for a in args)
    y16, s16 = ssd_scan(*args16, 16, return_final_states=True, backend="reference")
    assert y16.dtype == torch.float16 and s16.dtype == torch.float32  # final states in float32, as mamba_ssm
    y32, s32 = ssd_scan_chunked(*(a.float() for a in args16), 16, return_final_states=True)
    assert_close(y16, y32, torch.float16, "y fp16")


def test_ssd_scan_reference_backend_matches_chunked():
    args, kwargs = make_inputs(l=33, g=2, seed=7, z=True, dt_bias=True, initial_states=True)
    y, s = ssd_scan(*args, 16, **kwargs, dt_softplus=True, return_final_states=True, backend="reference")
    y_ref, s_ref = ssd_scan_sequential(*args, 16, **kwargs, dt_softplus=True, return_final_states=True)
    assert_close(y, y_ref, what="y")
    assert_close(s, s_ref, what="final_states")
    assert isinstance(ssd_scan(*args, 16, backend="reference"), torch.Tensor)


def test_gradcheck_chunked_reference():
    args, kwargs = make_inputs(b=1, l=10, h=2, p=2, n=2, g=1, seed=11, D_shape="hp", z=True, dt_bias=True,
                               initial_states=True)
    names = ["D", "z", "dt_bias", "initial_states"]

    def fn(x, dt, A, B, C, D, z, dt_bias, h0):
        y, s = ssd_scan(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, initial_states=h0,
                        return_final_states=True, backend="reference")
        return y, s

    inputs = [a.clone().requires_grad_() for a in args] + [kwargs[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, inputs)


def test_chunked_gradients_match_sequential():
    args, kwargs = make_inputs(l=23, g=2, seed=2, D_shape="h", z=True, dt_bias=True, initial_states=True)
    leaves = list(args) + [kwargs["D"], kwargs["z"], kwargs["dt_bias"], kwargs["initial_states"]]
    grads = []
    for fn in (ssd_scan_sequential, ssd_scan_chunked):
        ins = [t.clone().requires_grad_() for t in leaves]
        x, dt, A, B, C, D, z, dt_bias, h0 = ins
        y, s = fn(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, initial_states=h0,
                  return_final_states=True)
        gen = torch.Generator().manual_seed(0)
        loss = (y * torch.randn(y.shape, generator=gen, dtype=F64)).sum() + (s * torch.randn(
            s.shape, generator=gen, dtype=F64)).sum()
        grads.append(torch.autograd.grad(loss, ins))
    for name, a, e in zip(["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"], *grads):
        assert_close(a, e, what=f"d{name}")


# ---------------------------------------------------------------------------------------------- validation

def _valid():
    args, kwargs = make_inputs(b=1, l=8, h=4, p=2, n=3, g=2, dtype=torch.float32, D_shape=None)
    return list(args), dict(kwargs, chunk_size=16)


BAD = [  # (position or keyword, replacement builder, error type, name in message)
    (0, lambda a: a[0][0], ValueError, "x"),
    (0, lambda a: a[0].int(), TypeError, "x"),
    (0, lambda a: a[0].tolist(), TypeError, "x"),
    (1, lambda a: a[1][..., None], ValueError, "dt"),
    (1, lambda a: a[1][:, :4], ValueError, "dt"),
    (1, lambda a: a[1].long(), TypeError, "dt"),
    (2, lambda a: a[2][:3], ValueError, "A"),
    (3, lambda a: a[3][:, :, :1].expand(1, 8, 3, 3).contiguous(), ValueError, "B"),
    (3, lambda a: a[3][:, :5], ValueError, "B"),
    (4, lambda a: a[4][..., :2], ValueError, "C"),
    (4, lambda a: a[4].to(torch.int32), TypeError, "C"),
    ("D", lambda a: a[0].new_ones(3), ValueError, "D"),
    ("D", lambda a: a[0].new_ones(4, 3), ValueError, "D"),
    ("z", lambda a: a[0][:, :, :, :1], ValueError, "z"),
    ("dt_bias", lambda a: a[0].new_ones(4, 1), ValueError, "dt_bias"),
    ("initial_states", lambda a: a[0].new_ones(1, 4, 2, 2), ValueError, "initial_states"),
    ("chunk_size", lambda a: 0, ValueError, "chunk_size"),
    (2, lambda a: -a[2].abs() * 0 + torch.tensor([-1.0, 0.0, -1.0, -1.0]), ValueError, "A must be < 0"),
    (3, lambda a: a[3].double(), TypeError, "float64"),
    ("initial_states", lambda a: a[0].new_ones(1, 4, 2, 3).double(), TypeError, "float64"),
    ("seq_idx", lambda a: torch.zeros(1, 8), TypeError, "seq_idx"),
    ("seq_idx", lambda a: torch.zeros(1, 7, dtype=torch.int32), ValueError, "seq_idx"),
    ("seq_idx", lambda a: torch.zeros(8, dtype=torch.int32), ValueError, "seq_idx"),
    ("seq_idx", lambda a: torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2]], dtype=torch.int32), ValueError, "non-decreasing"),
    ("cu_seqlens", lambda a: torch.tensor([0, 3, 7], dtype=torch.int32), ValueError, "cu_seqlens"),
    ("cu_seqlens", lambda a: torch.tensor([1, 3, 8], dtype=torch.int32), ValueError, "cu_seqlens"),
    ("cu_seqlens", lambda a: torch.tensor([0, 5, 3, 8], dtype=torch.int32), ValueError, "cu_seqlens"),
    ("cu_seqlens", lambda a: torch.tensor([0.0, 8.0]), TypeError, "cu_seqlens"),
    ("cu_seqlens", lambda a: torch.tensor([8], dtype=torch.int32), ValueError, "cu_seqlens"),
    ("return_varlen_states", lambda a: True, ValueError, "cu_seqlens"),
    ("chunk_size", lambda a: 16.0, TypeError, "chunk_size"),
    ("dt_limit", lambda a: (1.0, 0.5), ValueError, "dt_limit"),
    ("dt_limit", lambda a: (0.1,), TypeError, "dt_limit"),
    ("dt_softplus", lambda a: "yes", TypeError, "dt_softplus"),
    ("return_final_states", lambda a: 1, TypeError, "return_final_states"),
]


@pytest.mark.parametrize("where,build,error,name", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_validation_names_the_argument(where, build, error, name):
    args, kwargs = _valid()
    replacement = build(args)
    if isinstance(where, int):
        args[where] = replacement
    else:
        kwargs[where] = replacement
    with pytest.raises(error, match=name):
        ssd_scan(*args, **kwargs, backend="reference")


def test_validation_seq_idx_and_cu_seqlens_must_agree():
    args, _ = _valid()
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="disagree"):
        ssd_scan(*args, 16, seq_idx=seq_idx, cu_seqlens=torch.tensor([0, 4, 8]), backend="reference")
    ssd_scan(*args, 16, seq_idx=seq_idx, cu_seqlens=torch.tensor([0, 3, 8]), backend="reference")


def test_validation_cu_seqlens_needs_batch_one():
    (x, dt, A, B, C), _ = make_inputs(b=2, l=8, D_shape=None)
    with pytest.raises(ValueError, match="batch"):
        ssd_scan(x, dt, A, B, C, 16, cu_seqlens=torch.tensor([0, 3, 8]), backend="reference")


def test_validation_heads_divisible_by_groups():
    (x, dt, A, B, C), _ = make_inputs(b=1, l=8, h=3, p=2, n=3, g=2)
    with pytest.raises(ValueError, match="divisible"):
        ssd_scan(x, dt, A, B, C, 16, backend="reference")


def test_validation_mixed_devices():
    args, _ = _valid()
    args[2] = args[2].to("meta")
    with pytest.raises(ValueError, match="device"):
        ssd_scan(*args, 16, backend="reference")


def test_validation_unknown_backend():
    args, _ = _valid()
    with pytest.raises(ValueError, match="backend"):
        ssd_scan(*args, 16, backend="cuda")


@pytest.mark.parametrize("chunk_size,l", list(itertools.product((16, 64), (1, 17))))
def test_chunk_size_does_not_change_result(chunk_size, l):
    args, kwargs = make_inputs(l=l, seed=4, initial_states=True)
    y = ssd_scan_chunked(*args, chunk_size, **kwargs)
    assert_close(y, ssd_scan_sequential(*args, **kwargs), what="y")


# ------------------------------------------------------------------------------ signature, packed sequences

def test_signature_is_mamba_chunk_scan_combined():
    """Positional order and defaults of mamba_ssm's ``mamba_chunk_scan_combined`` (without its
    ``state_dtype``), then the keyword-only ``backend``."""
    params = inspect.signature(ssd_scan).parameters
    assert list(params)[:16] == ["x", "dt", "A", "B", "C", "chunk_size", "D", "z", "dt_bias", "initial_states",
                                 "seq_idx", "cu_seqlens", "dt_softplus", "dt_limit", "return_final_states",
                                 "return_varlen_states"]
    assert params["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["dt_limit"].default == (0.0, float("inf")) and params["seq_idx"].default is None


def test_return_conventions():
    (x, dt, A, B, C), _ = make_inputs(b=1, l=10, D_shape=None)
    cu = torch.tensor([0, 4, 10])
    out = ssd_scan(x, dt, A, B, C, 8, cu_seqlens=cu, return_varlen_states=True, backend="reference")
    assert len(out) == 2 and out[1].shape == (2, 4, 3, 5)
    out = ssd_scan(x, dt, A, B, C, 8, cu_seqlens=cu, return_final_states=True, return_varlen_states=True,
                   backend="reference")
    assert len(out) == 3 and out[1].shape == (1, 4, 3, 5) and out[2].shape == (2, 4, 3, 5)


LENGTHS = [(5, 13, 1, 18), (16, 7), (37,), (3, 3, 3, 28)]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("chunk_size", [8, 16, 24])
def test_packed_chunked_matches_sequential(lengths, chunk_size):
    args, kwargs = make_inputs(b=1, l=sum(lengths), g=2, seed=sum(lengths) + chunk_size, z=True, dt_bias=True,
                               initial_states=True)
    seq_idx, cu = packed_seq_idx(lengths, device="cpu")
    kw = dict(kwargs, seq_idx=seq_idx, cu_seqlens=cu, dt_softplus=True, return_final_states=True,
              return_varlen_states=True)
    for a, e, name in zip(ssd_scan_chunked(*args, chunk_size, **kw), ssd_scan_sequential(*args, chunk_size, **kw),
                          ("y", "final_states", "varlen_states")):
        assert_close(a, e, what=name)


def test_packed_reference_equals_separate_sequences_with_gradients():
    """Packed (seq_idx from cu_seqlens, boundaries inside chunks) == each sequence on its own: outputs,
    per-sequence final states and the gradients of every input."""
    lengths = (6, 11, 1, 9)
    inputs = shared_inputs(1, sum(lengths), 4, 3, 5, 2, seed=3, D_shape="hp", z=True, dt_bias=True,
                           initial_states=True, device="cpu")
    _, cu = packed_seq_idx(lengths, device="cpu")
    names = tuple(inputs)
    packed = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    args, kwargs = split(packed)
    y, varlen = ssd_scan(*args, 8, **kwargs, cu_seqlens=cu, dt_softplus=True, return_varlen_states=True,
                         backend="reference")
    gen = torch.Generator().manual_seed(1)
    dy, dv = torch.randn(y.shape, generator=gen, dtype=F64), torch.randn(varlen.shape, generator=gen, dtype=F64)
    packed_grads = torch.autograd.grad((y * dy).sum() + (varlen * dv).sum(), [packed[k] for k in names])
    alone = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    loss, ys = 0, []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = {k: (v[:, s:e] if v.dim() >= 3 and k != "initial_states" else v) for k, v in alone.items()}
        if i:
            part.pop("initial_states")
        a, kw = split(part)
        y_i, final_i = ssd_scan_sequential(*a, **kw, dt_softplus=True, return_final_states=True)
        ys.append(y_i)
        loss = loss + (y_i * dy[:, s:e]).sum() + (final_i[0] * dv[i]).sum()
    assert_close(y, torch.cat(ys, dim=1), what="y")
    for name, a, e in zip(names, packed_grads, torch.autograd.grad(loss, [alone[k] for k in names])):
        assert_close(a, e, what=f"d{name}")
