"""The measured tables in README.md, bench/results/*/README.md, docs/collapse.md and
docs/results/training/README.md are generated from committed JSON/CSV: each committed table must equal
what its generator writes, so a number edited by hand fails; the README rows compare an implementation of
ours with others of the same group; the training page's commands describe what their sweeps recorded."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("bench/report.py")
collapse_tables = _load("docs/collapse_tables.py")
deep_training = _load("docs/deep_training.py")
training_tables = _load("docs/training_tables.py")


def test_committed_benchmark_tables_are_generated():
    diffs = report.check()
    assert not diffs, "regenerate with `python bench/report.py --readme` (and --out per folder):\n" + "".join(diffs)


def test_committed_collapse_tables_are_generated():
    diffs = collapse_tables.check()
    assert not diffs, "regenerate with `python docs/collapse_tables.py`:\n" + "".join(diffs)


def test_committed_deep_training_tables_are_generated():
    diffs = deep_training.check()
    assert not diffs, "regenerate with `python docs/deep_training.py`:\n" + "".join(diffs)


def test_committed_training_tables_are_generated():
    diffs = training_tables.check()
    assert not diffs, "regenerate with `python docs/training_tables.py`:\n" + "".join(diffs)


def test_a_documented_sweep_command_that_was_not_run_is_caught(monkeypatch):
    name, command = next(iter(training_tables.SWEEPS.items()))
    monkeypatch.setitem(training_tables.SWEEPS, name, command.replace("--epochs ", "--epochs 1"))
    assert any("epochs" in line for line in training_tables.command_mismatches())


def _first_number_row(text: str, begin: str) -> str:
    table = text[text.index(begin):]
    return next(line for line in table.splitlines() if line.startswith("| ") and any(c.isdigit() for c in line)
                and "---" not in line and not line.startswith("| what") and not line.startswith("| variant"))


@pytest.mark.parametrize("which", ["readme", "collapse", "deep", "training"])
def test_a_number_edited_by_hand_is_caught(tmp_path, which):
    if which == "readme":
        readme = tmp_path / "README.md"
        shutil.copy(report.README, readme)
        row = _first_number_row(readme.read_text(), report.BEGIN)
        cells = row.split(" | ")
        cells[2] = "9" + cells[2]  # the time of ours
        readme.write_text(readme.read_text().replace(row, " | ".join(cells)))
        assert report.check(report.RESULTS, readme)
    elif which == "training":
        doc = tmp_path / "README.md"
        shutil.copy(training_tables.DOC, doc)
        text = doc.read_text()
        block = text[text.index(training_tables.begin("mqar_attention_protocol")):]
        row = next(line for line in block.splitlines() if line.startswith("| fixed +1 |"))
        cells = row.split(" | ")
        cells[2] = "9" + cells[2]  # the final accuracy of λ = 1 at its best learning rate
        doc.write_text(text.replace(row, " | ".join(cells)))
        assert training_tables.check(doc)
    else:
        doc = tmp_path / "collapse.md"
        shutil.copy(collapse_tables.DOC, doc)
        row = _first_number_row(doc.read_text(), collapse_tables.begin(which if which == "deep" else "default"))
        doc.write_text(doc.read_text().replace(row, row.replace("0.", "1.", 1)))
        assert collapse_tables.check(collapse_tables.RESULTS, doc)


def test_mu_overhead_readme_is_rendered_from_its_json():
    mu_overhead = _load("bench/mu_overhead.py")
    folder = ROOT / "bench" / "results" / "cpu-mu-overhead"
    assert (folder / "README.md").read_text() == mu_overhead.render(json.loads((folder / "result.json").read_text())), \
        "regenerate with `python bench/mu_overhead.py --render bench/results/cpu-mu-overhead`"


def test_a_deep_training_number_edited_by_hand_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(deep_training.DOC, readme)
    row = next(line for line in readme.read_text().splitlines() if line.startswith("| learnable | "))
    readme.write_text(readme.read_text().replace(row, row.replace("0.", "1.", 1)))
    diffs = deep_training.check(deep_training.RESULTS, readme)
    assert len(diffs) == 1 and "README.md (committed)" in diffs[0]


def test_readme_rows_compare_ours_with_others_in_the_same_group():
    """Every README row names an implementation of ours, and its comparisons come from its own group."""
    for folder, group, impl, _ in report.README_ROWS:
        data = json.loads((report.RESULTS / folder / "benchmark.json").read_text())
        rows = [r for r in report.summarize(data) if r["group"] == group]
        ours = next(r for r in rows if r["impl"] == impl)
        assert ours["ours"] and impl in report.OURS
        if ours["best_other"]:
            assert ours["best_other"][1] in {r["impl"] for r in rows if not r["ours"]}


def test_report_classifies_extension_as_ours_and_the_fft_reference_as_other():
    def bench(impl, median):
        return {"name": f"test_conv[{impl}]", "group": "s4d_conv L=1024", "params": {"impl": impl},
                "stats": {"median": median}, "extra_info": {}}

    rows = report.summarize({"benchmarks": [bench("direct-extension", 0.1), bench("fft", 0.0125),
                                            bench("direct-reference", 0.5)]})
    extension = next(r for r in rows if r["impl"] == "direct-extension")
    assert extension["best_other"] == (0.0125, "fft") and extension["speedup_vs_best_other"] == pytest.approx(0.125)
    assert next(r for r in rows if r["impl"] == "fft")["speedup_vs_best_other"] is None


def test_report_refuses_to_replace_recorded_results_and_dirty_json(tmp_path):
    data = {"benchmarks": [], "commit_info": {"dirty": False}, "machine_info": {}}
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(data))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "benchmark.json").write_text("{}")
    with pytest.raises(SystemExit, match="--force"):
        report.main([str(source), "--out", str(tmp_path / "out")])
    source.write_text(json.dumps({**data, "commit_info": {"dirty": True}}))
    with pytest.raises(SystemExit, match="dirty"):
        report.main([str(source), "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
