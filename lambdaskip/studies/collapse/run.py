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


def run_one(config: StudyConfig, variant: Variant, lam: float, seed: int, inputs: torch.Tensor) -> dict:
    """One stack on one batch: μ and normalised μ at every depth, and the per-layer constants.

    Returns a dict with ``normalized_mu`` and ``mu`` as (depth + 1) lists of per-sequence values, and
    ``C_M`` / ``S`` / ``form`` per layer.
    """
    stack = build_stack(variant.arch, config.depth, config.d_model, lam=lam, norm=variant.norm, seed=seed,
                        **mixer_kwargs(variant, config.d_model)).to(config.device)
    y = inputs.to(config.device)
    norm_mu, raw_mu, C_M, S, forms = [normalized_mu(y)], [mu(y)], [], [], set()
    for trace in theory.trace_blocks(stack.blocks, y):
        C_M.append(float(trace.constants.C_M.max()))
        S.append(trace.constants.S)
        forms.add(trace.constants.form)
        norm_mu.append(normalized_mu(trace.output))
        raw_mu.append(mu(trace.output))
    return {"variant": variant.label, "arch": variant.arch, "gating": variant.gating, "norm": variant.norm,
            "lam": lam, "seed": seed,
            "normalized_mu": torch.stack(norm_mu).double().cpu().tolist(),
            "mu": torch.stack(raw_mu).double().cpu().tolist(),
            "C_M": C_M, "S": S, "form": "approximate" if "approximate" in forms else sorted(forms)[0]}


def summarize(config: StudyConfig, runs: list[dict]) -> list[dict]:
    """Mean and std over seeds × sequences of both metrics at every depth, per (variant, λ)."""
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
        rows.append(row)
    return rows


def run_study(config: StudyConfig, progress: bool = True) -> dict:
    """Run every (variant, λ, seed) and return the results (what results.json holds)."""
    from tqdm.auto import tqdm

    config.validate()
    inputs_by_seed, input_info = {}, None
    for seed in config.seeds:
        inputs_by_seed[seed], input_info = make_inputs(config, seed)
    jobs = [(v, lam, seed) for v in variants(config) for lam in config.lams for seed in config.seeds]
    runs = []
    # On CPU the plain-PyTorch references run (no Triton interpreter, no extension build).
    backend = prefer_backend("reference") if config.device == "cpu" else contextlib.nullcontext()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with backend, tqdm(jobs, desc="collapse study", unit="stack", disable=not progress, file=sys.stderr) as bar:
            for variant, lam, seed in bar:
                bar.set_postfix_str(f"{variant.label}, λ={lam:g}")
                runs.append(run_one(config, variant, lam, seed, inputs_by_seed[seed]))
    finally:
        torch.set_num_threads(threads)
    return {"config": asdict(config), "versions": versions(), "input": input_info, "runs": runs,
            "summary": summarize(config, runs), "theorem": verdict(config, runs, inputs_by_seed)}
