"""PNG plots of a collapse study (matplotlib is optional: the ``plot`` extra).

Both functions take the results dict of :func:`lambdaskip.studies.collapse.run_study` and return PNG
bytes, so the caller writes them atomically.
"""
from __future__ import annotations

import importlib.util
import io
import math


def available() -> bool:
    """True when matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def _panels(results: dict) -> list[str]:
    return list(dict.fromkeys(row["variant"] for row in results["summary"]))


def _subtitle(results: dict) -> str:
    config, source = results["config"], results["input"]
    what = "Gaussian tokens" if source["kind"] == "gaussian" else "text excerpts"
    return (f"random-init stacks, depth {config['depth']}, d_model {config['d_model']}, seqlen {config['seqlen']}; "
            f"mean ± std over {source['sequences']} {what} × {len(config['seeds'])} seed(s)")


def per_layer_png(results: dict) -> bytes:
    """The configured metric per layer: one panel per variant, one curve per λ with a ± std band."""
    plt = _pyplot()
    metric = results["config"]["metric"]
    panels = _panels(results)
    columns = 2 if len(panels) == 4 else min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows + 0.6), squeeze=False,
                             sharey=metric != "mu", layout="constrained")
    lams = sorted({row["lam"] for row in results["summary"]})
    palette = plt.get_cmap("tab10" if len(lams) <= 10 else "viridis")
    colors = [palette(i if len(lams) <= 10 else i / (len(lams) - 1)) for i in range(len(lams))]
    for ax, panel in zip(axes.flat, panels):
        for row in results["summary"]:
            if row["variant"] != panel:
                continue
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            layers = range(len(mean))
            color = colors[lams.index(row["lam"])]
            ax.plot(layers, mean, color=color, label=f"λ = {row['lam']:g}", lw=1.6)
            low = [max(m - s, 1e-30 if metric == "mu" else 0.0) for m, s in zip(mean, std)]
            ax.fill_between(layers, low, [m + s for m, s in zip(mean, std)], color=color, alpha=0.18, lw=0)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("layer")
        if len(mean) > 129:       # deep stacks: a log depth axis (layer 0, the input, on its linear part)
            ax.set_xscale("symlog", linthresh=1.0)
        if metric == "mu":
            ax.set_yscale("log")
            ax.set_ylabel("μ(Y)")
        else:
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("normalised μ = μ(Y)/‖Y‖_F")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(lams), 10), fontsize=8)
    fig.suptitle(_subtitle(results), fontsize=9)
    return _png(fig)


def final_vs_lambda_png(results: dict) -> bytes:
    """Normalised μ at the last layer against λ (symmetric-log axis), one line per variant, ± std bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for panel in _panels(results):
        rows = sorted((row for row in results["summary"] if row["variant"] == panel), key=lambda r: r["lam"])
        ax.errorbar([r["lam"] for r in rows], [r["normalized_mu_mean"][-1] for r in rows],
                    yerr=[r["normalized_mu_std"][-1] for r in rows], marker="o", ms=4, capsize=3, label=panel)
    ax.set_xscale("symlog", linthresh=1.0)
    lams = sorted({row["lam"] for row in results["summary"]})
    ax.set_xticks(lams, [f"{lam:g}" for lam in lams], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("λ")
    ax.set_ylabel(f"normalised μ at layer {results['config']['depth']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_subtitle(results), fontsize=8)
    return _png(fig)


def depth_of_collapse_png(results: dict) -> bytes:
    """The depth of collapse against λ (symmetric-log λ axis, log depth axis), one line per variant: the first
    layer where the mean normalised μ falls below the threshold (filled markers) and where it has halved
    (open markers); λ values that never collapse within the depth are drawn at the top, marked "never"."""
    plt = _pyplot()
    config = results["config"]
    K = config["depth"]
    never = 1.5 * K
    fig, ax = plt.subplots(figsize=(6.8, 4.4), layout="constrained")
    for index, panel in enumerate(_panels(results)):
        rows = sorted((row for row in results["summary"] if row["variant"] == panel), key=lambda r: r["lam"])
        lams = [r["lam"] for r in rows]
        color = f"C{index}"
        for key, marker, fill in (("collapse_depth", "o", color), ("half_depth", "s", "none")):
            depths = [never if r[key] is None else r[key] for r in rows]
            ax.plot(lams, depths, marker=marker, mfc=fill, color=color, lw=1.2 if key == "collapse_depth" else 0.6,
                    ls="-" if key == "collapse_depth" else ":",
                    label=f"{panel}: {'collapsed' if key == 'collapse_depth' else 'halved'}")
    ax.axhline(K, color="0.5", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    lams = sorted({row["lam"] for row in results["summary"]})
    ax.set_xticks(lams, [f"{lam:g}" for lam in lams], fontsize=8)
    ticks = [t for t in (1, 10, 100, 1000) if t < K] + [K, never]
    ax.set_yticks(ticks, [str(t) for t in ticks[:-1]] + ["never"])
    ax.minorticks_off()
    ax.set_xlabel("λ")
    ax.set_ylabel(f"first layer with normalised μ < {config['collapse_threshold']:g} (●) / halved (□)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(_subtitle(results), fontsize=8)
    return _png(fig)
