"""The rank-collapse depth study (``lambdaskip collapse``): normalised μ per layer for a sweep of λ.

For every variant (architecture × Mamba-2 gating × norm), λ and seed, a randomly initialised stack of
``depth`` λ-skip blocks (:func:`lambdaskip.modules.build_stack`) runs on a batch of sequences — by default
the bundled public-domain text (:mod:`lambdaskip.experiments.text`) embedded by a seeded table — and μ is
recorded at every depth. At each block's input the constants of Theorem 4.1 are measured
(:func:`lambdaskip.theory.mixer_constants`) for the verdict. Outputs (see :func:`write_outputs`): a CSV and
a JSON with every number and the configuration, two PNG plots, a terminal table.

Mixers as built here: attention is bidirectional, one head, with W_O (the theorem's ``M·Y·W_V·W_O``);
Mamba-2 has d_state 16, head dim 32 (fewer heads for narrow models), and its inner RMSNorm is on unless
``norm`` is None; S4D has d_state 64, GELU and out_proj. ``norm=None`` removes every normalisation.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lambdaskip import theory
from lambdaskip.experiments import text as text_inputs
from lambdaskip.experiments.records import atomic_write, versions
from lambdaskip.metrics import mu, normalized_mu
from lambdaskip.modules import NORMS, build_stack
from lambdaskip.ops._backend import prefer_backend

ARCHS = ("attention", "mamba2", "s4d")
INPUTS = ("text", "gaussian")
METRICS = ("normalized_mu", "mu")
DEFAULT_LAMS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 10.0)

PRESETS = {
    # Figs. 1–2: λ sweeps on a Mamba-2 without gating (Fig. 1) and a transformer (Fig. 2), 64 layers.
    "lambda-sweep": {"archs": ["attention", "mamba2"], "depth": 64, "gating": [False],
                     "lams": [-10.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 10.0, 100.0]},
    # Fig. 3: Mamba-2 with gating on/off × norm on/off, without (λ = 0) and with (λ = 1) the skip.
    "gating": {"archs": ["mamba2"], "gating": [True, False], "norms": ["rmsnorm", None], "lams": [0.0, 1.0]},
}


class StudyError(ValueError):
    """A study configuration that cannot run; the CLI prints its message on one line."""


@dataclass
class StudyConfig:
    """Everything that determines a study's numbers (recorded in results.json).

    archs: from :data:`ARCHS`; depth: blocks; lams: the λ sweep; norms: λ-skip norms (None = no norm);
    gating: Mamba-2 gate settings to run; seeds: model and embedding seeds; excerpts: sequences per batch;
    input: "text" or "gaussian"; text: a file (None = bundled sample); hf_tokenizer: a local HF tokenizer;
    rate_a: Theorem 4.1's a; metric: the one plotted per layer; threads: CPU threads for torch during the
    run (1 by default: small ops gain nothing from more, and a busy machine loses much).
    """
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    depth: int = 32
    d_model: int = 64
    seqlen: int = 128
    lams: list[float] = field(default_factory=lambda: list(DEFAULT_LAMS))
    norms: list[str | None] = field(default_factory=lambda: ["layernorm"])
    gating: list[bool] = field(default_factory=lambda: [False])
    seeds: list[int] = field(default_factory=lambda: [0])
    excerpts: int = 8
    input: str = "text"
    text: str | None = None
    hf_tokenizer: str | None = None
    rate_a: float = 0.99
    metric: str = "normalized_mu"
    device: str = "cpu"
    threads: int = 1
    preset: str | None = None

    def validate(self) -> None:
        """Raise StudyError naming the first bad field."""
        unknown = [a for a in self.archs if a not in ARCHS]
        if not self.archs or unknown:
            raise StudyError(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHS)}" if unknown
                             else "no architecture given")
        if not self.lams:
            raise StudyError("the λ list is empty: give at least one value with --lams")
        if any(not math.isfinite(lam) for lam in self.lams):
            raise StudyError(f"every λ must be finite, got {self.lams}")
        for name in ("depth", "d_model", "excerpts", "threads"):
            if getattr(self, name) <= 0:
                raise StudyError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.seqlen < 2:
            raise StudyError(f"seqlen must be at least 2 (μ compares tokens), got {self.seqlen}")
        bad_norm = [n for n in self.norms if n not in NORMS]
        if not self.norms or bad_norm:
            raise StudyError(f"norm must be among layernorm, rmsnorm, l2, none; got {bad_norm or self.norms}")
        if not self.gating:
            raise StudyError("no gating setting given")
        if not self.seeds:
            raise StudyError("no seed given")
        if self.input not in INPUTS:
            raise StudyError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.input == "gaussian" and (self.text or self.hf_tokenizer):
            raise StudyError("--text and --hf-tokenizer apply to --input text only")
        if not 0 < self.rate_a < 1:
            raise StudyError(f"rate-a must lie in (0, 1), got {self.rate_a}")
        if self.metric not in METRICS:
            raise StudyError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and not torch.cuda.is_available()):
            raise StudyError(f"device must be cpu, or cuda where a GPU is present; got {self.device!r}")


@dataclass(frozen=True)
class Variant:
    """One panel of the study: an architecture with its Mamba-2 gating and its norm."""
    arch: str
    gating: bool | None
    norm: str | None

    @property
    def label(self) -> str:
        parts = [self.arch]
        if self.gating is not None:
            parts.append(f"gating {'on' if self.gating else 'off'}")
        parts.append(f"norm {self.norm or 'off'}")
        return ", ".join(parts)


def variants(config: StudyConfig) -> list[Variant]:
    """The study's panels, in order: archs × (gating for Mamba-2) × norms."""
    return [Variant(arch, gating if arch == "mamba2" else None, norm)
            for arch in config.archs
            for gating in (config.gating if arch == "mamba2" else [None])
            for norm in config.norms]


def mixer_kwargs(variant: Variant, d_model: int) -> dict:
    """Constructor arguments of the variant's mixer (see the module docstring)."""
    if variant.arch == "attention":
        return {"n_heads": 1, "causal": False}
    if variant.arch == "mamba2":
        d_inner = 2 * d_model
        return {"d_state": 16, "headdim": math.gcd(32, d_inner), "gating": bool(variant.gating),
                "inner_norm": variant.norm is not None}
    return {"d_state": 64}


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
    with torch.no_grad():
        for block in stack.blocks:
            constants = theory.mixer_constants(block.mixer, y)
            C_M.append(float(constants.C_M.max()))
            S.append(constants.S)
            forms.add(constants.form)
            y = block(y)
            norm_mu.append(normalized_mu(y))
            raw_mu.append(mu(y))
    return {"variant": variant.label, "arch": variant.arch, "gating": variant.gating, "norm": variant.norm,
            "lam": lam, "seed": seed,
            "normalized_mu": torch.stack(norm_mu).double().cpu().tolist(),
            "mu": torch.stack(raw_mu).double().cpu().tolist(),
            "C_M": C_M, "S": S, "form": "approximate" if "approximate" in forms else sorted(forms)[0]}


def verdict(config: StudyConfig, runs: list[dict], inputs_by_seed: dict[int, torch.Tensor]) -> list[dict]:
    """Theorem 4.1 for each (variant, λ): constants (sup over layers, seeds and the batch), |λ|_min(a),
    a_max(λ), Eq. 7, and whether μ(Ŷ_0)² ≥ b for the ℓ2-normalised inputs Ŷ_0 (then ``certified``)."""
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


def summarize(config: StudyConfig, runs: list[dict]) -> list[dict]:
    """Mean and std over seeds × sequences of both metrics at every depth, per (variant, λ)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["lam"]), []).append(run)
    rows = []
    for (label, lam), group in groups.items():
        row = {"variant": label, "lam": lam}
        for metric in METRICS:
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


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------

RESULT_FILES = ("results.json", "results.csv", "mu_per_layer.png", "mu_final_vs_lambda.png")


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuse (StudyError) when ``out`` already holds a finished run and not ``overwrite``."""
    if os.path.exists(os.path.join(out, "results.json")) and not overwrite:
        raise StudyError(f"{out} already holds a finished run (results.json); pass --overwrite or choose "
                         f"another --out")


def prepare_out_dir(out: str, overwrite: bool) -> None:
    """:func:`check_out_dir`, then create ``out``."""
    check_out_dir(out, overwrite)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise StudyError(f"cannot create output directory {out!r}: {err.strerror}") from err


def csv_bytes(results: dict) -> bytes:
    """One row per (variant, λ, seed, sequence, layer) with both metrics."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "arch", "gating", "norm", "lam", "seed", "sequence", "layer", "normalized_mu", "mu"])
    for run in results["runs"]:
        for layer, (norm_row, raw_row) in enumerate(zip(run["normalized_mu"], run["mu"])):
            for sequence, (nm, m) in enumerate(zip(norm_row, raw_row)):
                writer.writerow([run["variant"], run["arch"], run["gating"], run["norm"] or "none", run["lam"],
                                 run["seed"], sequence, layer, repr(nm), repr(m)])
    return buffer.getvalue().encode("utf-8")


def write_outputs(results: dict, out: str, overwrite: bool = False) -> list[str]:
    """Write results.csv, the PNG plots (when matplotlib is installed) and, last, results.json.

    Returns the paths written. Each file is written atomically; results.json marks a finished run.
    """
    from lambdaskip.experiments import plots

    prepare_out_dir(out, overwrite)
    written = []
    path = os.path.join(out, "results.csv")
    atomic_write(path, csv_bytes(results))
    written.append(path)
    if plots.available():
        for name, figure in (("mu_per_layer.png", plots.per_layer_png(results)),
                             ("mu_final_vs_lambda.png", plots.final_vs_lambda_png(results))):
            path = os.path.join(out, name)
            atomic_write(path, figure)
            written.append(path)
    path = os.path.join(out, "results.json")
    atomic_write(path, json.dumps(results, indent=1, allow_nan=True).encode("utf-8"))
    written.append(path)
    return written


def format_table(results: dict) -> str:
    """The terminal report: normalised μ at layers 0, K/2, K per (variant, λ), then Theorem 4.1's verdict."""
    config = results["config"]
    K = config["depth"]
    lines = [f"normalised μ (mean ± std over {results['input']['sequences']} sequences × {len(config['seeds'])} "
             f"seed(s); depth {K}, d_model {config['d_model']}, seqlen {config['seqlen']})",
             f"{'variant':<34} {'λ':>7} {'layer 0':>8} {f'layer {K // 2}':>9} {f'layer {K}':>16}"]
    for row in results["summary"]:
        mean, std = row["normalized_mu_mean"], row["normalized_mu_std"]
        lines.append(f"{row['variant']:<34} {row['lam']:>7g} {mean[0]:>8.3f} {mean[K // 2]:>9.3f} "
                     f"{mean[K]:>8.3f} ± {std[K]:<5.3f}")
    a = config["rate_a"]
    lines += ["", f"Theorem 4.1 at a = {a:g} (a^K = {a ** K:.3g}): C_M = sup ‖M‖_F, S = sup ‖C_V‖₂ over layers; "
              f"certified = Eq. 7 holds and μ(Ŷ0)² ≥ b",
              f"{'variant':<34} {'λ':>7} {'C_M':>8} {'S':>7} {'|λ|_min':>9} {'a_max(λ)':>9} {'Eq.7':>5} {'certified':>9}"]
    for row in results["theorem"]:
        lines.append(f"{row['variant']:<34} {row['lam']:>7g} {row['C_M']:>8.3g} {row['S']:>7.3g} "
                     f"{row['lambda_min']:>9.3g} {row['a_max']:>9.3g} {('yes' if row['eq7'] else 'no'):>5} "
                     f"{('yes' if row['certified'] else 'no'):>9}")
    if not all(row["theory_exact"] for row in results["theorem"]):
        lines.append("note: the theorem is exact only for norm l2 and mixers of its form (attention, pure LTI); "
                     "other rows apply its constants as an approximation (see docs/collapse.md)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def _norm_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "off") else value.lower()


def _gating_arg(value: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"gating takes on or off, got {value!r}")
    return value.lower() == "on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdaskip collapse``; unset options take the preset's or the default value."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help="lambda-sweep (Figs. 1-2) or gating (Fig. 3)")
    parser.add_argument("--archs", nargs="*", metavar="ARCH", help=f"among {', '.join(ARCHS)} (default: all)")
    parser.add_argument("--depth", type=int, help="layers (default 32; 64 with --preset lambda-sweep)")
    parser.add_argument("--d-model", type=int, help="token width (default 64)")
    parser.add_argument("--seqlen", type=int, help="tokens per sequence (default 128)")
    parser.add_argument("--lams", nargs="*", type=float, metavar="LAM",
                        help=f"λ values (default {' '.join(f'{v:g}' for v in DEFAULT_LAMS)})")
    parser.add_argument("--norm", nargs="*", type=_norm_arg, dest="norms", metavar="NORM",
                        help="λ-skip norm(s): layernorm (default), rmsnorm, l2, none")
    parser.add_argument("--gating", nargs="*", type=_gating_arg, metavar="on|off",
                        help="Mamba-2 gate setting(s) (default off, as in the paper's Fig. 1)")
    parser.add_argument("--seeds", nargs="*", type=int, metavar="SEED", help="model/embedding seeds (default 0)")
    parser.add_argument("--excerpts", type=int, help="sequences per batch (default 8; the bundled sample has 33)")
    parser.add_argument("--input", choices=INPUTS, help="text (default) or gaussian tokens")
    parser.add_argument("--text", metavar="FILE", help="your own UTF-8 text (passages split at blank lines)")
    parser.add_argument("--hf-tokenizer", metavar="NAME", help="a locally cached Hugging Face tokenizer")
    parser.add_argument("--hf-model", metavar="PATH_OR_NAME",
                        help="study a local transformers model (Mamba-2, GPT-2, BERT, ALBERT) retrofitted with "
                             "λ-skips instead of random stacks; never downloads")
    parser.add_argument("--rate-a", type=float, help="Theorem 4.1's rate a in (0, 1) (default 0.99)")
    parser.add_argument("--metric", choices=METRICS, help="metric of the per-layer plot (default normalized_mu)")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads during the run (default 1)")
    parser.add_argument("--out", default="collapse_out", help="output directory (default ./collapse_out)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """Defaults, overridden by the preset, overridden by the options given."""
    values = dict(PRESETS[args.preset]) if args.preset else {}
    for name in ("archs", "depth", "d_model", "seqlen", "lams", "norms", "gating", "seeds", "excerpts", "input",
                 "text", "hf_tokenizer", "rate_a", "metric", "device", "threads"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return StudyConfig(preset=args.preset, **values)


def run_hf_study(config: StudyConfig, model_path: str, out: str, overwrite: bool) -> dict:
    """The depth study on a local ``transformers`` model: retrofit post-norm λ-skips for each λ (and, for
    Mamba-2, gating on and off), record μ per layer, restore. Writes results.csv and results.json."""
    from lambdaskip.hf.collapse import hf_collapse_inputs, hf_collapse_study

    check_out_dir(out, overwrite)
    texts = text_inputs.passages(text_inputs.read_text(config.text) if config.text else text_inputs.bundled_text())
    try:
        model, ids, source = hf_collapse_inputs(model_path, texts, seqlen=config.seqlen, batch=config.excerpts,
                                                seed=config.seeds[0], device=config.device)
    except (FileNotFoundError, ImportError) as err:
        raise StudyError(str(err).split(" Details:")[0]) from err
    gatings = (True, False) if model.config.model_type == "mamba2" else (True,)
    rows = hf_collapse_study(model, ids, lams=config.lams, gatings=gatings, placement="post",
                             metrics=("mu", "normalized_mu"))
    results = {"config": {**asdict(config), "hf_model": model_path, "placement": "post"},
               "model_type": model.config.model_type, "input": source, "versions": versions(), "rows": rows}
    prepare_out_dir(out, overwrite)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["gating", "lam", "layer", "metric", "batch", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out, "results.csv"), buffer.getvalue().encode("utf-8"))
    atomic_write(os.path.join(out, "results.json"), json.dumps(results, indent=1).encode("utf-8"))
    return results


def format_hf_table(results: dict) -> str:
    """Mean normalised μ at the first, middle and last layer per (gating, λ)."""
    values: dict[tuple, dict[int, list[float]]] = {}
    for row in results["rows"]:
        if row["metric"] == "normalized_mu":
            values.setdefault((row["gating"], row["lam"]), {}).setdefault(row["layer"], []).append(row["value"])
    lines = [f"{results['model_type']} ({results['input']}), normalised μ at layers 0 / K/2 / K:"]
    for (gating, lam), layers in sorted(values.items()):
        last = max(layers)
        cells = " / ".join(f"{sum(layers[k]) / len(layers[k]):.3f}" for k in (0, last // 2, last))
        lines.append(f"  gating={'on' if gating else 'off'} λ={lam:g}: {cells}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the study from parsed arguments; returns the exit status (2 with a one-line error)."""
    if args.hf_model:
        try:
            config = config_from_args(args)
            config.validate()
            results = run_hf_study(config, args.hf_model, args.out, args.overwrite)
        except (StudyError, text_inputs.TextInputError) as err:
            print(f"lambdaskip collapse: error: {err}", file=sys.stderr)
            return 2
        print(format_hf_table(results))
        print(f"wrote {args.out}/results.csv, {args.out}/results.json")
        return 0
    try:
        config = config_from_args(args)
        config.validate()
        check_out_dir(args.out, args.overwrite)  # refuse before the run, create only after it
        results = run_study(config, progress=not args.no_progress)
        written = write_outputs(results, args.out, args.overwrite)
    except (StudyError, text_inputs.TextInputError) as err:
        print(f"lambdaskip collapse: error: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    from lambdaskip.experiments import plots
    if not plots.available():
        print("matplotlib is not installed: PNG plots skipped (pip install 'lambdaskip[plot]')")
    print("wrote " + ", ".join(written))
    return 0
