"""λ-skip forwards for pre-norm blocks (Mamba-2, GPT-2), where the residual sum happens in the block's forward.

Each block gets an instance ``forward`` that calls the block's own submodules (its norms, its mixer or
attention and MLP) and sends every residual sum through a :class:`~lambdaskip.modules.LambdaSkip`:

- ``placement="native"``: ``Y ← sublayer(norm(Y)) + λ·Y`` — the block as shipped, with λ on the skip path;
  at λ = 1 it computes exactly what the original does (``1·Y`` is exact and the sum is commutative).
- ``placement="post"``: ``Y ← Norm(sublayer(Y) + λ·Y)`` — the paper's form: the pre-norm is bypassed (it
  stays in the model, unused, for :func:`lambdaskip.restore`) and the λ-skip's own norm follows the sum.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from lambdaskip.hf.patching import Patches

_GPT2_CROSS_ATTENTION_ARGS = ("encoder_hidden_states", "encoder_attention_mask")


def rewire_mamba2_block(block: nn.Module, skips: nn.ModuleDict, placement: str, patches: Patches) -> None:
    """``Mamba2Block``: one residual sum around ``mixer(norm(Y))``, skip ``skips["mixer"]``.

    Arguments after the hidden states (cache, mask, ...) pass through to the mixer unchanged."""
    skip = skips["mixer"]

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if placement == "native":
            hidden_states = block.norm(hidden_states.to(dtype=block.norm.weight.dtype))
        if block.residual_in_fp32:
            residual = residual.to(torch.float32)
        return skip(block.mixer(hidden_states, *args, **kwargs), residual)

    patches.set_forward(block, forward)


def rewire_gpt2_block(block: nn.Module, skips: nn.ModuleDict, placement: str, patches: Patches) -> None:
    """``GPT2Block``: residual sums around ``attn(ln_1(Y))`` and ``mlp(ln_2(Y))``, skips ``"attn"`` and ``"mlp"``.

    The block's own signature binds the call, so positional and keyword arguments (cache, masks,
    position ids, ...) reach the attention as they would in the original; cross-attention is not rewired.
    """
    signature = inspect.signature(type(block).forward)

    def forward(*args, **kwargs) -> torch.Tensor:
        bound = signature.bind(block, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        extra = arguments.pop("kwargs", {})
        if any(arguments.get(name) is not None for name in _GPT2_CROSS_ATTENTION_ARGS):
            raise NotImplementedError("lambdaskip.retrofit does not rewire GPT-2 cross-attention; "
                                      "call lambdaskip.restore(model) to use it")
        attn_kwargs = {k: v for k, v in arguments.items() if k not in _GPT2_CROSS_ATTENTION_ARGS}
        hidden_states = attn_kwargs.pop("hidden_states")
        attn_in = block.ln_1(hidden_states) if placement == "native" else hidden_states
        attn_out = block.attn(attn_in, **attn_kwargs, **extra)[0]
        hidden_states = skips["attn"](attn_out, hidden_states)
        mlp_in = block.ln_2(hidden_states) if placement == "native" else hidden_states
        return skips["mlp"](block.mlp(mlp_in), hidden_states)

    patches.set_forward(block, forward)
