"""The collapse study on a local ``transformers`` model (``lambdaskip collapse --hf-model``): retrofit
post-norm λ-skips for each λ (and, for Mamba-2, gating on and off), record μ per layer, restore.
Rows of models without a gate (GPT-2, BERT, ALBERT) carry ``gating`` None."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import warnings
from dataclasses import asdict

from lambdaskip.common import versions
from lambdaskip.hf.collapse import hf_collapse_inputs, hf_collapse_study
from lambdaskip.studies.collapse import plots
from lambdaskip.studies.collapse import text as text_inputs
from lambdaskip.studies.collapse.config import StudyConfig, StudyError
from lambdaskip.studies.collapse.outputs import check_out_dir, write_folder


def _one_line(err: Exception) -> str:
    return str(err).split(" Details:")[0].strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool):
    """transformers' and huggingface_hub's own progress bars ("Loading weights") off unless ``enabled``, for the
    block; their previous state is restored after it."""
    try:
        import huggingface_hub.utils as hub
        from transformers.utils import logging as hf_logging
    except ImportError:  # nothing to silence; loading the model reports the missing package
        enabled = True
    if enabled:
        yield
        return
    was_on, hub_was_on = hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # transformers' bars and the hub's
    try:
        yield
    finally:
        if was_on:
            with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=1 keeps the hub's off, as before
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()
            if not hub_was_on:
                hub.disable_progress_bars()


def run_hf_study(config: StudyConfig, model_path: str, out: str, overwrite: bool, progress: bool = True) -> dict:
    """Study the model at ``model_path`` (a directory or a locally cached name; never downloads) with
    ``config``'s λ values, seqlen, excerpts, seed and device. Writes results.csv, results.json and (with
    matplotlib) mu_per_layer.png into ``out`` (replaced whole) and returns the results dict. A path that is
    not a supported model raises StudyError. ``progress=False`` also silences transformers' loading bars."""
    from tqdm.auto import tqdm

    check_out_dir(out, overwrite)
    texts = text_inputs.passages(text_inputs.read_text(config.text) if config.text else text_inputs.bundled_text())
    try:
        with _hf_progress_bars(progress):
            model, ids, source = hf_collapse_inputs(model_path, texts, seqlen=config.seqlen, batch=config.excerpts,
                                                    seed=config.seeds[0], device=config.device)
    except (OSError, ImportError, ValueError, KeyError) as err:
        raise StudyError(f"--hf-model {model_path}: {_one_line(err)}") from None
    gated = model.config.model_type == "mamba2"
    jobs = [(gating, lam) for gating in ((True, False) if gated else (True,)) for lam in config.lams]
    rows = []
    with tqdm(jobs, desc="hf collapse study", unit="λ", disable=not progress, file=sys.stderr) as bar:
        for gating, lam in bar:
            try:
                found = hf_collapse_study(model, ids, lams=(lam,), gatings=(gating,), placement="post",
                                          metrics=("mu", "normalized_mu"))
            except (ValueError, TypeError) as err:
                raise StudyError(f"--hf-model {model_path}: {_one_line(err)}") from None
            rows += [{**row, "gating": row["gating"] if gated else None} for row in found]
    results = {"config": {**asdict(config), "hf_model": model_path, "placement": "post"},
               "model_type": model.config.model_type, "input": source, "versions": versions(), "rows": rows}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["gating", "lam", "layer", "metric", "batch", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = {"results.csv": buffer.getvalue().encode("utf-8")}
    if plots.available():
        files["mu_per_layer.png"] = plots.hf_per_layer_png(results)
    files["results.json"] = json.dumps(results, indent=1).encode("utf-8")
    write_folder(out, files)
    return results


def format_hf_table(results: dict) -> str:
    """Mean normalised μ at the first, middle and last layer per (gating, λ)."""
    values: dict[tuple, dict[int, list[float]]] = {}
    for row in results["rows"]:
        if row["metric"] == "normalized_mu":
            values.setdefault((row["gating"], row["lam"]), {}).setdefault(row["layer"], []).append(row["value"])
    lines = [f"{results['model_type']} ({results['input']}), normalised μ at layers 0 / K/2 / K:"]
    for (gating, lam), layers in sorted(values.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        last = max(layers)
        cells = " / ".join(f"{sum(layers[k]) / len(layers[k]):.3f}" for k in (0, last // 2, last))
        gate = "" if gating is None else f"gating={'on' if gating else 'off'} "
        lines.append(f"  {gate}λ={lam:g}: {cells}")
    return "\n".join(lines)
