"""The rank-collapse depth study (``lambdaskip collapse``): normalised μ per layer for a sweep of λ.

For every variant (architecture × Mamba-2 gating × norm, :mod:`.config`), λ and seed, a randomly
initialised stack of ``depth`` λ-skip blocks (:func:`lambdaskip.modules.build_stack`) runs on a batch of
sequences — by default the bundled public-domain text (:mod:`.text`) embedded by a seeded table — and μ is
recorded at every depth. At each block's input the mixer states the constants of Theorem 4.1
(:func:`lambdaskip.theory.trace_blocks`) for the verdict (:mod:`.verdict`). Outputs: :mod:`.outputs`.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict

import numpy as np
import torch

from lambdaskip import theory
from lambdaskip.common import versions
from lambdaskip.metrics import mu, normalized_mu
from lambdaskip.modules import build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.studies.collapse import text as text_inputs
from lambdaskip.studies.collapse.config import RECORDED, StudyConfig, Variant, mixer_kwargs, variants
from lambdaskip.studies.collapse.verdict import verdict


def make_inputs(config: StudyConfig, seed: int) -> tuple[torch.Tensor, dict]:
    """The study's batch for ``seed``: (sequences, seqlen, d_model) float32, and a description of it."""
    if config.input == "gaussian":
        return (text_inputs.gaussian_inputs(config.excerpts, config.seqlen, config.d_model, seed),
                {"kind": "gaussian", "sequences": config.excerpts})
    raw = text_inputs.read_text(config.text) if config.text else text_inputs.bundled_text()
    if config.hf_tokenizer:
        encode, vocab_size = text_inputs.hf_tokenizer(config.hf_tokenizer)
        tokenizer = f"huggingface:{config.hf_tokenizer}"
    else:
        encode, vocab_size, tokenizer = text_inputs.hash_encode, text_inputs.HASH_VOCAB_SIZE, "builtin-hash"
    ids = text_inputs.token_windows(raw, encode, config.seqlen, config.excerpts)
    return (text_inputs.embed(ids, config.d_model, vocab_size, seed),
            {"kind": "text", "source": config.text or "bundled:lambdaskip/data/excerpts.txt",
             "tokenizer": tokenizer, "vocab_size": vocab_size, "sequences": int(ids.shape[0])})


def run_sweep(config: StudyConfig, variant: Variant, seed: int, inputs: torch.Tensor,
              lams: list[float] | None = None) -> list[dict]:
    """One stack evaluated for every λ in a single pass: the sweep's K values become K slices of the batch.

    The stack is built once from ``seed`` with K λ values per block (:class:`lambdaskip.modules.LambdaSkip`),
    so slice k is exactly the stack with λ = λ_k: same weights, same inputs. μ and the constants are
    recorded layer by layer as the stack runs (:func:`lambdaskip.theory.trace_blocks` keeps no activations),
    so memory does not grow with depth.

    Args:
        inputs: (sequences, seqlen, d_model) float32; lams: the λ values (default ``config.lams``).
    Returns:
        one dict per λ, in order: ``normalized_mu`` and ``mu`` as (depth + 1) lists of per-sequence values,
        and ``C_M`` / ``S`` / ``form`` per layer.
    """
    lams = list(config.lams if lams is None else lams)
    K, sequences = len(lams), inputs.shape[0]
    stack = build_stack(variant.arch, config.depth, config.d_model, lam=[lams] * config.depth, norm=variant.norm,
                        seed=seed, **mixer_kwargs(variant, config.d_model)).to(config.device)
    y = inputs.to(config.device).repeat(K, 1, 1)

    def by_lam(values: torch.Tensor) -> torch.Tensor:      # (K·sequences,) -> (K, sequences)
        return values.reshape(K, sequences)

    norm_mu, raw_mu, C_M, S, forms = [by_lam(normalized_mu(y))], [by_lam(mu(y))], [], [], set()
    for trace in theory.trace_blocks(stack.blocks, y):
        C_M.append(by_lam(trace.constants.C_M).amax(dim=1))
        S.append(trace.constants.S)
        forms.add(trace.constants.form)
        norm_mu.append(by_lam(normalized_mu(trace.output)))
        raw_mu.append(by_lam(mu(trace.output)))
    norm_mu, raw_mu = torch.stack(norm_mu, 1).double().cpu(), torch.stack(raw_mu, 1).double().cpu()
    C_M = torch.stack(C_M, 1).double().cpu()
    form = "approximate" if "approximate" in forms else sorted(forms)[0]
    return [{"variant": variant.label, "arch": variant.arch, "gating": variant.gating, "norm": variant.norm,
             "lam": lam, "seed": seed, "normalized_mu": norm_mu[k].tolist(), "mu": raw_mu[k].tolist(),
             "C_M": C_M[k].tolist(), "S": S, "form": form}
            for k, lam in enumerate(lams)]


def run_one(config: StudyConfig, variant: Variant, lam: float, seed: int, inputs: torch.Tensor) -> dict:
    """:func:`run_sweep` for the single value ``lam``: the stack with that λ alone."""
    return run_sweep(config, variant, seed, inputs, [lam])[0]


def first_layer_below(values: list[float], threshold: float) -> int | None:
    """The first layer ℓ ≥ 1 with ``values[ℓ] < threshold``, or None when no layer is below it."""
    return next((layer for layer, value in enumerate(values) if layer >= 1 and value < threshold), None)


def summarize(config: StudyConfig, runs: list[dict]) -> list[dict]:
    """Per (variant, λ): mean and std over seeds × sequences of both metrics at every depth, and the depth of
    collapse — ``collapse_depth``, the first layer whose mean normalised μ falls below
    ``config.collapse_threshold``, and ``half_depth``, the first layer where it has halved from the input's —
    each None when it never happens within the depth."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["lam"]), []).append(run)
    rows = []
    for (label, lam), group in groups.items():
        row = {"variant": label, "lam": lam}
        for metric in RECORDED:
            values = np.concatenate([np.asarray(r[metric]) for r in group], axis=1)    # (depth + 1, n)
            row[f"{metric}_mean"] = values.mean(axis=1).tolist()
            row[f"{metric}_std"] = values.std(axis=1).tolist()
        mean = row["normalized_mu_mean"]
        row["collapse_threshold"] = config.collapse_threshold
        row["collapse_depth"] = first_layer_below(mean, config.collapse_threshold)
        row["half_depth"] = first_layer_below(mean, mean[0] / 2)
        rows.append(row)
    return rows


def run_study(config: StudyConfig, progress: bool = True) -> dict:
    """Run every (variant, λ, seed) and return the results (what results.json holds)."""
    from tqdm.auto import tqdm

    config.validate()
    inputs_by_seed, input_info = {}, None
    for seed in config.seeds:
        inputs_by_seed[seed], input_info = make_inputs(config, seed)
    jobs = [(variant, seed) for variant in variants(config) for seed in config.seeds]
    keyed_runs = []      # ((variant position, λ position, seed position), run): the order of results.json
    # On CPU the plain-PyTorch references run (no Triton interpreter, no extension build).
    backend = prefer_backend("reference") if config.device == "cpu" else contextlib.nullcontext()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with backend, tqdm(jobs, desc="collapse study", unit="stack", disable=not progress, file=sys.stderr) as bar:
            for job, (variant, seed) in enumerate(bar):
                bar.set_postfix_str(f"{variant.label}, seed {seed}, {len(config.lams)} λ in one pass")
                variant_position, seed_position = divmod(job, len(config.seeds))
                keyed_runs += [((variant_position, k, seed_position), run)
                               for k, run in enumerate(run_sweep(config, variant, seed, inputs_by_seed[seed]))]
    finally:
        torch.set_num_threads(threads)
    runs = [run for _, run in sorted(keyed_runs, key=lambda item: item[0])]
    return {"config": asdict(config), "versions": versions(), "input": input_info, "runs": runs,
            "summary": summarize(config, runs), "theorem": verdict(config, runs, inputs_by_seed)}
