"""Token-by-token generation with the Mamba-2 inference cache: a prompt through ``prefill`` (one ``ssd_scan`` from
the cached state) and the rest through ``step`` (``ssd_step`` and a one-token conv) equals the stack's ``forward``
on the concatenated sequence, at every position; mixers without a decode cache say so.

float64 runs the references (the same math, tolerance 1e-9); float32 runs the Triton kernels under the interpreter
(``prefer_backend("triton")``), compared at float32's tolerance.
"""
import pytest
import torch

from lambdaskip import build_stack
from lambdaskip.modules import Mamba2Cache, Mamba2Mixer
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close

D_MODEL = 16
CONFIGS = [  # Mamba2Mixer keyword arguments (d_model = 16, so d_inner = 32)
    {"headdim": 8, "d_state": 16, "chunk_size": 16},
    {"headdim": 16, "d_state": 12, "chunk_size": 16, "ngroups": 2, "d_conv": 3, "D_has_hdim": True},
    {"headdim": 8, "d_state": 8, "chunk_size": 16, "gating": False, "inner_norm": False, "d_conv": 1},
]


def sequence(b, l, dtype, seed):
    return torch.randn(b, l, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def decode_all(stack, y, prompt_len):
    """Outputs at every position of ``y``: the prompt in two prefill calls, then one step per token."""
    cache = stack.allocate_cache(y.shape[0], dtype=y.dtype)
    split = prompt_len // 2
    outs = [stack.prefill(y[:, :split], cache), stack.prefill(y[:, split:prompt_len], cache)]
    outs += [stack.step(y[:, t], cache)[:, None] for t in range(prompt_len, y.shape[1])]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("config", CONFIGS)
def test_prefill_and_steps_equal_forward_float64(config):
    stack = build_stack("mamba2", depth=2, d_model=D_MODEL, lam=0.7, mlp=True, seed=1, **config).double()
    y = sequence(2, 13, torch.float64, seed=2)
    assert_close(decode_all(stack, y, prompt_len=6), stack(y), torch.float64, "decoded outputs")


def test_prefill_and_steps_equal_forward_triton_float32():
    stack = build_stack("mamba2", depth=1, d_model=D_MODEL, lam=0.7, seed=3, **CONFIGS[1])
    y = sequence(2, 9, torch.float32, seed=4)
    with prefer_backend("triton"):
        decoded = decode_all(stack, y, prompt_len=5)
    with torch.no_grad():
        expected = stack.double()(y.double())
    assert_close(decoded, expected, torch.float32, "decoded outputs (Triton)")


def test_cache_holds_the_states_of_the_whole_sequence():
    mixer = Mamba2Mixer(D_MODEL, **CONFIGS[0]).double()
    u = sequence(1, 7, torch.float64, seed=5)
    one, two = mixer.allocate_cache(1), mixer.allocate_cache(1)
    mixer.prefill(u, one)
    for t in range(7):
        mixer.step(u[:, t], two)
    assert isinstance(one, Mamba2Cache) and one.ssm_state.dtype == torch.float64
    assert one.conv_state.shape == (1, mixer.conv_dim, 3)
    assert_close(two.ssm_state, one.ssm_state, torch.float64, "ssm_state")
    assert torch.equal(two.conv_state, one.conv_state)


def test_generate_feeds_outputs_back():
    stack = build_stack("mamba2", depth=2, d_model=D_MODEL, lam=0.5, seed=6, **CONFIGS[0]).double()
    prompt = sequence(2, 5, torch.float64, seed=7)
    feed = torch.nn.Linear(D_MODEL, D_MODEL).double()
    out = stack.generate(prompt, 4, next_input=feed)
    assert out.shape == (2, 4, D_MODEL)
    with torch.no_grad():
        full = stack(torch.cat([prompt, feed(out[:, :-1])], dim=1))
    assert_close(out, full[:, -4:], torch.float64, "generated outputs")


@pytest.mark.parametrize("arch, kwargs", [("attention", {"n_heads": 2}), ("s4d", {"d_state": 8}), ("lti", {})])
def test_mixers_without_a_decode_cache_say_so(arch, kwargs):
    stack = build_stack(arch, depth=1, d_model=D_MODEL, seed=0, **kwargs)
    with pytest.raises(NotImplementedError, match="keeps no decode cache"):
        stack.generate(sequence(1, 3, torch.float32, seed=0), 2)


def test_bad_cache_use_is_named():
    mixer = Mamba2Mixer(D_MODEL, **CONFIGS[0])
    cache = mixer.allocate_cache(2)
    with pytest.raises(ValueError, match="cache holds 2 sequences"):
        mixer.step(torch.randn(3, D_MODEL), cache)
    with pytest.raises(ValueError, match=r"\(batch, d_model\)"):
        mixer.step(torch.randn(2, 1, D_MODEL), cache)
    with pytest.raises(TypeError, match="cache must be a Mamba2Cache"):
        mixer.prefill(torch.randn(2, 3, D_MODEL), [cache])
    with pytest.raises(ValueError, match="batch_size"):
        mixer.allocate_cache(0)
