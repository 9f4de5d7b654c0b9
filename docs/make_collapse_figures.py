"""Draw docs/img/collapse_*.png from the committed results.json of each documented study, with the package's
own plotting functions (:mod:`lambdaskip.studies.collapse.plots`, the same figures ``lambdaskip collapse``
writes), so the figures follow the current plot style without re-running a study.

    python docs/make_collapse_figures.py

Needs matplotlib (the ``plot`` extra). Only results.json is read (see docs/collapse_tables.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from lambdaskip.common import atomic_write
from lambdaskip.studies.collapse import plots

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "collapse"
IMG = ROOT / "docs" / "img"
# figure file → (study folder under RESULTS, plotting function)
FIGURES = {
    "collapse_default_per_layer.png": ("default", plots.per_layer_png),
    "collapse_default_final.png": ("default", plots.final_vs_lambda_png),
    "collapse_lambda_sweep_per_layer.png": ("lambda-sweep", plots.per_layer_png),
    "collapse_lambda_sweep_final.png": ("lambda-sweep", plots.final_vs_lambda_png),
    "collapse_gating_per_layer.png": ("gating", plots.per_layer_png),
}


def main() -> None:
    plots.load()
    for name, (study, draw) in FIGURES.items():
        results = json.loads((RESULTS / study / "results.json").read_text(encoding="utf-8"))
        atomic_write(IMG / name, draw(results))
        print(f"wrote docs/img/{name} from docs/results/collapse/{study}/results.json")


if __name__ == "__main__":
    main()
