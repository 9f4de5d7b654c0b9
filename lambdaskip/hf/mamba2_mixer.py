"""Mamba-2 mixer changes: removing the silu(z) gate, and running the mixer on lambdaskip's SSD scan.

A Hugging Face ``Mamba2Mixer`` computes ``out_proj(gated_rmsnorm(ssd(conv(x)), z))``. Its parameters have
the same layout as :class:`lambdaskip.modules.Mamba2Mixer`'s (in_proj split into z | xBC | dt, depthwise
conv, dt_bias, A_log, D, grouped RMSNorm, out_proj), so the whole mixer can run through
:func:`lambdaskip.ops.ssd_scan` (Triton on CUDA) with the model's own weights.
"""
from __future__ import annotations

import torch
from torch import nn

from lambdaskip import ops
from lambdaskip.hf.patching import Patches

_CACHE_ARGUMENTS = ("cache", "cache_params", "cache_position")


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


def ssd_mixer_forward(mixer: nn.Module, hidden_states: torch.Tensor, gating: bool) -> torch.Tensor:
    """The mixer's output computed with :func:`lambdaskip.ops.ssd_scan` (no cache, no padding mask).

    Args:
        mixer: a ``transformers`` ``Mamba2Mixer``.
        hidden_states: (batch, seqlen, hidden_size).
        gating: multiply the scan output by silu(z) inside the inner norm.
    Returns:
        (batch, seqlen, hidden_size) in hidden_states' dtype.
    """
    batch, seqlen, _ = hidden_states.shape
    heads, headdim, groups, dstate = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    gate, xBC, dt = mixer.in_proj(hidden_states).split([mixer.intermediate_size, mixer.conv_dim, heads], dim=-1)
    xBC = mixer.act(mixer.conv1d(xBC.transpose(1, 2))[..., :seqlen].transpose(1, 2))
    x, B, C = xBC.split([mixer.intermediate_size, groups * dstate, groups * dstate], dim=-1)
    y = ops.ssd_scan(
        x.reshape(batch, seqlen, heads, headdim), dt, -torch.exp(mixer.A_log.float()),
        B.reshape(batch, seqlen, groups, dstate), C.reshape(batch, seqlen, groups, dstate),
        chunk_size=scan_chunk_size(mixer.chunk_size), D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True,
        dt_limit=tuple(float(v) for v in mixer.time_step_limit),
    ).reshape(batch, seqlen, mixer.intermediate_size)
    y = mixer.norm(y, gate if gating else None)
    return mixer.out_proj(y.to(hidden_states.dtype))


def use_ssd_scan(mixer: nn.Module, gating: bool, where: str, patches: Patches) -> None:
    """Route the mixer's forward through :func:`ssd_mixer_forward` when it applies.

    It applies when no cache is in use (generation keeps the model's own step code) and no padding mask
    zeroes tokens, and ``where`` allows the device: "always", "cuda" (CUDA inputs) or "never" — except that
    without gating it applies in training on any device, where transformers may otherwise take a fused
    kernel with the gate built in.
    Otherwise the model's own forward runs.
    """
    own_forward = type(mixer).forward

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = kwargs.get("attention_mask")
        device_ok = (where == "always" or (where == "cuda" and hidden_states.is_cuda)
                     or (not gating and mixer.training))
        applies = (not args and all(kwargs.get(name) is None for name in _CACHE_ARGUMENTS)
                   and (mask is None or bool(mask.all())) and device_ok)
        if not applies:
            return own_forward(mixer, hidden_states, *args, **kwargs)
        return ssd_mixer_forward(mixer, hidden_states, gating)

    patches.set_forward(mixer, forward)
