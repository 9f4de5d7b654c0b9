"""`lambdaskip sweep`: the paper's protocol by default (lr grid per setting, best reported, 3 seeds), its table."""
import pytest

import lambdaskip.training
from lambdaskip.cli import main
from lambdaskip.training.sweep import PAPER_LRS, SweepConfig, epochs_to_learn, summary_table

TINY = ["mqar", "--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "64", "--num-test", "16",
        "--d-model", "16", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet"]


def _row(lr, seed, acc, learned_at, lam=1.0):
    return {"arch": "attention", "lam": lam, "learnable": False, "lr": lr, "seed": seed, "eval_acc": acc,
            "best_eval_acc": acc, "test_acc": acc, "epochs_to_learn": learned_at, "lam0": lam, "mu2": 0.5}


def test_defaults_are_the_papers_lr_grid_and_three_seeds():
    sweep = SweepConfig(out="x")
    assert sweep.lrs == PAPER_LRS and sweep.seeds == [0, 1, 2]
    assert [round(lr, 6) for lr in PAPER_LRS] == [1e-4, 4.64e-4, 2.15e-3, 1e-2]


@pytest.mark.parametrize("extra, lrs, seeds", [([], PAPER_LRS, [0, 1, 2]), (["--lr", "3e-3"], [3e-3], [0, 1, 2]),
                                               (["--lrs", "1e-3", "2e-3", "--seeds", "4"], [1e-3, 2e-3], [4])])
def test_cli_passes_the_protocol_to_the_library(monkeypatch, tmp_path, extra, lrs, seeds):
    seen = {}
    monkeypatch.setattr(lambdaskip.training, "run_sweep", lambda sweep, base: seen.update(sweep=sweep, base=base))
    assert main(["sweep", *TINY, "--out", str(tmp_path), *extra]) == 0
    assert seen["sweep"].lrs == lrs and seen["sweep"].seeds == seeds


def test_epochs_to_learn_is_the_first_epoch_at_half_accuracy():
    history = [{"epoch": 1, "eval_acc": 0.9, "test_acc": 0.2}, {"epoch": 2, "eval_acc": 0.1, "test_acc": 0.5}]
    assert epochs_to_learn(history) == 2
    assert epochs_to_learn([{"epoch": 1, "eval_acc": 0.6}]) == 1
    assert epochs_to_learn([{"epoch": 1, "eval_acc": 0.4}]) == ""


def test_table_reports_the_best_lr_with_mean_std_and_time_to_learn():
    rows = [_row(1e-3, 0, 0.2, ""), _row(1e-3, 1, 0.3, ""), _row(1e-3, 2, 0.6, 4),
            _row(1e-2, 0, 0.9, 2), _row(1e-2, 1, 1.0, 3), _row(1e-2, 2, 0.95, 4)]
    table = summary_table(rows, "test data")
    line = next(line for line in table.splitlines() if line.startswith("| attention"))
    assert line.startswith("| attention | +1 | 0.01 | 3 | 95.0 ± 5.0 |") and "| 3.0 ± 1.0 (3/3) |" in line
    assert "of 0.001, 0.01" in table
    slow = summary_table(rows[:3], "test data")
    assert "| 4.0 (1/3) |" in slow and "| 36.7 ± 20.8 |" in slow
    assert "| never (0/1) |" in summary_table(rows[:1], "test data")


def test_sweep_over_lrs_and_seeds_reports_one_row_per_setting(tmp_path):
    pytest.importorskip("matplotlib")
    argv = ["sweep", *TINY, "--lams", "1", "--learnable-inits", "--lrs", "1e-3", "1e-2", "--seeds", "0", "1",
            "--out", str(tmp_path / "sweep")]
    assert main(argv) == 0
    out = tmp_path / "sweep"
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2 * 2
    assert "epochs_to_learn" in (out / "results.csv").read_text().splitlines()[0]
    table = (out / "results.md").read_text()
    assert "epochs to 50 %" in table and "of 0.001, 0.01" in table
    assert len([line for line in table.splitlines() if line.startswith("| attention | +1 |")]) == 1
