"""Theorem 4.1's verdict on a collapse study's runs (:func:`lambdaskip.theory` closed forms)."""
from __future__ import annotations

import torch

from lambdaskip import theory
from lambdaskip.metrics import mu
from lambdaskip.studies.collapse.config import StudyConfig


def verdict(config: StudyConfig, runs: list[dict], inputs_by_seed: dict[int, torch.Tensor]) -> list[dict]:
    """Theorem 4.1 for each (variant, λ): constants (sup over layers, seeds and the batch), |λ|_min(a),
    a_max(λ), Eq. 7, and whether μ(Ŷ_0)² ≥ b for the ℓ2-normalised inputs Ŷ_0 (then ``certified``).

    ``runs`` are :func:`lambdaskip.studies.collapse.run.run_one` results; inputs_by_seed maps each seed to
    its (sequences, seqlen, d_model) batch. Returns one row (dict) per (variant, λ), in the runs' order.
    """
    a, K = config.rate_a, config.depth
    mu0_sq = min(float(mu(y / y.norm(dim=-1, keepdim=True)).min()) ** 2 for y in inputs_by_seed.values())
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["lam"]), []).append(run)
    rows = []
    for (label, lam), group in groups.items():
        C_M = max(max(r["C_M"]) for r in group)
        S = max(max(r["S"]) for r in group)
        eq7 = theory.eq7_holds(lam, a, S, C_M)
        b = theory.input_threshold_b(lam, a, config.seqlen, config.d_model, S, C_M, K) if eq7 else None
        exact = group[0]["norm"] == "l2" and group[0]["form"] != "approximate"
        rows.append({"variant": label, "lam": lam, "C_M": C_M, "S": S, "form": group[0]["form"], "a": a,
                     "lambda_min": theory.lambda_min(a, S, C_M), "a_max": theory.a_max(lam, S, C_M),
                     "eq7": eq7, "b": b, "mu0_sq": mu0_sq, "certified": bool(eq7 and mu0_sq >= b),
                     "theory_exact": exact})
    return rows
