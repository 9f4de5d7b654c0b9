"""λ-skip for post-norm encoders (BERT, ALBERT), where ``LayerNorm(branch + residual)`` closes each sublayer.

The sum happens inside code we do not touch (an attention's forward, say), but its two terms are outputs or
inputs of submodules, and the norm that follows is a module. So each site is rewired with hooks: one
catches the residual (an input or output of some module), one the branch (the output of the branch's last
module), and the norm module gets an instance ``forward`` that ignores the sum it is handed and returns
``norm(branch + λ·residual)`` instead — with the model's own norm (``norm=None``) or the λ-skip's fused one.
At λ = 1 with the model's own norm this is bit-identical to the original (``1·r`` is exact, ``+`` commutes).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lambdaskip.hf.patching import Patches
from lambdaskip.modules import LambdaSkip


class SumTerms:
    """The branch and residual of one residual sum, caught by hooks and consumed by the norm."""

    def __init__(self, site: str):
        self.site = site
        self.branch: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.branch is None or self.residual is None:
            raise RuntimeError(f"lambdaskip retrofit at {self.site}: the hooks did not see both terms of the "
                               "residual sum (did the model's forward change?)")
        terms = (self.branch, self.residual)
        self.branch = self.residual = None
        return terms


def catch_branch(terms: SumTerms, module: nn.Module, patches: Patches) -> None:
    """The output of ``module`` is the branch term."""
    def hook(_module, _args, output):
        terms.branch = output
    patches.add_hook(module.register_forward_hook(hook))


def catch_residual_argument(terms: SumTerms, module: nn.Module, index: int, name: str, patches: Patches) -> None:
    """The argument ``name`` (positional ``index``) of ``module`` is the residual term."""
    def hook(_module, args, kwargs):
        terms.residual = args[index] if len(args) > index else kwargs[name]
    patches.add_hook(module.register_forward_pre_hook(hook, with_kwargs=True))


def catch_residual_output(terms: SumTerms, module: nn.Module, patches: Patches) -> None:
    """The (first) output of ``module`` is the residual term."""
    def hook(_module, _args, output):
        terms.residual = output[0] if isinstance(output, tuple) else output
    patches.add_hook(module.register_forward_hook(hook))


def rewire_norm(terms: SumTerms, norm_module: nn.Module, skip: LambdaSkip, keep_norm: bool, patches: Patches) -> None:
    """``norm_module(branch + residual)`` becomes ``norm(branch + λ·residual)``.

    keep_norm: the model's own norm normalises ``skip(branch, residual)`` (a plain λ-sum); otherwise
    ``skip`` carries the norm and ``norm_module``'s parameters are left unused (restore() brings them back).
    """
    own_forward: Callable = type(norm_module).forward

    def forward(handed_sum: torch.Tensor) -> torch.Tensor:
        branch, residual = terms.take()
        mixed = skip(branch, residual)
        if mixed.shape != handed_sum.shape:
            raise RuntimeError(f"lambdaskip retrofit at {terms.site}: caught terms of shape {tuple(mixed.shape)} "
                               f"for a sum of shape {tuple(handed_sum.shape)}")
        return own_forward(norm_module, mixed) if keep_norm else mixed

    patches.set_forward(norm_module, forward)


@dataclass
class PostNormSite:
    """Where one ``norm(branch + residual)`` sum lives: the norm, the branch's last module, and the module whose
    argument ``residual_argument`` (index, name) — or, when that is None, whose first output — is the residual."""
    norm_module: nn.Module
    branch_module: nn.Module
    residual_module: nn.Module
    residual_argument: tuple[int, str] | None = None


def rewire_site(name: str, site: PostNormSite, skip: LambdaSkip, keep_norm: bool, patches: Patches) -> None:
    """Wire one site: catch its residual and its branch, and make its norm compute ``norm(branch + λ·residual)``."""
    terms = SumTerms(name)
    if site.residual_argument is None:
        catch_residual_output(terms, site.residual_module, patches)
    else:
        catch_residual_argument(terms, site.residual_module, *site.residual_argument, patches)
    catch_branch(terms, site.branch_module, patches)
    rewire_norm(terms, site.norm_module, skip, keep_norm, patches)


def bert_sites(layer: nn.Module) -> dict[str, PostNormSite]:
    """``BertLayer``'s sites; ``BertSelfOutput``/``BertOutput`` compute ``LayerNorm(dropout(dense(h)) + input_tensor)``."""
    owners = {"attention": layer.attention.output}
    if hasattr(layer, "crossattention"):
        owners["crossattention"] = layer.crossattention.output
    owners["ffn"] = layer.output
    return {name: PostNormSite(owner.LayerNorm, owner.dropout, owner, (1, "input_tensor"))
            for name, owner in owners.items()}


def albert_sites(layer: nn.Module) -> dict[str, PostNormSite]:
    """``AlbertLayer``'s sites: attention ``LayerNorm(h + output_dropout(dense(ctx)))``, then
    ``full_layer_layer_norm(ffn_output(...) + attention_output)``."""
    if getattr(layer, "chunk_size_feed_forward", 0):
        raise ValueError("lambdaskip.retrofit needs ALBERT's chunk_size_feed_forward = 0 (its feed-forward then "
                         "runs in one call whose output is the branch term)")
    attention = layer.attention
    return {"attention": PostNormSite(attention.LayerNorm, attention.output_dropout, attention, (0, "hidden_states")),
            "ffn": PostNormSite(layer.full_layer_layer_norm, layer.ffn_output, attention)}
