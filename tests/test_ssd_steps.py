"""Each SSD step's kernels (kernels/ssd_<step>.py), forward and backward, against that step's float64
reference (lambdaskip/reference/ssd_steps.py), on CPU under TRITON_INTERPRET=1.

Every test feeds its step the same float32 inputs as the reference (in float64), so it fails when that
step alone is wrong. Backward kernels are checked against autograd through the step's reference, with
the conventions of kernels/ssd.py: the dΛ (= d dA_cumsum) pieces ``row_terms``, ``ddt_direct`` and the
chunk-end partial sums relate to autograd's dΛ as stated in each test. Sizes are odd (headdim 12,
dstate 10, 37 tokens; chunks of 16 and 24) and, with ``packed``, rows hold several sequences with
boundaries inside chunks.
"""
import pytest
import torch

from lambdaskip.reference import ssd_steps as ref
from lambdaskip.testing import assert_close
from ssd_inputs import DEVICE, F64, make_inputs

triton = pytest.importorskip("triton")

from lambdaskip.kernels.ssd_chunk_cumsum import chunk_cumsum, chunk_cumsum_backward  # noqa: E402
from lambdaskip.kernels.ssd_chunk_scan import chunk_scan, chunk_scan_backward  # noqa: E402
from lambdaskip.kernels.ssd_chunk_state import chunk_state, chunk_state_varlen  # noqa: E402
from lambdaskip.kernels.ssd_state_passing import state_passing, state_passing_backward  # noqa: E402

F32 = torch.float32
B_, L, H, P, N, G = 2, 37, 4, 12, 10, 2
ROWS = ((5, 13, 1, 18), (20, 17))  # packed sequence lengths of each row
CASES = [(16, False), (24, True)]


def _setup(chunk_size, packed, seed=0):
    """float32 inputs, the step tensors from the reference (so each step is tested alone), seq_idx."""
    t = make_inputs(B_, L, H, P, N, G, seed=seed, dtype=F32, initial_states=True)
    seq_idx = None
    if packed:
        seq_idx = torch.stack([torch.repeat_interleave(torch.arange(len(r), dtype=torch.int32), torch.tensor(r))
                               for r in ROWS]).to(DEVICE)
    dt_chunked, dA_cumsum = ref.chunk_cumsum(t["dt"].double(), t["A"].double(), chunk_size)
    t["dt_chunked"], t["dA_cumsum"] = dt_chunked.float().contiguous(), dA_cumsum.float().contiguous()
    return t, seq_idx


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(DEVICE)


def _grad(fn, inputs: dict, upstream):
    """autograd of ``fn(**inputs)`` in float64 against ``upstream`` (one tensor or a list matching fn's outputs)."""
    leaves = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    outs, ups = (out, upstream) if isinstance(out, (tuple, list)) else ((out,), (upstream,))
    loss = sum((o * u).sum() for o, u in zip(outs, ups))
    return out, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def _per_group(per_head):
    b, l, h, n = per_head.shape
    return per_head.view(b, l, G, h // G, n).sum(3)


@pytest.mark.parametrize("chunk_size", [16, 24])
def test_chunk_cumsum(chunk_size):
    t, _ = _setup(chunk_size, False)
    dt_chunked, dA_cumsum = chunk_cumsum(t["dt"], t["A"], chunk_size)
    assert_close(dt_chunked, t["dt_chunked"], F32, "dt_chunked")
    assert_close(dA_cumsum, t["dA_cumsum"], F32, "dA_cumsum")


@pytest.mark.parametrize("chunk_size", [16, 24])
def test_chunk_cumsum_backward(chunk_size):
    """ddt, dA from dΛ = row_terms − dt·ddt_direct (+ the summed end partials at each chunk's last step) and
    d dt_chunked = ddt_direct; entries past the sequence's end are zero, as the other steps write them."""
    t, _ = _setup(chunk_size, False)
    shape = t["dA_cumsum"].shape
    valid = (t["dt_chunked"] != 0).double()
    row_terms, ddt_direct = _rand(*shape, seed=1) * valid, _rand(*shape, seed=2) * valid
    end_partials = _rand(*shape[:3], 3, seed=3)
    d_lambda = row_terms - t["dt_chunked"].double() * ddt_direct
    d_lambda[..., -1] += end_partials.sum(-1)
    _, expected = _grad(lambda dt, A: ref.chunk_cumsum(dt, A, chunk_size), {"dt": t["dt"], "A": t["A"]},
                        [ddt_direct, d_lambda])
    ddt, dA = chunk_cumsum_backward(row_terms.float(), end_partials.float(), ddt_direct.float(), t["dt_chunked"],
                                    t["A"], L)
    assert_close(ddt, expected["dt"], F32, "ddt")
    assert_close(dA, expected["A"], F32, "dA")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_chunk_state(chunk_size, packed):
    t, seq_idx = _setup(chunk_size, packed)
    out = chunk_state(t["x"], t["B"], t["dt_chunked"], t["dA_cumsum"], decay_to_end=True, seq_idx=seq_idx)
    expected = ref.chunk_state(t["x"].double(), t["B"].double(), t["dt_chunked"].double(), t["dA_cumsum"].double(),
                               seq_idx)
    assert_close(out, expected, F32, "chunk_states")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_chunk_state_backward(chunk_size, packed):
    """Chunk state's backward alone: chunk scan's fused column pass with dy = 0 and a random G. Autograd's
    dΛ is −dt·ddt_direct, plus ⟨G_c, added_c⟩ at each chunk's last step."""
    t, seq_idx = _setup(chunk_size, packed)
    nchunks = t["dA_cumsum"].shape[2]
    d_states = _rand(B_, nchunks + 1, H, P, N, seed=4)
    inputs = {k: t[k] for k in ("x", "B", "dt_chunked", "dA_cumsum")}
    added, expected = _grad(lambda **a: ref.chunk_state(**a, seq_idx=seq_idx), inputs, d_states[:, 1:])
    dx, dB, _, ddt_direct, _ = chunk_scan_backward(
        torch.zeros(B_, L, H, P, device=DEVICE), t["x"], t["B"], t["C"], t["dt_chunked"], t["dA_cumsum"],
        torch.zeros(B_, nchunks + 1, H, P, N, device=DEVICE), d_states.float(), seq_idx)
    assert_close(dx, expected["x"], F32, "dx")
    assert_close(_per_group(dB), expected["B"], F32, "dB")
    assert_close(ddt_direct, expected["dt_chunked"], F32, "ddt_direct")
    d_lambda = -t["dt_chunked"].double() * ddt_direct.double()
    d_lambda[..., -1] += torch.einsum("bchpn,bchpn->bhc", d_states[:, 1:], added)
    assert_close(d_lambda, expected["dA_cumsum"], F32, "dΛ")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_state_passing(chunk_size, packed):
    t, seq_idx = _setup(chunk_size, packed)
    nchunks = t["dA_cumsum"].shape[2]
    added = _rand(B_, nchunks, H, P, N, seed=5).float()
    states = state_passing(added, t["dA_cumsum"], t["initial_states"], seq_idx, L)
    expected = ref.state_passing(added.double(), t["dA_cumsum"].double(), t["initial_states"].double(), seq_idx)
    assert_close(states, expected, F32, "states")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_state_passing_backward(chunk_size, packed):
    """G_{c+1} = d added_c, G_0 = d initial_states; the end partials sum to autograd's d Λ_end plus
    ⟨G_{c+1}, added_c⟩ (the chunk-state term they fold in, see kernels/ssd.py)."""
    t, seq_idx = _setup(chunk_size, packed)
    nchunks = t["dA_cumsum"].shape[2]
    added = _rand(B_, nchunks, H, P, N, seed=6).float()
    upstream = _rand(B_, nchunks + 1, H, P, N, seed=7)
    inputs = {"chunk_states": added, "dA_cumsum": t["dA_cumsum"], "initial_states": t["initial_states"]}
    states, expected = _grad(lambda **a: ref.state_passing(**a, seq_idx=seq_idx), inputs, upstream)
    d_states, end_partials = state_passing_backward(upstream[:, :-1].float().contiguous(),
                                                    upstream[:, -1].float().contiguous(), states.float(),
                                                    t["dA_cumsum"], seq_idx, L)
    assert_close(d_states[:, 1:], expected["chunk_states"], F32, "G (d chunk_states)")
    assert_close(d_states[:, 0], expected["initial_states"], F32, "G_0 (d initial_states)")
    folded = expected["dA_cumsum"][..., -1] + torch.einsum("bchpn,bchpn->bhc", d_states[:, 1:].double(),
                                                           added.double())
    assert_close(end_partials.sum(-1), folded, F32, "d chunk decay")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_chunk_scan(chunk_size, packed):
    t, seq_idx = _setup(chunk_size, packed)
    nchunks = t["dA_cumsum"].shape[2]
    states = _rand(B_, nchunks + 1, H, P, N, seed=8).float()
    y = chunk_scan(t["x"], t["B"], t["C"], t["dt_chunked"], t["dA_cumsum"], states, seq_idx)
    expected = ref.chunk_scan(t["x"].double(), t["B"].double(), t["C"].double(), t["dt_chunked"].double(),
                              t["dA_cumsum"].double(), states.double(), seq_idx)
    assert_close(y, expected, F32, "y")


@pytest.mark.parametrize("chunk_size,packed", CASES)
def test_chunk_scan_backward(chunk_size, packed):
    """Chunk scan's backward alone (G = 0): dx, dB, dC; ddt_direct = d dt_chunked; autograd's dΛ is
    row_terms − dt·ddt_direct; the entering states' gradient is chunk state's contraction on (dy, C)."""
    t, seq_idx = _setup(chunk_size, packed)
    nchunks = t["dA_cumsum"].shape[2]
    states = _rand(B_, nchunks + 1, H, P, N, seed=9).float()
    dy = _rand(B_, L, H, P, seed=10)
    inputs = {k: t[k] for k in ("x", "B", "C", "dt_chunked", "dA_cumsum")} | {"states": states}
    _, expected = _grad(lambda **a: ref.chunk_scan(**a, seq_idx=seq_idx), inputs, dy)
    dy = dy.float()
    dx, dB, dC, ddt_direct, row_terms = chunk_scan_backward(
        dy, t["x"], t["B"], t["C"], t["dt_chunked"], t["dA_cumsum"], states,
        torch.zeros(B_, nchunks + 1, H, P, N, device=DEVICE), seq_idx)
    assert_close(dx, expected["x"], F32, "dx")
    assert_close(_per_group(dB), expected["B"], F32, "dB")
    assert_close(_per_group(dC), expected["C"], F32, "dC")
    assert_close(ddt_direct, expected["dt_chunked"], F32, "ddt_direct")
    assert_close(row_terms - t["dt_chunked"] * ddt_direct, expected["dA_cumsum"], F32, "dΛ")
    d_entering = chunk_state(dy, t["C"], t["dt_chunked"], t["dA_cumsum"], decay_to_end=False, seq_idx=seq_idx)
    assert_close(d_entering, expected["states"][:, :-1], F32, "d entering states")


@pytest.mark.parametrize("chunk_size", [8, 16, 24])
def test_chunk_state_varlen(chunk_size):
    lengths = (5, 13, 1, 18)
    t, _ = _setup(chunk_size, False)
    t = {k: v[:1] if k not in ("A", "dt_chunked", "dA_cumsum") else v for k, v in t.items()}
    dt_chunked, dA_cumsum = (v[:1].contiguous() for v in ref.chunk_cumsum(t["dt"].double(), t["A"].double(),
                                                                           chunk_size))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    nchunks = dA_cumsum.shape[2]
    states = _rand(1, nchunks + 1, H, P, N, seed=11)
    out = chunk_state_varlen(t["x"], t["B"], dt_chunked.float(), dA_cumsum.float(), states.float(), cu)
    expected = ref.varlen_states(t["x"].double(), t["B"].double(), dt_chunked, dA_cumsum, states, cu)
    assert_close(out, expected, F32, "varlen_states")
