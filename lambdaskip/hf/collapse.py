"""Rank collapse in ``transformers`` models: offline loading, inputs, μ per layer.

- :func:`load_local_hf_model`: a model (and its tokenizer, when it has one) from a local directory or the
  local Hugging Face cache; it never downloads.
- :func:`hf_collapse_inputs`: token ids for a depth study, from the model's own tokenizer when present.
- :func:`layer_trajectory`: μ (or another metric) of the hidden states entering the first layer and
  leaving each layer, in call order (so ALBERT's shared layer counts once per application).
- :func:`hf_collapse_study`: retrofit / record / restore over a grid of λ and gating: tidy rows.
- :func:`tiny_mamba2`: a small random ``Mamba2Model`` (tests, and the docs figure made by
  ``docs/make_retrofit_figure.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lambdaskip.hf.adapter import find_layers, restore, retrofit
from lambdaskip.metrics import METRIC_FUNCTIONS, METRICS


def load_local_hf_model(path_or_name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The base model (``AutoModel``: hidden states out, no head) and tokenizer of a locally available model.

    Args:
        path_or_name: a directory with ``config.json`` and weights, or a hub name already in the local cache.
        device, dtype: where and in which dtype to put the model (dtype None: as saved).
    Returns:
        ``(model, tokenizer)`` with the model in eval mode; tokenizer None when none is available locally.
    Raises:
        FileNotFoundError: the model is not available locally (nothing is downloaded).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    try:
        AutoConfig.from_pretrained(path_or_name, local_files_only=True)
        model = AutoModel.from_pretrained(path_or_name, local_files_only=True,
                                          **({} if dtype is None else {"dtype": dtype}))
    except OSError as error:
        raise FileNotFoundError(
            f"{path_or_name!r} is not available locally: it is neither a model directory nor in the local Hugging "
            "Face cache, and lambdaskip never downloads (save the model with save_pretrained, or copy it into "
            f"the cache, then retry). Details: {error}") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_name, local_files_only=True)
    except (OSError, ValueError, KeyError):
        tokenizer = None
    if tokenizer is not None and not getattr(tokenizer, "vocab_size", 0):
        tokenizer = None  # transformers may build an empty tokenizer from the config alone
    return model.to(device).eval(), tokenizer


def hf_collapse_inputs(path_or_name: str, texts: Sequence[str] | None = None, seqlen: int = 128, batch: int = 4,
                       seed: int = 0, device: str | torch.device = "cpu"):
    """A locally available model and the token ids to study it on.

    The texts are tokenised with the model's own tokenizer, joined into one stream and cut into ``batch`` rows
    of ``seqlen`` tokens. Without a tokenizer, texts, or enough tokens, the ids are drawn uniformly from the
    vocabulary with ``seed``.

    Returns:
        ``(model, input_ids, source)``: input_ids (batch, seqlen) int64 on ``device``; source is
        ``"tokenizer"`` or ``"random tokens"``.
    """
    if not isinstance(seqlen, int) or seqlen <= 0:
        raise ValueError(f"seqlen must be a positive int, got {seqlen!r}")
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    model, tokenizer = load_local_hf_model(path_or_name, device=device)
    if tokenizer is not None and texts:
        stream = [token for text in texts for token in tokenizer(text)["input_ids"]]
        if len(stream) >= seqlen * batch and max(stream) < model.config.vocab_size:
            ids = torch.tensor(stream[:seqlen * batch], dtype=torch.int64).reshape(batch, seqlen)
            return model, ids.to(device), "tokenizer"
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=generator)
    return model, ids.to(device), "random tokens"


@torch.no_grad()
def layer_trajectory(model: nn.Module, input_ids: torch.Tensor, metrics: Sequence[str] = ("normalized_mu",),
                     **forward_kwargs) -> dict[str, torch.Tensor]:
    """Metrics of the hidden states along depth for a supported ``transformers`` model.

    Args:
        model: a Mamba-2, GPT-2, BERT or ALBERT model (retrofitted or not).
        input_ids: (batch, seqlen) token ids.
        metrics: names from :data:`lambdaskip.metrics.METRICS`.
        forward_kwargs: passed to ``model(input_ids, ...)``; Mamba-2 and GPT-2 get ``use_cache=False``
            unless given.
    Returns:
        ``{metric: (layers + 1, batch) float64}``; row 0 is the first layer's input, row k the k-th
        layer call's output.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics must be among {METRICS}, got {unknown}")
    family, found = find_layers(model)
    layers = [layer for _, layer in found]
    if family in ("mamba2", "gpt2"):
        forward_kwargs.setdefault("use_cache", False)  # no cache: the Mamba-2 mixer can take the SSD scan
    first_call = [True]
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}

    def record(y) -> None:
        y = y[0] if isinstance(y, tuple) else y
        for name in metrics:
            rows[name].append(METRIC_FUNCTIONS[name](y.detach()).double().cpu())

    def before_first(_module, args, kwargs):
        if first_call[0]:
            first_call[0] = False
            record(args[0] if args else kwargs["hidden_states"])

    handles = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda _m, _a, out: record(out)) for layer in layers]
    try:
        model(input_ids, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.stack(values) for name, values in rows.items()}


def tiny_mamba2(depth: int = 64, d_model: int = 32, seed: int = 0) -> nn.Module:
    """A randomly initialised ``Mamba2Model`` (headdim 16, state 16, vocabulary 256) in eval mode."""
    from transformers import Mamba2Config, Mamba2Model
    config = Mamba2Config(vocab_size=256, hidden_size=d_model, num_hidden_layers=depth, state_size=16, head_dim=16,
                          num_heads=2 * d_model // 16, expand=2, n_groups=1, chunk_size=64, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Mamba2Model(config).eval()


def hf_collapse_study(model: nn.Module, input_ids: torch.Tensor, lams: Sequence[float] = (0.0, 1.0, 10.0, 100.0),
                      gatings: Sequence[bool] = (True,), placement: str = "post", norm: str | None = None,
                      metrics: Sequence[str] = ("normalized_mu",)) -> list[dict]:
    """The depth study on one ``transformers`` model: for each (gating, λ), retrofit, record, restore.

    Args:
        model: a supported, not retrofitted model (left as it was on return).
        input_ids: (batch, seqlen) token ids.
        lams, gatings: the grid (gating False is for Mamba-2 only).
        placement, norm: passed to :func:`lambdaskip.hf.retrofit`.
        metrics: names from :data:`lambdaskip.metrics.METRICS`.
    Returns:
        tidy rows ``{"gating", "lam", "layer", "metric", "batch", "value"}``.
    """
    rows = []
    for gating in gatings:
        for lam in lams:
            retrofit(model, lam=lam, gating=gating, placement=placement, norm=norm)
            try:
                trajectories = layer_trajectory(model, input_ids, metrics)
            finally:
                restore(model)
            rows += [{"gating": gating, "lam": float(lam), "layer": layer, "metric": metric, "batch": b,
                      "value": float(value)}
                     for metric, values in trajectories.items()
                     for layer, per_batch in enumerate(values.tolist()) for b, value in enumerate(per_batch)]
    return rows
