"""What a collapse study writes: results.csv, depth_of_collapse.csv, three PNG plots and, last, results.json; and
the terminal table.

The files are written into a temporary sibling folder that then replaces ``out`` in one rename
(:func:`lambdaskip.common.staged_folder`): ``out`` holds a whole run, the old one or the new one, never a
mix. results.json marks a finished run, which is never replaced without ``overwrite``; a folder holding
files the study does not write is never replaced.
"""
from __future__ import annotations

import csv
import io
import json
import os

from lambdaskip.common import atomic_write, staged_folder
from lambdaskip.studies.collapse import plots
from lambdaskip.studies.collapse.config import StudyError

RESULT_FILES = ("results.json", "results.csv", "depth_of_collapse.csv", "mu_per_layer.png", "mu_final_vs_lambda.png",
                "depth_of_collapse.png")


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuse (StudyError) when ``out`` already holds a finished run and not ``overwrite``, or holds files
    a study does not write (they would be lost when the new run replaces the folder)."""
    if os.path.exists(os.path.join(out, "results.json")) and not overwrite:
        raise StudyError(f"{out} already holds a finished run (results.json); pass --overwrite or choose "
                         f"another --out")
    if os.path.isdir(out):
        foreign = sorted(set(os.listdir(out)) - set(RESULT_FILES))
        if foreign:
            raise StudyError(f"--out {out} holds files a collapse study does not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose another --out")


def write_folder(out: str, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` (name -> bytes, results.json last) into a new folder that replaces ``out`` whole;
    returns the paths written."""
    with staged_folder(out) as folder:
        for name, data in files.items():
            atomic_write(os.path.join(folder, name), data)
    return [os.path.join(out, name) for name in files]


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


def depth_csv_bytes(results: dict) -> bytes:
    """One row per (variant, λ): the depth of collapse (empty when it never happens within the depth)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "lam", "depth", "collapse_threshold", "collapse_depth", "half_depth",
                     "final_normalized_mu"])
    for row in results["summary"]:
        writer.writerow([row["variant"], row["lam"], results["config"]["depth"], row["collapse_threshold"],
                         "" if row["collapse_depth"] is None else row["collapse_depth"],
                         "" if row["half_depth"] is None else row["half_depth"], repr(row["normalized_mu_mean"][-1])])
    return buffer.getvalue().encode("utf-8")


def write_outputs(results: dict, out: str, overwrite: bool = False) -> list[str]:
    """Write results.csv, depth_of_collapse.csv, the PNG plots (when matplotlib is installed) and, last,
    results.json into a new folder that replaces ``out`` whole (:func:`write_folder`). Returns the paths written."""
    check_out_dir(out, overwrite)
    files = {"results.csv": csv_bytes(results), "depth_of_collapse.csv": depth_csv_bytes(results)}
    if plots.available():
        files["mu_per_layer.png"] = plots.per_layer_png(results)
        files["mu_final_vs_lambda.png"] = plots.final_vs_lambda_png(results)
        files["depth_of_collapse.png"] = plots.depth_of_collapse_png(results)
    files["results.json"] = json.dumps(results, indent=1, allow_nan=True).encode("utf-8")
    return write_folder(out, files)


def _depth(layer: int | None) -> str:
    return "never" if layer is None else str(layer)


def format_table(results: dict) -> str:
    """The terminal report: normalised μ at layers 0, K/2, K and the depth of collapse per (variant, λ), then
    Theorem 4.1's verdict."""
    config = results["config"]
    K = config["depth"]
    threshold = config["collapse_threshold"]
    lines = [f"normalised μ (mean ± std over {results['input']['sequences']} sequences × {len(config['seeds'])} "
             f"seed(s); depth {K}, d_model {config['d_model']}, seqlen {config['seqlen']})",
             f"depth of collapse: the first layer where the mean falls below {threshold:g} (collapsed@) and where it "
             f"has halved from layer 0 (halved@); 'never' within the {K} layers",
             f"{'variant':<34} {'λ':>7} {'layer 0':>8} {f'layer {K // 2}':>9} {f'layer {K}':>16} {'collapsed@':>10} "
             f"{'halved@':>8}"]
    for row in results["summary"]:
        mean, std = row["normalized_mu_mean"], row["normalized_mu_std"]
        lines.append(f"{row['variant']:<34} {row['lam']:>7g} {mean[0]:>8.3f} {mean[K // 2]:>9.3f} "
                     f"{mean[K]:>8.3f} ± {std[K]:<5.3f} {_depth(row['collapse_depth']):>10} "
                     f"{_depth(row['half_depth']):>8}")
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
