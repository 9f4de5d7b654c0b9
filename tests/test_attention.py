import pytest
import torch
import torch.nn.functional as F

from lambdaskip import ops, reference
from lambdaskip.reference.attention import attention_map
from lambdaskip.testing import assert_close


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 1, 5, 12)])
def test_reference_attention_equals_sdpa(seed, causal, shape):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert_close(reference.attention(q, k, v, causal=causal), expected, torch.float64, "attention")
    assert_close(ops.attention(q.float(), k.float(), v.float(), causal=causal), expected, torch.float32, "sdpa op")


def test_attention_map_rows_are_probability_vectors_and_causal():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    M = attention_map(q, k, causal=True)
    torch.testing.assert_close(M.sum(-1), torch.ones(1, 2, 9, dtype=torch.float64))
    assert (M.triu(1) == 0).all()


def test_reference_attention_gradcheck():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: reference.attention(q, k, v, causal=True), (q, k, v))


def test_attention_rejects_bad_input():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        ops.attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k must have shape"):
        ops.attention(q, torch.randn(1, 2, 5, 3), q)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.attention(q, q.double(), q)
    with pytest.raises(TypeError, match="q must have a floating dtype"):
        ops.attention(q.long(), q.long(), q.long())
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.attention(q, q, q, backend="cudnn")
    with pytest.raises(ValueError, match="attention has no 'triton' backend"):
        ops.attention(q, q, q, backend="triton")


def test_auto_is_sdpa_unless_the_reference_is_preferred(monkeypatch):
    q, k, v = (torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    calls = []
    monkeypatch.setattr(reference, "attention", lambda *a, **kw: calls.append("reference") or torch.zeros_like(q))
    ops.attention(q, k, v)
    assert calls == []
    with ops.prefer_backend("reference"):
        ops.attention(q, k, v)
    ops.attention(q, k, v, backend="reference")
    assert calls == ["reference", "reference"]
    with pytest.warns(DeprecationWarning, match="sdpa"):
        ops.attention(q, k, v, backend="sdpa")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="backend"):
        ops.attention(q, k, v, backend="triton")
