"""The collapse study on a local ``transformers`` model (``lambdaskip collapse --hf-model``): retrofit
post-norm λ-skips for each λ (and, for Mamba-2, gating on and off), record μ per layer, restore."""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict

from lambdaskip.common import atomic_write, versions
from lambdaskip.hf.collapse import hf_collapse_inputs, hf_collapse_study
from lambdaskip.studies.collapse import text as text_inputs
from lambdaskip.studies.collapse.config import StudyConfig, StudyError
from lambdaskip.studies.collapse.outputs import check_out_dir, prepare_out_dir


def run_hf_study(config: StudyConfig, model_path: str, out: str, overwrite: bool) -> dict:
    """Study the model at ``model_path`` (a directory or a locally cached name; never downloads) with
    ``config``'s λ values, seqlen, excerpts, seed and device. Writes results.csv and results.json to ``out``
    and returns the results dict."""
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
