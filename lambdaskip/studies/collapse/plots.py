"""PNG plots of a collapse study (matplotlib is optional: the ``plot`` extra).

Each function takes a results dict (of :func:`lambdaskip.studies.collapse.run_study`, or of
:func:`~lambdaskip.studies.collapse.run_hf_study` for :func:`hf_per_layer_png`) and returns PNG bytes, so
the caller writes them atomically. Conventions: λ is coloured on a diverging map (blue < 0 < red, grey at
0, the same depth for +λ and -λ so pairs read as pairs); layer 0 is the input, before the first block;
legends sit outside the axes; on a log axis the lower ± std band is clipped at a tenth of the mean.
"""
from __future__ import annotations

import importlib.util
import io
import math
import textwrap


def available() -> bool:
    """True when matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def load() -> None:
    """Import matplotlib now, before a study runs, when it is installed. A Ctrl-C that lands inside a C
    extension's import (matplotlib's ft2font) surfaces as an ImportError, not a KeyboardInterrupt, and
    aborts the interpreter: imported up front, the later plotting only runs Python and drawing code."""
    if available():
        _pyplot()


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


def lam_colors(lams: list[float]) -> dict[float, tuple]:
    """A colour per λ on the diverging map: sign gives the hue, log(1 + |λ|) the depth (λ = 0: dark grey)."""
    plt = _pyplot()
    cmap = plt.get_cmap("coolwarm")
    scale = max((math.log1p(abs(lam)) for lam in lams), default=1.0) or 1.0
    return {lam: cmap(0.5 + math.copysign(0.2 + 0.3 * math.log1p(abs(lam)) / scale, lam)) if lam
            else (0.3, 0.3, 0.3, 1.0) for lam in lams}


def _band_low(mean: list[float], std: list[float], log: bool) -> list[float]:
    return [max(m - s, m / 10) if log else max(m - s, 0.0) for m, s in zip(mean, std)]


def _title(text: str, inches: float) -> str:
    return "\n".join(textwrap.wrap(text, width=max(40, int(inches * 13))))


LAYER_LABEL = "layer (0 = the input, before the first block)"


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
    colors = lam_colors(lams)
    for ax, panel in zip(axes.flat, panels):
        for row in sorted(results["summary"], key=lambda r: r["lam"]):
            if row["variant"] != panel:
                continue
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            layers = range(len(mean))
            color = colors[row["lam"]]
            ax.plot(layers, mean, color=color, label=f"λ = {row['lam']:g}", lw=1.6)
            low = _band_low(mean, std, log=metric == "mu")
            ax.fill_between(layers, low, [m + s for m, s in zip(mean, std)], color=color, alpha=0.18, lw=0)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(LAYER_LABEL)
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
    fig.suptitle(_title(_subtitle(results), 5.2 * columns), fontsize=9)
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
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    ax.set_title(_title(_subtitle(results), 6.4), fontsize=8)
    return _png(fig)


def hf_per_layer_png(results: dict) -> bytes:
    """Normalised μ per layer of a retrofitted ``transformers`` model: one curve per λ (± std over the
    batch), one panel per gate setting (Mamba-2) or a single panel."""
    plt = _pyplot()
    values: dict[tuple, dict[int, list[float]]] = {}
    for row in results["rows"]:
        if row["metric"] == "normalized_mu":
            values.setdefault((row["gating"], row["lam"]), {}).setdefault(row["layer"], []).append(row["value"])
    gatings = list(dict.fromkeys(gating for gating, _ in values))
    lams = sorted({lam for _, lam in values})
    colors = lam_colors(lams)
    fig, axes = plt.subplots(1, len(gatings), figsize=(5.2 * len(gatings), 4.2), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, gating in zip(axes.flat, gatings):
        for lam in lams:
            layers = sorted(values.get((gating, lam), {}))
            if not layers:
                continue
            per = [values[(gating, lam)][k] for k in layers]
            mean = [sum(v) / len(v) for v in per]
            std = [math.sqrt(sum((x - m) ** 2 for x in v) / len(v)) for v, m in zip(per, mean)]
            ax.plot(layers, mean, color=colors[lam], lw=1.6, label=f"λ = {lam:g}")
            ax.fill_between(layers, _band_low(mean, std, log=False), [m + s for m, s in zip(mean, std)],
                            color=colors[lam], alpha=0.18, lw=0)
        ax.set_title(results["model_type"] + ("" if gating is None else f", gating {'on' if gating else 'off'}"),
                     fontsize=10)
        ax.set_xlabel(LAYER_LABEL)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("normalised μ = μ(Y)/‖Y‖_F")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(lams), 10), fontsize=8)
    fig.suptitle(_title(f"{results['config']['hf_model']} retrofitted with post-norm λ-skips; {results['input']}",
                        5.2 * len(gatings)), fontsize=9)
    return _png(fig)


def depth_of_collapse_png(results: dict) -> bytes:
    """The depth of collapse against λ (symmetric-log λ axis, log depth axis), one line per variant: the first
    layer where the mean normalised μ falls below the threshold (filled markers) and where it has halved
    (open markers); λ values that never collapse within the depth are drawn at the top, marked "never"."""
    plt = _pyplot()
    config = results["config"]
    K = config["depth"]
    never = 1.5 * K
    fig, ax = plt.subplots(figsize=(8.4, 4.6), layout="constrained")
    for index, panel in enumerate(_panels(results)):
        rows = sorted((row for row in results["summary"] if row["variant"] == panel), key=lambda r: r["lam"])
        lams = [r["lam"] for r in rows]
        color = f"C{index}"
        for key, marker, fill in (("collapse_depth", "o", color), ("half_depth", "s", "none")):
            # "never" a little apart per variant, so that overlapping lines stay visible
            depths = [never * (1 + 0.05 * index) if r[key] is None else r[key] for r in rows]
            ax.plot(lams, depths, marker=marker, mfc=fill, color=color, lw=1.2 if key == "collapse_depth" else 0.6,
                    ls="-" if key == "collapse_depth" else ":",
                    label=f"{panel}: {'collapsed' if key == 'collapse_depth' else 'halved'}")
    ax.axhline(K, color="0.5", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    lams = sorted({row["lam"] for row in results["summary"]})
    ax.set_xticks(lams, [f"{lam:g}" for lam in lams], fontsize=8)
    ticks = [t for t in (1, 10, 100, 1000) if t < K / 1.5] + [K, never]
    ax.set_yticks(ticks, [str(t) for t in ticks[:-1]] + ["never"])
    ax.minorticks_off()
    ax.set_xlabel("λ")
    ax.set_ylabel(f"first layer with normalised μ < {config['collapse_threshold']:g} (●) / halved (□)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(_title(_subtitle(results), 8.4), fontsize=8)
    return _png(fig)
