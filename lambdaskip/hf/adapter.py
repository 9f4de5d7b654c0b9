"""``retrofit`` / ``restore``: turn a ``transformers`` model into a λ-skip model in place, and back.

Supported layers (found anywhere in the model, so heads like ``Mamba2ForCausalLM`` or
``BertForMaskedLM`` work too): ``Mamba2Block``, ``GPT2Block``, ``BertLayer``, ``AlbertLayer``.
Nothing is copied from ``transformers``: blocks keep their modules and weights; the retrofit adds one
:class:`~lambdaskip.modules.LambdaSkip` per residual sum (in ``layer.lambda_skips``, so λ is saved in the
state dict) and reroutes the sums through it with instance forwards and hooks, all recorded for
:func:`restore`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from lambdaskip.common import NORMS
from lambdaskip.hf import postnorm, prenorm
from lambdaskip.hf.mamba2_mixer import remove_gate, use_ssd_scan
from lambdaskip.hf.patching import Patches
from lambdaskip.modules import LambdaSkip

PLACEMENTS = ("native", "post")
SUPPORTED_MODELS = ("Mamba2Model", "Mamba2ForCausalLM", "GPT2Model", "GPT2LMHeadModel and other GPT-2 heads",
                    "BertModel and other BERT heads", "AlbertModel and other ALBERT heads")
# layer class -> (transformers module, family); a family is pre-norm (sums in the block) or post-norm.
LAYER_CLASSES = {
    "Mamba2Block": ("transformers.models.mamba2.modeling_mamba2", "mamba2"),
    "GPT2Block": ("transformers.models.gpt2.modeling_gpt2", "gpt2"),
    "BertLayer": ("transformers.models.bert.modeling_bert", "bert"),
    "AlbertLayer": ("transformers.models.albert.modeling_albert", "albert"),
}
PRE_NORM_FAMILIES = ("mamba2", "gpt2")
_RECORD = "_lambdaskip_retrofit"


@dataclass
class RetrofitSummary:
    """What :func:`retrofit` changed.

    Attributes:
        family: "mamba2", "gpt2", "bert" or "albert".
        layers: number of layers rewired (ALBERT: distinct shared layers).
        sites: qualified names of the rewired residual sums, e.g. ``"backbone.layers.3:mixer"``.
        lams: λ per layer at retrofit time.
        learnable, norm, placement, gating: the arguments as applied (norm: the λ-skip's norm, or
            ``"own"`` when the model's own norm closes each sum).
        ssd_scan: where the Mamba-2 mixer runs on lambdaskip's SSD scan: "cuda", "always" or "never".
        notes: model-specific remarks.
    """
    family: str
    layers: int
    sites: list[str]
    lams: list[float]
    learnable: bool
    norm: str
    placement: str
    gating: bool
    ssd_scan: str = "never"
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lams = sorted(set(self.lams))
        lam_text = f"{lams[0]:g}" if len(lams) == 1 else f"{len(lams)} values in [{lams[0]:g}, {lams[-1]:g}]"
        head = (f"lambdaskip retrofit of a {self.family} model: {len(self.sites)} residual sums in {self.layers} "
                "layers → norm(sublayer + λ·residual)")
        settings = (f"  λ = {lam_text} ({'learnable' if self.learnable else 'fixed'}), placement = {self.placement}, "
                    f"norm = {self.norm}, gating = {self.gating}, ssd_scan = {self.ssd_scan}")
        lines = [head, settings]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _layer_classes() -> dict[type, str]:
    try:
        import transformers
    except ImportError as error:
        raise ImportError("lambdaskip.retrofit needs the optional dependency transformers: "
                          "pip install 'lambdaskip[hf]'") from error
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(f"lambdaskip.retrofit needs transformers >= 5, found {transformers.__version__}")
    import importlib
    return {getattr(importlib.import_module(module), name): family for name, (module, family) in LAYER_CLASSES.items()}


def find_layers(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The supported layers of ``model`` in forward order: (family, [(qualified name, layer), ...]).

    Raises:
        ValueError: no supported layer, or layers of several families.
    """
    classes = _layer_classes()
    found = [(name, module, family) for name, module in model.named_modules()
             for cls, family in classes.items() if isinstance(module, cls)]
    families = sorted({family for _, _, family in found})
    if not found:
        raise ValueError(f"lambdaskip.retrofit does not support {type(model).__name__}: it found none of the layers "
                         f"{tuple(LAYER_CLASSES)}. Supported models: {', '.join(SUPPORTED_MODELS)}")
    if len(families) > 1:
        raise ValueError(f"lambdaskip.retrofit expects layers of one family, found {families}")
    return families[0], [(name, module) for name, module, _ in found]


def _check_args(lam, learnable, norm, gating, placement, ssd_scan, family: str, n_layers: int) -> list[float]:
    if not isinstance(learnable, bool):
        raise TypeError(f"learnable must be a bool, got {learnable!r}")
    if not isinstance(gating, bool):
        raise TypeError(f"gating must be a bool, got {gating!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if ssd_scan not in ("cuda", "always", "never"):
        raise ValueError(f"ssd_scan must be 'cuda', 'always' or 'never', got {ssd_scan!r}")
    if family in PRE_NORM_FAMILIES and placement == "native" and norm is not None:
        raise ValueError(f"norm={norm!r} needs placement='post' for {family} (a pre-norm model: with native placement "
                         "its own pre-norms stay where they are)")
    if not gating and family != "mamba2":
        raise ValueError(f"gating=False applies to Mamba-2 only, not to {family}")
    values = [lam] * n_layers if not isinstance(lam, Sequence) else list(lam)
    if len(values) != n_layers:
        raise ValueError(f"lam must be a number or a sequence of {n_layers} values (one per layer), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"lam must hold finite real numbers, got {value!r}")
    return [float(v) for v in values]


def _new_skip(d_model: int, lam: float, learnable: bool, norm: str | None, own_norm: nn.Module) -> LambdaSkip:
    """A λ-skip on the device of ``own_norm`` (float32 parameters); its norm starts from ``own_norm``'s weights when the
    kinds match (LayerNorm → "layernorm", an RMSNorm → "rmsnorm"), else from identity weights."""
    eps = getattr(own_norm, "eps", getattr(own_norm, "variance_epsilon", 1e-5))
    skip = LambdaSkip(d_model, lam, learnable, norm, eps).to(own_norm.weight.device)
    own_kind = "layernorm" if isinstance(own_norm, nn.LayerNorm) else "rmsnorm"
    if norm == own_kind:
        skip.weight.data.copy_(own_norm.weight.detach())
        if norm == "layernorm" and own_norm.bias is not None:
            skip.bias.data.copy_(own_norm.bias.detach())
    return skip


def _norm_of_site(family: str, layer: nn.Module, site: str) -> nn.Module:
    """The model's own norm that the λ-skip of ``site`` takes the place or weights of."""
    if family == "mamba2":
        return layer.norm
    if family == "gpt2":
        return layer.ln_1 if site == "attn" else layer.ln_2
    return (postnorm.bert_sites(layer) if family == "bert" else postnorm.albert_sites(layer))[site].norm_module


def retrofit(model: nn.Module, lam: float | Sequence[float] = 1.0, learnable: bool = False, norm: str | None = None,
             gating: bool = True, placement: str = "native", ssd_scan: str = "cuda"):
    """Rewire every residual sum of a ``transformers`` model to ``norm(sublayer + λ·residual)``, in place.

    Args:
        model: a Mamba-2, GPT-2, BERT or ALBERT model from ``transformers`` (>= 5), any head.
        lam: λ for every layer, or one value per layer (ALBERT: per distinct shared layer). Every sum of a
            layer (attention and MLP) uses that layer's λ. 1 with native placement changes nothing.
        learnable: λ becomes an ``nn.Parameter`` (else a buffer); either way it is in the state dict under
            ``<layer>.lambda_skips.<site>.lam``.
        norm: None keeps the model's own norm kind ("own"): BERT/ALBERT keep their LayerNorms; with
            ``placement="post"`` Mamba-2/GPT-2 move theirs after the sum (weights kept). "l2", "rmsnorm" or
            "layernorm" put that norm after every sum (fused with it by :func:`lambdaskip.ops.lambda_norm`,
            Triton on CUDA), starting from the displaced norm's weights when the kinds match.
        gating: False removes Mamba-2's silu(z) gate (its inner norm then normalises the scan output alone).
        placement: "native" keeps the model's norm placement; "post" is the paper's
            ``Y ← Norm(sublayer(Y) + λ·Y)``: pre-norms (Mamba-2, GPT-2) are bypassed. BERT and ALBERT are
            post-norm already, so both placements are the same for them.
        ssd_scan: Mamba-2 only: run the mixer on :func:`lambdaskip.ops.ssd_scan` for "cuda" inputs
            (default), "always", or "never" (the model's own mixer code). With ``use_cache=True`` the prompt
            runs through the scan and each new token through :func:`lambdaskip.ops.ssd_step`. It needs no
            padding mask; otherwise the model's own code runs. With ``gating=False`` it also runs in training
            mode on any device (so no fused transformers kernel with the gate built in can take over).
    Returns:
        ``(model, summary)``: the same model object, modified in place, and a :class:`RetrofitSummary`.
    Raises:
        TypeError/ValueError naming the argument; ValueError for an unsupported model (listing the
        supported ones) or one already retrofitted; ImportError without transformers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, _RECORD):
        raise ValueError("model is already retrofitted; call lambdaskip.restore(model) first")
    family, layers = find_layers(model)
    lams = _check_args(lam, learnable, norm, gating, placement, ssd_scan, family, len(layers))
    d_model = model.config.hidden_size
    patches, sites, notes = Patches(), [], []
    try:
        for (name, layer), layer_lam in zip(layers, lams):
            site_names = {"mamba2": ("mixer",), "gpt2": ("attn", "mlp")}.get(family) or tuple(
                (postnorm.bert_sites if family == "bert" else postnorm.albert_sites)(layer))
            if family in PRE_NORM_FAMILIES:
                skip_norm = None if placement == "native" else (norm or ("rmsnorm" if family == "mamba2"
                                                                          else "layernorm"))
            else:
                skip_norm = norm
            skips = nn.ModuleDict({site: _new_skip(d_model, layer_lam, learnable, skip_norm,
                                                   _norm_of_site(family, layer, site)) for site in site_names})
            patches.add_module(layer, "lambda_skips", skips)
            sites += [f"{name}:{site}" for site in site_names]
            if family == "mamba2":
                prenorm.rewire_mamba2_block(layer, skips, placement, patches)
                if not gating:
                    remove_gate(layer.mixer, patches)
                if ssd_scan != "never" or not gating:
                    use_ssd_scan(layer.mixer, gating, ssd_scan, patches)
            elif family == "gpt2":
                prenorm.rewire_gpt2_block(layer, skips, placement, patches)
            else:
                for site_name, site in (postnorm.bert_sites if family == "bert" else postnorm.albert_sites)(
                        layer).items():
                    postnorm.rewire_site(f"{name}:{site_name}", site, skips[site_name], norm is None, patches)
    except BaseException:
        patches.undo()
        raise
    if family == "albert":
        notes.append("ALBERT shares its layer weights across depth; λ is shared the same way (one per shared layer)")
    if family in PRE_NORM_FAMILIES and placement == "post":
        notes.append("pre-norms are bypassed (kept in the model, unused, for restore)")
    if family == "mamba2" and not gating:
        notes.append("without gating, training-mode mixers always run on lambdaskip's SSD scan")
    if family == "gpt2":
        notes.append("cross-attention (add_cross_attention) is not rewired; calling it raises")
    if skip_norm is None:
        norm_text = "own (the model's norms, unchanged)"
    elif norm is None:
        norm_text = f"{skip_norm} (the model's pre-norms moved after each sum, weights kept)"
    else:
        norm_text = norm
    summary = RetrofitSummary(family, len(layers), sites, lams, learnable, norm_text, placement, gating, ssd_scan if family == "mamba2" else "never", notes)
    object.__setattr__(model, _RECORD, (patches, summary))
    return model, summary


def retrofit_summary(model: nn.Module) -> RetrofitSummary | None:
    """The summary of the retrofit applied to ``model``, or None when it is not retrofitted."""
    record = getattr(model, _RECORD, None)
    return None if record is None else record[1]


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`retrofit` in place: the model computes exactly what it computed before. Returns the model.

    Learned λ values are dropped with the λ-skips (save ``model.state_dict()`` first to keep them).
    Raises ValueError when ``model`` was not retrofitted.
    """
    record = getattr(model, _RECORD, None)
    if record is None:
        raise ValueError("model was not retrofitted by lambdaskip.retrofit")
    record[0].undo()
    del model.__dict__[_RECORD]
    return model
