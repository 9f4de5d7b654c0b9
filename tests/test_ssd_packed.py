"""Packed sequences with initial states, and the gradient rule of the per-sequence (varlen) final states.

mamba_ssm's rule (its state passing and chunk scan compare a chunk's sequence number with 0 before the
first chunk): a row's initial state seeds only the sequence numbered 0, which starts the row; every later
boundary resets the state to zero. So packed with initial states == each sequence alone, the first one
from the row's initial state: outputs, final and varlen states and every gradient (dinitial_states too),
on both backends (Triton interpreted on CPU). A row whose seq_idx does not start at 0 would silently lose
its initial state in mamba_ssm; ours refuses it.
"""
import pytest
import torch

from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.testing import assert_close
from ssd_inputs import DEVICE, F64, make_inputs, packed_seq_idx, split

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
PER_TOKEN = ("x", "dt", "B", "C", "z")
# Two rows of 27 tokens (chunks of 8): the first sequence ends exactly at a chunk end or spans chunks (Triton and
# reference), is one token long or ends inside the first chunk (reference).
ROWS = [((8, 5, 14), (17, 10)), ((1, 19, 7), (3, 3, 21))]
CASES = [("reference", F64, rows) for rows in ROWS] + [("triton", torch.float32, ROWS[0])]


def _leaves(inputs):
    return {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize("backend,dtype,rows", CASES, ids=["reference-0", "reference-1", "triton-0"])
def test_packed_rows_with_initial_states_equal_separate_sequences(backend, dtype, rows):
    chunk_size = 8
    l = sum(rows[0])
    inputs = make_inputs(2, l, 2, 4 if backend == "reference" else 16, 16, 1, seed=l + len(rows[1]), dtype=dtype,
                         D_shape="h", z=True, dt_bias=True, initial_states=True)
    packing = [packed_seq_idx(lengths) for lengths in rows]
    seq_idx = torch.cat([s for s, _ in packing])
    gen = torch.Generator().manual_seed(5)
    dy = torch.randn(inputs["x"].shape, generator=gen, dtype=F64).to(DEVICE, dtype)
    dfinal = torch.randn(inputs["initial_states"].shape, generator=gen, dtype=F64).to(DEVICE, torch.float32)
    common = dict(dt_softplus=True, return_final_states=True, backend=backend)

    packed = _leaves(inputs)
    args, kwargs = split(packed)
    y, final = ssd_scan(*args, chunk_size, **kwargs, seq_idx=seq_idx, **common)
    packed_grads = torch.autograd.grad((y * dy).sum() + (final * dfinal.to(final.dtype)).sum(),
                                       [packed[k] for k in NAMES])

    alone = _leaves(inputs)
    loss, ys, finals = 0, [], []
    for r, (_, cu) in enumerate(packing):
        bounds = cu.tolist()
        varlen_row = []
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            part = {k: (v[r:r + 1, s:e] if k in PER_TOKEN else v) for k, v in alone.items()}
            part["initial_states"] = alone["initial_states"][r:r + 1] if i == 0 else None
            a, kw = split({k: v for k, v in part.items() if v is not None})
            y_i, final_i = ssd_scan(*a, chunk_size, **kw, **common)
            ys.append(y_i)
            varlen_row.append(final_i[0])
            loss = loss + (y_i * dy[r:r + 1, s:e]).sum()
        loss = loss + (varlen_row[-1] * dfinal[r].to(final.dtype)).sum()
        finals.append(varlen_row[-1])
        row = {k: (v[r:r + 1] if k in PER_TOKEN + ("initial_states",) else v) for k, v in inputs.items()}
        a, kw = split(row)
        with torch.no_grad():
            _, varlen = ssd_scan(*a, chunk_size, **kw, cu_seqlens=cu, dt_softplus=True, return_varlen_states=True,
                                 backend=backend)
        assert_close(varlen, torch.stack(varlen_row), dtype, f"varlen_states of row {r}")
    assert_close(y, torch.cat([torch.cat(ys[:len(rows[0])], 1), torch.cat(ys[len(rows[0]):], 1)]), dtype, "y")
    assert_close(final, torch.stack(finals), dtype, "final_states")
    for name, a, e in zip(NAMES, packed_grads, torch.autograd.grad(loss, [alone[k] for k in NAMES])):
        assert_close(a, e, dtype, f"d{name}")


def test_initial_states_need_rows_starting_at_sequence_zero():
    t = make_inputs(2, 12, 2, 3, 4, 1, seed=1, initial_states=True, device="cpu")
    args, kwargs = split(t)
    seq_idx = torch.tensor([[0] * 5 + [1] * 7, [2] * 4 + [3] * 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="seq_idx must start at 0 in every row when initial_states"):
        ssd_scan(*args, 8, **kwargs, seq_idx=seq_idx, backend="reference")
    kwargs.pop("initial_states")
    ssd_scan(*args, 8, **kwargs, seq_idx=seq_idx, backend="reference")  # without an initial state any start is fine


def test_varlen_states_gradient_rule():
    """Triton: no gradient through the varlen states, and a backward pass that reaches them raises; the
    gradients of y and the final state are those of a call without varlen states. Reference: differentiable."""
    inputs = make_inputs(1, 20, 2, 16, 16, 1, seed=3, dtype=torch.float32, initial_states=True)
    _, cu = packed_seq_idx((6, 11, 3))
    leaves = _leaves(inputs)
    args, kwargs = split(leaves)
    y, final, varlen = ssd_scan(*args, 8, **kwargs, cu_seqlens=cu, return_final_states=True,
                                return_varlen_states=True, backend="triton")
    with pytest.raises(RuntimeError, match="varlen_states carry no gradient on the Triton backend"):
        torch.autograd.grad(y.sum() + varlen.sum(), leaves["x"], retain_graph=True)
    grads = torch.autograd.grad(y.square().sum() + final.sum() + varlen.detach().sum(), list(leaves.values()))
    y2, final2 = ssd_scan(*args, 8, **kwargs, cu_seqlens=cu, return_final_states=True, backend="triton")
    for name, a, e in zip(leaves, grads, torch.autograd.grad(y2.square().sum() + final2.sum(), list(leaves.values()))):
        assert torch.equal(a, e), name
    ref = _leaves({k: v.to(F64) for k, v in inputs.items()})
    args, kwargs = split(ref)
    _, varlen64 = ssd_scan(*args, 8, **kwargs, cu_seqlens=cu.cpu(), return_varlen_states=True, backend="reference")
    assert varlen64.requires_grad
    assert_close(varlen, varlen64, torch.float32, "varlen_states")
    varlen.mul_(2.0)  # in place, as on a detached tensor


def test_varlen_states_under_torch_compile_are_detached():
    """torch.compile cannot trace a backward that raises: there the Triton varlen states are detached (as
    mamba_ssm's), and the rest compiles without graph breaks and keeps its gradients."""
    inputs = make_inputs(1, 20, 2, 16, 16, 1, seed=9, dtype=torch.float32, initial_states=True)
    _, cu = packed_seq_idx((6, 11, 3))

    def f(x, dt, A, B, C, initial_states):
        y, varlen = ssd_scan(x, dt, A, B, C, 16, initial_states=initial_states, cu_seqlens=cu,
                             return_varlen_states=True, backend="triton")
        return y.square().sum(), varlen

    torch._dynamo.reset()
    eager, compiled = _leaves(inputs), _leaves(inputs)
    loss, varlen = torch.compile(f, fullgraph=True)(*split(compiled)[0], compiled["initial_states"])
    assert not varlen.requires_grad
    loss.backward()
    loss_eager, varlen_eager = f(*split(eager)[0], eager["initial_states"])
    loss_eager.backward()
    assert_close(varlen, varlen_eager, torch.float32, "varlen_states")
    for name in inputs:
        assert_close(compiled[name].grad, eager[name].grad, torch.float32, f"d{name}")
