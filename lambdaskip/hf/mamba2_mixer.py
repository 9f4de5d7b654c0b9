"""Mamba-2 mixer changes: removing the silu(z) gate, and running the mixer on lambdaskip's SSD scan.

A Hugging Face ``Mamba2Mixer`` computes ``out_proj(gated_rmsnorm(ssd(conv(x)), z))``. Its parameters have
the same layout as :class:`lambdaskip.modules.Mamba2Mixer`'s (in_proj split into z | xBC | dt, depthwise
conv, dt_bias, A_log, D, grouped RMSNorm, out_proj), so the whole mixer can run through
:func:`lambdaskip.ops.ssd_scan` (Triton on CUDA) with the model's own weights, and with a generation cache
(``use_cache=True``) through ``ssd_scan`` for the prompt and :func:`lambdaskip.ops.ssd_step` per new token,
keeping its conv and SSM states in the model's own cache object.
"""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.hf.patching import Patches



def remove_gate(mixer: nn.Module, patches: Patches) -> None:
    """The mixer's inner norm ignores its gate: ``rmsnorm(y)`` instead of ``rmsnorm(y · silu(z))``."""
    def drop_gate(_module, args, kwargs):
        return args[:1], {k: v for k, v in kwargs.items() if k != "gate"}
    patches.add_hook(mixer.norm.register_forward_pre_hook(drop_gate, with_kwargs=True))


def scan_chunk_size(model_chunk_size: int) -> int:
    """The model's chunk size when :func:`lambdaskip.ops.ssd_scan` takes it (a power of two >= 16), else 64:
    the scan's result does not depend on the chunking, only its speed does."""
    valid = model_chunk_size >= 16 and not model_chunk_size & (model_chunk_size - 1)
    return model_chunk_size if valid else 64


def ssd_mixer_forward(mixer: nn.Module, hidden_states: torch.Tensor, gating: bool,
                      cache=None) -> torch.Tensor:
    """The mixer's output computed with :func:`lambdaskip.ops.ssd_scan` (no padding mask).

    With a ``cache`` (the model's ``Cache``: conv and recurrent states per layer) it continues from the cached
    states and advances them, as the model's own code does: a single token on a filled cache takes one
    :func:`lambdaskip.ops.ssd_step` (inference only), anything else one ``ssd_scan`` from the cached state.

    Args:
        mixer: a ``transformers`` ``Mamba2Mixer``.
        hidden_states: (batch, seqlen, hidden_size).
        gating: multiply the scan output by silu(z) inside the inner norm.
        cache: None, or the model's generation cache.
    Returns:
        (batch, seqlen, hidden_size) in hidden_states' dtype.
    """
    batch, seqlen, _ = hidden_states.shape
    heads, headdim, groups, dstate = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    gate, xBC, dt = mixer.in_proj(hidden_states).split([mixer.intermediate_size, mixer.conv_dim, heads], dim=-1)
    xBC, state = xBC.transpose(1, 2), None
    if cache is not None:  # the state is read before update_conv_state marks the layer as filled
        state = cache.get_recurrent_state(mixer.layer_idx)
        xBC = cache.update_conv_state(xBC, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    xBC = mixer.act(mixer.conv1d(xBC)[..., :xBC.shape[-1]][..., -seqlen:].transpose(1, 2))
    x, B, C = xBC.split([mixer.intermediate_size, groups * dstate, groups * dstate], dim=-1)
    x, B, C = x.reshape(batch, seqlen, heads, headdim), *(t.reshape(batch, seqlen, groups, dstate) for t in (B, C))
    A, dt_limit = -torch.exp(mixer.A_log.float()), tuple(float(v) for v in mixer.time_step_limit)
    if state is not None and seqlen == 1:
        y = ops.ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D=mixer.D, dt_bias=mixer.dt_bias,
                         dt_softplus=True, dt_limit=dt_limit)
    else:
        y = ops.ssd_scan(x, dt, A, B, C, chunk_size=scan_chunk_size(mixer.chunk_size), D=mixer.D,
                         dt_bias=mixer.dt_bias, dt_softplus=True, dt_limit=dt_limit, initial_states=state,
                         return_final_states=cache is not None)
        if cache is not None:
            y, final_state = y
            cache.update_recurrent_state(final_state, mixer.layer_idx)
    y = mixer.norm(y.reshape(batch, seqlen, mixer.intermediate_size), gate if gating else None)
    return mixer.out_proj(y.to(hidden_states.dtype))


def use_ssd_scan(mixer: nn.Module, gating: bool, where: str, patches: Patches) -> None:
    """Route the mixer's forward through :func:`ssd_mixer_forward` when it applies.

    It applies when no padding mask zeroes tokens, and ``where`` allows the device: "always", "cuda" (CUDA
    inputs) or "never" — except that without gating it applies in training on any device, where
    transformers may otherwise take a fused kernel with the gate built in. With a generation cache it
    applies too (prompt through the scan, new tokens through ``ssd_step``), except while the cache records
    past states (speculative decoding) and for one-token steps with autograd on (``ssd_step`` is inference
    only). Otherwise the model's own forward runs.
    """
    own_forward = type(mixer).forward

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("cache_params"))
        device_ok = (where == "always" or (where == "cuda" and hidden_states.is_cuda)
                     or (not gating and mixer.training))
        cache_ok = cache is None or (not cache.is_recording_past(mixer.layer_idx)
                                     and (hidden_states.shape[1] > 1 or not torch.is_grad_enabled()))
        applies = (not args and kwargs.get("cache_position") is None and cache_ok
                   and (mask is None or bool(mask.all())) and device_ok)
        if not applies:
            return own_forward(mixer, hidden_states, *args, **kwargs)
        return ssd_mixer_forward(mixer, hidden_states, gating, cache)

    patches.set_forward(mixer, forward)
