"""The collapse study: its invariants on small settings, its outputs, its inputs, its errors."""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from signal_helpers import sigint_as_in_a_terminal

from lambdaskip.cli import collapse as collapse_cli
from lambdaskip.cli import main
from lambdaskip.studies import collapse
from lambdaskip.studies.collapse import plots
from lambdaskip.studies.collapse import text as text_inputs

SMALL = ["--depth", "3", "--d-model", "16", "--seqlen", "12", "--excerpts", "2", "--no-progress"]


def _final_over_first(results, label, lam):
    row = next(r for r in results["summary"] if r["variant"] == label and r["lam"] == lam)
    return row["normalized_mu_mean"][-1] / row["normalized_mu_mean"][0]


def test_without_skip_attention_and_mamba2_collapse_and_large_lambda_prevents_it():
    config = collapse.StudyConfig(archs=["attention", "mamba2"], depth=32, d_model=32, seqlen=48, excerpts=3,
                                  lams=[0.0, 10.0])
    results = collapse.run_study(config, progress=False)
    for label in ("attention, norm layernorm", "mamba2, gating off, norm layernorm"):
        assert _final_over_first(results, label, 0.0) < 0.3, label
        assert _final_over_first(results, label, 10.0) > 0.9, label
    assert {row["variant"] for row in results["theorem"]} == {"attention, norm layernorm",
                                                              "mamba2, gating off, norm layernorm"}


def test_cli_writes_every_output_and_a_rerun_reproduces_the_numbers(tmp_path, capsys):
    argv = ["collapse", "--archs", "attention", "s4d", "mamba2", "--lams", "-1", "0", "2", *SMALL]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "Theorem 4.1" in printed and "certified" in printed and "mamba2, gating off" in printed
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == sorted(collapse.RESULT_FILES if plots.available() else
                           ["depth_of_collapse.csv", "results.csv", "results.json"])
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["config"]["lams"] == [-1.0, 0.0, 2.0] and results["versions"]["torch"]
    assert results["input"]["kind"] == "text" and results["input"]["sequences"] == 2
    with open(tmp_path / "a" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 * 1 * 2 * 4  # variants × λ × seeds × sequences × (depth + 1)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["runs"] == results["runs"] and again["theorem"] == results["theorem"]
    if plots.available():
        png = (tmp_path / "a" / "mu_per_layer.png").read_bytes()
        assert png.startswith(b"\x89PNG")


def test_one_pass_sweep_equals_one_stack_per_lambda():
    """The sweep's λ values as batch slices of one stack give the numbers of one stack per λ, to float32
    rounding: a larger batch may block a matmul's sums differently (on the default study the two agree bit for
    bit; at these tiny sizes Mamba-2's μ differs in the 7th digit). 1e-5 is ~100 float32 ulps, far below the
    difference between neighbouring λ values."""
    config = collapse.StudyConfig(depth=4, d_model=16, seqlen=12, excerpts=2, lams=[-1.0, 0.0, 0.5, 3.0])
    inputs, _ = collapse.make_inputs(config, seed=0)
    for variant in collapse.variants(config):
        swept = collapse.run_sweep(config, variant, 0, inputs)
        assert [run["lam"] for run in swept] == config.lams
        for run in swept:
            alone = collapse.run_one(config, variant, run["lam"], 0, inputs)
            for key in ("normalized_mu", "mu", "C_M"):
                got, want = torch.tensor(run[key]), torch.tensor(alone[key])
                torch.testing.assert_close(got, want, rtol=1e-5, atol=0, msg=f"{variant.label}, λ={run['lam']}, {key}")
            assert run["S"] == alone["S"] and run["form"] == alone["form"]


def test_depth_of_collapse_is_the_first_layer_below_the_threshold():
    assert collapse.first_layer_below([1.0, 0.5, 0.009, 0.001], 1e-2) == 2
    assert collapse.first_layer_below([0.001, 0.5, 0.2], 1e-2) is None   # layer 0 (the input) never counts
    config = collapse.StudyConfig(collapse_threshold=0.3)
    runs = [{"variant": "v", "lam": lam, "normalized_mu": [[0.9, 0.7], [0.4, 0.3], [value, value]], "mu": [[1.0]] * 3}
            for lam, value in ((0.0, 0.1), (2.0, 0.6))]
    rows = collapse.summarize(config, runs)
    assert [(r["collapse_depth"], r["half_depth"]) for r in rows] == [(2, 1), (None, 1)]


def test_trace_blocks_keeps_no_activations_of_earlier_layers():
    """Memory flat in depth: the study's layer loop lets each layer's output go once it has been measured."""
    import weakref

    from lambdaskip import theory
    from lambdaskip.modules import build_stack
    stack = build_stack("attention", 6, 16, seed=0)
    traces = theory.trace_blocks(stack.blocks, torch.randn(2, 9, 16))
    first = weakref.ref(next(traces).output)
    next(traces)
    assert first() is None


def test_deep_study_writes_the_depth_of_collapse(tmp_path, capsys):
    argv = ["collapse", "--preset", "deep", "--depth", "40", "--lams", "0", "1", "10", "--d-model", "16",
            "--seqlen", "12", "--excerpts", "2", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "collapsed@" in printed and "never" in printed
    with open(tmp_path / "depth_of_collapse.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], float(r["lam"])) for r in rows][:3] == [("attention, norm layernorm", lam)
                                                                   for lam in (0.0, 1.0, 10.0)]
    attention = {float(r["lam"]): r for r in rows if r["variant"].startswith("attention")}
    assert 1 <= int(attention[0.0]["collapse_depth"]) <= 40     # no skip: attention collapses within the depth
    assert attention[10.0]["collapse_depth"] == ""              # a large λ holds μ up: "never"
    if plots.available():
        assert (tmp_path / "depth_of_collapse.png").read_bytes().startswith(b"\x89PNG")


def test_a_finished_run_is_not_overwritten_silently(tmp_path, capsys):
    argv = ["collapse", "--archs", "attention", "--lams", "1", *SMALL, "--out", str(tmp_path)]
    assert main(argv) == 0
    before = (tmp_path / "results.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and (tmp_path / "results.json").read_bytes() == before
    assert main([*argv, "--overwrite", "--seeds", "1"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["config"]["seeds"] == [1]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_without_matplotlib_the_pngs_are_skipped_with_a_notice(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    assert main(["collapse", "--archs", "s4d", "--lams", "0", *SMALL, "--out", str(tmp_path)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["depth_of_collapse.csv", "results.csv", "results.json"]


def test_gaussian_input_user_text_and_norm_variants(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text(" ".join(f"word{i % 7}, and more." for i in range(40)))
    assert main(["collapse", "--archs", "attention", "--lams", "0", "--text", str(text), "--norm", "l2", "none",
                 *SMALL, "--out", str(tmp_path / "t")]) == 0
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert results["input"]["source"] == str(text)
    assert [r["variant"] for r in results["summary"]] == ["attention, norm l2", "attention, norm off"]
    assert main(["collapse", "--archs", "mamba2", "--gating", "on", "off", "--lams", "1", "--input", "gaussian",
                 *SMALL, "--out", str(tmp_path / "g")]) == 0
    results = json.loads((tmp_path / "g" / "results.json").read_text())
    assert results["input"]["kind"] == "gaussian"
    assert [r["variant"] for r in results["summary"]] == ["mamba2, gating on, norm layernorm",
                                                         "mamba2, gating off, norm layernorm"]


@pytest.mark.parametrize("preset, expected", [
    ("lambda-sweep", {"archs": ["attention", "mamba2"], "depth": 64, "gating": [False]}),
    ("gating", {"archs": ["mamba2"], "gating": [True, False], "norms": ["rmsnorm", None], "lams": [0.0, 1.0]}),
    ("deep", {"archs": ["attention", "mamba2", "s4d"], "depth": 1024, "gating": [False]}),
])
def test_presets_fill_unset_options_only(preset, expected):
    parser = argparse.ArgumentParser()
    collapse_cli.add_arguments(parser)
    config = collapse_cli.config_from_args(parser.parse_args(["--preset", preset, "--d-model", "16"]))
    for name, value in expected.items():
        assert getattr(config, name) == value
    assert config.d_model == 16 and config.preset == preset
    assert len(collapse.variants(config)) == {"gating": 4, "deep": 3}.get(preset, 2)
    config = collapse_cli.config_from_args(parser.parse_args(["--preset", preset, "--depth", "5"]))
    assert config.depth == 5


@pytest.mark.parametrize("args, message", [
    (["--archs", "rnn"], "unknown architecture 'rnn'"),
    (["--lams"], "λ list is empty"),
    (["--depth", "0"], "depth must be a positive integer"),
    (["--depth", "-3"], "depth must be a positive integer"),
    (["--text", "/nonexistent/dir/file.txt"], "cannot read text file"),
    (["--seqlen", "500"], "shorter than the requested 500 tokens"),
    (["--rate-a", "1"], "rate-a must lie in (0, 1)"),
    (["--collapse-threshold", "0"], "collapse-threshold must lie in (0, 1)"),
    (["--norm", "batchnorm"], "norm must be among"),
    (["--seqlen", "128", "--excerpts", "100"], "--excerpts 100 asks for more sequences than the text has: it gives 35 "
                                               "windows of 128 tokens"),
])
def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, capsys, args, message):
    argv = ["collapse", "--archs", "attention", "--lams", "1", *SMALL, "--out", str(tmp_path / "o"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unreadable_and_too_short_user_text(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n\nAnd a second passage.")
    assert main(["collapse", "--text", str(short), *SMALL, "--out", str(tmp_path / "o")]) == 2
    assert "longest passage" in capsys.readouterr().err
    assert main(["collapse", "--text", str(tmp_path), *SMALL, "--out", str(tmp_path / "o")]) == 2
    assert "cannot read text file" in capsys.readouterr().err


def test_errors_from_the_console_have_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lambdaskip", "collapse", "--archs", "mlp", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("lambdaskip collapse: error: unknown architecture 'mlp'; choose from "
                                   "attention, mamba2, s4d")


def test_hf_tokenizer_is_offline_and_optional():
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(text_inputs.TextInputError, match="transformers"):
            text_inputs.hf_tokenizer("bert-base-uncased")
    else:
        with pytest.raises(text_inputs.TextInputError, match="not available locally"):
            text_inputs.hf_tokenizer("surely/not-a-cached-tokenizer-name")


def test_tokenizer_and_bundled_sample():
    assert text_inputs.tokenize("Call me Ishmael. 'Tis") == ["call", "me", "ishmael", ".", "'", "tis"]
    ids = text_inputs.hash_encode("It was the best of times, it was the worst of times")
    assert ids[0] == ids[7] and ids[1] == ids[8] and all(0 <= i < text_inputs.HASH_VOCAB_SIZE for i in ids)
    passages = text_inputs.passages(text_inputs.bundled_text())
    assert len(passages) >= 32
    assert all(len(text_inputs.tokenize(p)) >= 128 for p in passages)
    windows = text_inputs.token_windows(text_inputs.bundled_text(), text_inputs.hash_encode, 128, 32)
    assert tuple(windows.shape) == (32, 128)
    firsts = [text_inputs.hash_encode(p)[:128] for p in passages[:32]]
    assert windows.tolist() == firsts  # one window per excerpt, in order
    long = text_inputs.token_windows("a b c d e f g h i j", text_inputs.hash_encode, 3, 3)
    assert tuple(long.shape) == (3, 3)
    with pytest.raises(text_inputs.TextInputError, match="--excerpts 4 asks .* it gives 3 windows of 3 tokens"):
        text_inputs.token_windows("a b c d e f g h i j", text_inputs.hash_encode, 3, 4)


def test_more_excerpts_than_the_text_has_is_refused_for_library_callers_too():
    config = collapse.StudyConfig(archs=["s4d"], depth=1, d_model=8, seqlen=128, excerpts=36, lams=[0.0])
    with pytest.raises(text_inputs.TextInputError, match="gives 35 windows of 128 tokens .* --excerpts 35 or fewer"):
        collapse.run_study(config, progress=False)
    config.excerpts = 35  # every window there is: the batch is exactly what was asked for
    assert collapse.make_inputs(config, 0)[1]["sequences"] == 35


def test_hf_model_study_on_a_local_mamba2_with_gating_on_and_off(tmp_path, capsys):
    pytest.importorskip("transformers")
    from lambdaskip.hf.collapse import tiny_mamba2
    model_dir = tmp_path / "mamba2"
    tiny_mamba2(depth=4, d_model=32).save_pretrained(model_dir)
    out = tmp_path / "out"
    status = main(["collapse", "--hf-model", str(model_dir), "--lams", "0", "10", "--seqlen", "16",
                   "--excerpts", "2", "--out", str(out), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["model_type"] == "mamba2" and results["input"] == "random tokens"
    combos = {(r["gating"], r["lam"]) for r in results["rows"]}
    assert combos == {(True, 0.0), (True, 10.0), (False, 0.0), (False, 10.0)}
    layers = {r["layer"] for r in results["rows"]}
    assert layers == set(range(5))  # embeddings + 4 layers
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(results["rows"])
    assert "gating=off λ=10" in capsys.readouterr().out


def test_hf_model_that_is_not_available_locally_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("transformers")
    status = main(["collapse", "--hf-model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert "not available locally" in err and "\n" not in err


def _finished_whole(out):
    """The folder holds one complete run: every result file, and the CSV of the run that results.json names."""
    names = set(os.listdir(out))
    assert names == set(collapse.RESULT_FILES) - ({"mu_per_layer.png", "mu_final_vs_lambda.png"}
                                                  if not plots.available() else set()), names
    seeds = json.loads((out / "results.json").read_text())["config"]["seeds"]
    with open(out / "results.csv") as f:
        assert {int(row["seed"]) for row in csv.DictReader(f)} == set(seeds)
    return seeds


def test_out_that_cannot_be_created_fails_before_the_study(tmp_path, capsys):
    assert main(["collapse", "--depth", "4000", "--no-progress", "--out", "/proc/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lambdaskip collapse: error: cannot create --out /proc/nope") and "\n" not in err
    (tmp_path / "file").write_text("x")
    assert main(["collapse", *SMALL, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_second_run_into_a_locked_out_fails_at_once(tmp_path, capsys):
    from lambdaskip.common import output_lock
    out = tmp_path / "o"
    with output_lock(out):
        assert main(["collapse", "--depth", "4000", *SMALL[2:], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is in use by another run" in err and "\n" not in err and not out.exists()
    assert not os.listdir(tmp_path)  # the lock file is gone with its holder


def test_an_overwrite_replaces_the_folder_whole_even_when_interrupted(tmp_path, monkeypatch):
    from lambdaskip.common import staged_folder
    out = tmp_path / "o"
    argv = ["collapse", "--archs", "s4d", "--lams", "1", *SMALL, "--out", str(out)]
    assert main(argv) == 0 and _finished_whole(out) == [0]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the new folder is being written: the old one stays
        with staged_folder(out) as folder:
            (Path(folder) / "results.csv").write_text("half")
            raise KeyboardInterrupt
    assert _finished_whole(out) == [0] and sorted(os.listdir(tmp_path)) == ["o"]
    renames = []

    def rename_then_interrupt(src, dst):  # Ctrl-C arrives between the two renames of the swap
        renames.append(dst)
        os.replace(src, dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    assert main([*argv, "--overwrite", "--seeds", "1"]) == 130  # interrupted, after the swap completed
    monkeypatch.undo()
    assert len(renames) == 2 and _finished_whole(out) == [1] and sorted(os.listdir(tmp_path)) == ["o"]


def test_sigint_from_outside_during_an_overwrite_leaves_old_or_new(tmp_path):
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "lambdaskip", "collapse", "--archs", "attention", "--lams", "0", "1", *SMALL,
            "--out", str(out)]
    assert subprocess.run(argv, capture_output=True, timeout=300).returncode == 0
    # deep enough that the signal lands in the study, not after it (one pass per stack takes ~1 ms a layer here)
    overwrite = [a for a in argv if a != "--no-progress"] + ["--overwrite", "--seeds", "1", "--depth", "600"]
    process = subprocess.Popen(overwrite, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    seen = ""
    while "collapse study" not in seen and process.poll() is None:  # the study has started (its progress bar)
        seen += process.stderr.read(1)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode in (0, 130), seen + err
    if process.returncode == 130:
        assert err.strip().endswith("interrupted") and "Traceback" not in err
    assert _finished_whole(out) in ([0], [1])
    assert sorted(os.listdir(tmp_path)) == ["o"]
    # and a Ctrl-C inside the last step, the swap of the folders, is covered (deterministically) above


def test_hf_model_folder_that_is_not_a_model_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["collapse", "--hf-model", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lambdaskip collapse: error: --hf-model {tmp_path}:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_hf_model_gpt2_has_no_gating_label_and_llama_is_refused_in_one_line(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                         n_positions=32)).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["collapse", "--hf-model", str(tmp_path / "gpt2"), "--lams", "-1", "1", "--seqlen", "8",
                 "--excerpts", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "gating" not in printed and "λ=-1:" in printed
    assert {r["gating"] for r in json.loads((out / "results.json").read_text())["rows"]} == {None}
    if plots.available():
        assert (out / "mu_per_layer.png").read_bytes().startswith(b"\x89PNG")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=64)).save_pretrained(tmp_path / "llama")
    capsys.readouterr()
    assert main(["collapse", "--hf-model", str(tmp_path / "llama"), "--lams", "1", "--seqlen", "8",
                 "--excerpts", "2", "--out", str(tmp_path / "llama_out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()[-1]  # after transformers' loading bar
    assert err.startswith(f"lambdaskip collapse: error: --hf-model {tmp_path / 'llama'}:") and "support" in err
    assert not (tmp_path / "llama_out").exists()


def test_hf_model_no_progress_silences_transformers_loading_bars(tmp_path, capsys):
    """--no-progress: no progress bar at all on stderr, transformers' "Loading weights" included; either way
    transformers' own setting is left as it was."""
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    from lambdaskip.hf.collapse import tiny_mamba2
    tiny_mamba2(depth=2, d_model=16).save_pretrained(tmp_path / "mamba2")
    capsys.readouterr()
    argv = ["collapse", "--hf-model", str(tmp_path / "mamba2"), "--lams", "0", "--seqlen", "8", "--excerpts", "2"]
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err and "\r" not in err, err
    assert hf_logging.is_progress_bar_enabled()
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert "hf collapse study" in err
    hf_logging.disable_progress_bar()
    try:  # a library caller who turned them off keeps them off
        assert main([*argv, "--out", str(tmp_path / "off"), "--no-progress"]) == 0
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
