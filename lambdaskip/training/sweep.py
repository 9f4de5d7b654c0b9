"""A sweep over architecture × λ setting (fixed values, learnable initial values) × learning rate × seed.

Each run goes to ``OUT/runs/<arch>_<fixed|learn>{λ}_lr{lr}_s{seed}`` and resumes when it exists, so an
interrupted sweep continues where it stopped. At the end rank 0 writes

- ``results.csv``: one row per run (final and best accuracy, final λ per layer, final normalised μ);
- ``results.md``: per arch and λ setting, the learning rate with the best mean accuracy (the paper's
  protocol: the learning rate is swept per model, by default over logspace(−4, −2, 4), and the best
  reported), the mean ± std over seeds (3 by default) and the time to learn: the first epoch whose
  evaluation accuracy reaches 50 %;
- ``accuracy_vs_lambda.png`` (accuracy against λ per arch; learnable λ plotted at its initial value) and
  ``mu_over_training.png`` (normalised μ after every layer, over the epochs, one panel per arch and setting);
- ``sweep.json``: the :class:`SweepConfig`, the base configuration, data source and versions.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lambdaskip.common import atomic_write, versions
from lambdaskip.training.config import TrainConfig
from lambdaskip.training.loop import train
from lambdaskip.training.tensorboard_log import require_tensorboard

# The paper's learning-rate grid, logspace(−4, −2, 4), rounded to 3 significant digits.
PAPER_LRS = [1e-4, 4.64e-4, 2.15e-3, 1e-2]
LEARNED = 0.5  # accuracy that counts as "learned" for the time-to-learn column


@dataclass
class SweepConfig:
    """What a sweep varies around its base :class:`~lambdaskip.training.TrainConfig`.

    out: the sweep folder; archs: architectures (None: the base's); lams: fixed λ values; learnable_inits:
    initial values of learnable λ; lrs: learning rates swept per (arch, λ setting), the best reported
    (default: the paper's logspace(−4, −2, 4); None: the base's lr only); seeds: seeds (default 0, 1, 2).
    """
    out: str
    archs: list[str] | None = None
    lams: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    learnable_inits: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    lrs: list[float] | None = field(default_factory=lambda: list(PAPER_LRS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    log_mu: bool = False  # mu_over_training.png on a log y axis


def run_name(arch: str, lam: float, learnable: bool, lr: float, seed: int) -> str:
    return f"{arch}_{'learn' if learnable else 'fixed'}{lam:+g}_lr{lr:g}_s{seed}"


def run_sweep(sweep: SweepConfig, base: TrainConfig) -> list[dict]:
    """Train (or resume) every combination of ``sweep`` around ``base``; returns the rows.

    Each run is ``base`` with its arch, λ, learnable flag, lr, seed and out replaced, validated first; with
    ``base.tensorboard``, each run logs to its own TensorBoard run ``<tensorboard>/<run name>``.
    """
    archs = sweep.archs or [base.arch]
    settings = [(lam, False) for lam in sweep.lams] + [(lam, True) for lam in sweep.learnable_inits]
    if not settings:
        raise ValueError("nothing to run: give --lams and/or --learnable-inits")
    if not sweep.seeds:
        raise ValueError("no seed given")
    lrs = sweep.lrs or [base.lr]
    if base.tensorboard:
        require_tensorboard()
    out = Path(sweep.out)
    base = dataclasses.replace(base, out=sweep.out)
    rows, histories, rank, source = [], {}, 0, ""
    total, done = len(archs) * len(settings) * len(lrs) * len(sweep.seeds), 0
    for arch in archs:
        for lam, learnable in settings:
            for lr in lrs:
                for seed in sweep.seeds:
                    name = run_name(arch, lam, learnable, lr, seed)
                    config = dataclasses.replace(base, arch=arch, lam=lam, learnable=learnable, lr=lr, seed=seed,
                                                 out=str(out / "runs" / name),
                                                 tensorboard=base.tensorboard and str(Path(base.tensorboard) / name))
                    config.validate()
                    done += 1
                    if _is_main():
                        print(f"run {done}/{total}: {name}", file=sys.stderr, flush=True)
                    summary = train(config)
                    rank = summary["rank"]
                    final = summary["final"]
                    row = {"arch": arch, "lam": lam, "learnable": learnable, "lr": lr, "seed": seed,
                           "eval_acc": final["eval_acc"], "best_eval_acc": summary["best_eval_acc"],
                           "test_acc": final.get("test_acc", ""), "epochs": summary["epochs_done"],
                           "epochs_to_learn": epochs_to_learn(summary["history"]),
                           "seconds": sum(r["seconds"] for r in summary["history"])}
                    row.update({k: v for k, v in final.items() if k.startswith(("lam", "mu"))})
                    rows.append(row)
                    histories[name] = summary["history"]
                    source = summary["data_source"]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_rows(out / "results.csv", rows)
        atomic_write(out / "results.md", summary_table(rows, source).encode())
        record = {"sweep": asdict(sweep), "base_config": asdict(base),
                  "varied_per_run": ["arch", "lam", "learnable", "lr", "seed", "out"],
                  "data_source": source, "versions": versions()}
        atomic_write(out / "sweep.json", json.dumps(record, indent=1).encode())
        plot_sweep(out, rows, histories, log_mu=sweep.log_mu)
        print(f"wrote {out}/results.csv, results.md, sweep.json, accuracy_vs_lambda.png, mu_over_training.png",
              flush=True)
    return rows


def epochs_to_learn(history: list[dict]) -> int | str:
    """The first epoch whose accuracy (test where there is one, else evaluation) reaches ``LEARNED``;
    "" when none did."""
    for row in history:
        if row.get("test_acc", row["eval_acc"]) >= LEARNED:
            return row["epoch"]
    return ""


def _time_to_learn(runs: list[dict]) -> str:
    """Mean ± std of the epochs to learn over the runs that learned, and how many did (e.g. "3.0 ± 1.0 (2/3)")."""
    epochs = [r["epochs_to_learn"] for r in runs if r["epochs_to_learn"] != ""]
    if not epochs:
        return f"never (0/{len(runs)})"
    text = f"{statistics.fmean(epochs):.1f}" + (f" ± {statistics.stdev(epochs):.1f}" if len(epochs) > 1 else "")
    return f"{text} ({len(epochs)}/{len(runs)})"


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def _best_lr_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(arch, λ, learnable) -> the rows of the learning rate with the best mean final accuracy."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for row in rows:
        groups.setdefault((row["arch"], row["lam"], row["learnable"]), {}).setdefault(row["lr"], []).append(row)
    return {key: max(by_lr.values(), key=lambda runs: statistics.fmean(r["eval_acc"] for r in runs))
            for key, by_lr in groups.items()}


def summary_table(rows: list[dict], source: str) -> str:
    """A Markdown table: per arch and λ setting, accuracy (%) mean ± std over seeds at the best lr."""
    has_test = any(row["test_acc"] != "" for row in rows)
    header = ["arch", "λ", "best lr", "seeds", "eval acc %", "best-epoch eval acc %"]
    header += ["test acc %"] if has_test else []
    header += [f"epochs to {100 * LEARNED:g} % (learned/runs)", "final λ (mixer skips)", "final μ/‖Y‖ last layer"]
    lrs = ", ".join(f"{lr:g}" for lr in sorted({row["lr"] for row in rows}))
    lines = [f"Data: {source}. Accuracy at the last epoch unless stated; mean ± std over seeds, at the learning "
             f"rate (of {lrs}) with the best mean final eval accuracy per arch and λ setting.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (arch, lam, learnable), runs in _best_lr_groups(rows).items():
        last_mu = max(k for k in runs[0] if k.startswith("mu"))
        lams = [statistics.fmean(v for k, v in r.items() if k.startswith("lam") and k[3:].isdigit()) for r in runs]
        cells = [arch, f"learnable from {lam:+g}" if learnable else f"{lam:+g}", f"{runs[0]['lr']:g}", str(len(runs)),
                 _mean_std([r["eval_acc"] for r in runs]), _mean_std([r["best_eval_acc"] for r in runs])]
        cells += [_mean_std([r["test_acc"] for r in runs])] if has_test else []
        cells += [_time_to_learn(runs), f"{statistics.fmean(lams):+.2f}", f"{statistics.fmean(r[last_mu] for r in runs):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(out: Path, rows: list[dict], histories: dict[str, list[dict]], log_mu: bool = False) -> None:
    """accuracy_vs_lambda.png and mu_over_training.png (needs matplotlib); ``log_mu``: μ on a log axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    best = _best_lr_groups(rows)
    archs = list(dict.fromkeys(row["arch"] for row in rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, arch in enumerate(archs):
        color = f"C{index}"
        for learnable, style in ((False, "o-"), (True, "s")):  # learnable runs are separate points: no line
            keys = sorted(k for k in best if k[0] == arch and k[2] == learnable)
            if not keys:
                continue
            means = [statistics.fmean(r["eval_acc"] for r in best[k]) * 100 for k in keys]
            stds = [statistics.pstdev([r["eval_acc"] for r in best[k]]) * 100 for k in keys]
            label = f"{arch}, {'learnable λ (x = initial value)' if learnable else 'fixed λ'}"
            shift = 0.06 if learnable else 0.0  # keep learnable markers beside the fixed ones at the same λ
            ax.errorbar([k[1] + shift for k in keys], means, yerr=stds, fmt=style, color=color, capsize=3, label=label)
    ax.set_xlabel("λ")
    ax.set_ylabel("eval accuracy at the last epoch (%)\n(MQAR: test set; images: validation)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axes
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_lambda.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    keys = sorted(best, key=lambda k: (k[0], k[2], k[1]))
    per_arch = max(sum(1 for k in keys if k[0] == arch) for arch in archs)
    columns = min(4, per_arch)  # wrap the settings of an arch into rows of at most 4 panels
    lines = -(-per_arch // columns)
    fig, axes = plt.subplots(len(archs) * lines, columns, squeeze=False,
                             figsize=(3.0 * columns, 2.6 * len(archs) * lines), sharey=True)
    for ax in axes.flat:
        ax.set_visible(False)
    for key in keys:
        index = [k for k in keys if k[0] == key[0]].index(key)
        ax = axes[archs.index(key[0]) * lines + index // columns][index % columns]
        ax.set_visible(True)
        first = best[key][0]
        history = histories[run_name(key[0], key[1], key[2], first["lr"], first["seed"])]
        layers = sorted((k for k in history[0] if k.startswith("mu")), key=lambda k: int(k[2:]))
        epochs = [r["epoch"] for r in history]
        for layer in layers:
            ax.plot(epochs, [r[layer] for r in history], label=f"layer {layer[2:]}")
        ax.set_title(f"{key[0]} {'learnable from ' if key[2] else ''}λ={key[1]:+g}", fontsize=8)
        if log_mu:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("μ/‖Y‖_F")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, [label.replace("layer 0", "layer 0 (input)") for label in labels], fontsize=7,
               loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "mu_over_training.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
