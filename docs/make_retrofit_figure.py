"""Make docs/img/retrofit_mamba2_mu.png: a random 64-layer ``transformers`` Mamba-2 retrofitted with post-norm
λ-skips, gating on and off, λ ∈ {0, 1, 10, 100}; normalised μ per layer (about a minute on one CPU core).

    python docs/make_retrofit_figure.py [PATH]

Needs the ``hf`` and ``plot`` extras (transformers, matplotlib).
"""
from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

import torch

from lambdaskip.common import atomic_write
from lambdaskip.hf.collapse import hf_collapse_study, tiny_mamba2


def mamba2_mu_sweep(depth: int = 64, d_model: int = 32, seqlen: int = 64, batch: int = 2,
                    lams: Sequence[float] = (0.0, 1.0, 10.0, 100.0), seed: int = 0) -> list[dict]:
    """``hf_collapse_study`` of ``tiny_mamba2`` with gating on and off, post-norm placement (the model's
    RMSNorm moved after each sum), on random tokens: rows of normalised μ."""
    model = tiny_mamba2(depth, d_model, seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(seed))
    return hf_collapse_study(model, ids, lams, gatings=(True, False))


def plot_mamba2_mu(path: str | os.PathLike, **sweep_kwargs) -> list[dict]:
    """Run :func:`mamba2_mu_sweep` and save its figure (one panel per gating, one line per λ) to ``path``,
    atomically. Returns the sweep's rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = mamba2_mu_sweep(**sweep_kwargs)
    lams = sorted({row["lam"] for row in rows})
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, gating in zip(axes, (True, False)):
        for lam in lams:
            selected = [r for r in rows if r["gating"] == gating and r["lam"] == lam]
            layers = sorted({r["layer"] for r in selected})
            means = [sum(r["value"] for r in selected if r["layer"] == k) / sum(r["layer"] == k for r in selected)
                     for k in layers]
            axis.plot(layers, means, label=f"λ = {lam:g}")
        axis.set_title(f"gating {'on' if gating else 'off (removed)'}")
        axis.set_xlabel("layer")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("normalised μ = μ(Y) / ‖Y‖_F")
    axes[1].legend()
    depth = max(row["layer"] for row in rows)
    figure.suptitle(f"Random {depth}-layer Mamba-2 (transformers) retrofitted: Y ← RMSNorm(mixer(Y) + λ·Y)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return rows


if __name__ == "__main__":
    plot_mamba2_mu(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "img",
                                                                       "retrofit_mamba2_mu.png"))
