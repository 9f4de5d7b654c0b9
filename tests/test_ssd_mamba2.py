"""Mamba2Mixer with packed sequences: ``forward(u, seq_idx=..., cu_seqlens=...)`` equals running each sequence
alone (outputs and parameter gradients) — neither the short causal conv nor the scan leaks across a boundary."""
import pytest
import torch

from lambdaskip.modules.mamba2 import Mamba2Mixer
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close
from ssd_inputs import packed_seq_idx

LENGTHS = (5, 13, 1, 2, 16)


def _mixer(dtype):
    torch.manual_seed(0)
    return Mamba2Mixer(16, d_state=8, d_conv=4, headdim=8, ngroups=2, chunk_size=8).to(dtype)


def _packed_vs_separate(mixer, dtype, lengths=LENGTHS, **packing):
    u = torch.randn(1, sum(lengths), 16, dtype=dtype, generator=torch.Generator().manual_seed(1))
    dy = torch.randn(u.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    params = list(mixer.parameters())
    y = mixer(u, **packing)
    packed_grads = torch.autograd.grad((y * dy).sum(), params)
    bounds = torch.tensor((0,) + lengths).cumsum(0).tolist()
    alone = torch.cat([mixer(u[:, s:e]) for s, e in zip(bounds[:-1], bounds[1:])], dim=1)
    # float32 tolerance even for a float64 mixer: its GatedRMSNorm computes in float32
    assert_close(y, alone, torch.float32, "y")
    for p, a, e in zip([n for n, _ in mixer.named_parameters()], packed_grads,
                       torch.autograd.grad((alone * dy).sum(), params)):
        assert_close(a, e, torch.float32, f"d{p}")


@pytest.mark.parametrize("how", ["seq_idx", "cu_seqlens"])
def test_mixer_packed_equals_separate_reference(how):
    seq_idx, cu = packed_seq_idx(LENGTHS, device="cpu")
    packing = {"seq_idx": {"seq_idx": seq_idx}, "cu_seqlens": {"cu_seqlens": cu}}[how]
    _packed_vs_separate(_mixer(torch.float64), torch.float64, **packing)


def test_mixer_packed_equals_separate_triton():
    pytest.importorskip("triton")
    lengths = (7, 1, 12)  # fewer sequences: the interpreter runs each alone too
    seq_idx, _ = packed_seq_idx(lengths, device="cpu")
    with prefer_backend("triton"):
        _packed_vs_separate(_mixer(torch.float32), torch.float32, lengths, seq_idx=seq_idx)


def test_mixer_rejects_a_bad_seq_idx():
    mixer = _mixer(torch.float32)
    u = torch.randn(1, 6, 16)
    with pytest.raises(ValueError, match="seq_idx"):
        mixer(u, seq_idx=torch.zeros(1, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        mixer(u, seq_idx=torch.tensor([[0, 1, 1, 0, 2, 2]], dtype=torch.int32))
