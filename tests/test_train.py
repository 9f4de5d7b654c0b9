"""The trainer: learning a tiny MQAR, exact resume, DDP (2 gloo processes) against one process, the CLI."""
import json
import os

import pytest
import torch
from torchrun_helpers import torchrun

from lambdaskip.cli import main
from lambdaskip.training import (CHECKPOINT, METRICS_CSV, METRICS_JSON, SUMMARY, SequenceModel, TrainConfig,
                                 WarmupCosine, build_model, build_optimizer, epoch_order, load_checkpoint, load_data,
                                 train)

TINY = dict(task="mqar", vocab_size=16, seqlen=16, num_pairs=2, num_train=1024, num_test=256, d_model=32,
            depth=2, batch_size=32, lr=3e-3, epochs=5, threads=1, progress=False)


def _config(tmp_path, name="run", **overrides):
    return TrainConfig(out=str(tmp_path / name), **{**TINY, **overrides})


def test_tiny_attention_learns_tiny_mqar(tmp_path):
    summary = train(_config(tmp_path, target_acc=0.95, epochs=8))
    assert summary["finished"] and summary["best_eval_acc"] >= 0.95
    out = tmp_path / "run"
    assert {CHECKPOINT, METRICS_CSV, METRICS_JSON, SUMMARY} <= set(os.listdir(out))
    history = json.loads((out / METRICS_JSON).read_text())["history"]
    assert len(history) == summary["epochs_done"] <= 8
    # μ of the stack's input and of each of the 2 blocks, and every λ, logged each epoch
    assert {"mu0", "mu1", "mu2", "lam0", "lam1", "lam0_mlp"} <= set(history[-1])
    assert len((out / METRICS_CSV).read_text().splitlines()) == len(history) + 1
    # and μ of each block's output during the training steps, from the λ-skip telemetry
    assert all(row["train_mu1"] > 0 and row["train_mu2"] > 0 for row in history)


def test_training_mu_telemetry_is_mu_of_each_block_output_averaged_over_steps():
    from lambdaskip.training import TrainingMu
    from lambdaskip.metrics import CollapseProbe
    model = SequenceModel(vocab_size=16, num_outputs=16, arch="attention", depth=2, d_model=16, head="token")
    telemetry = TrainingMu(model, torch.device("cpu"))
    expected = torch.zeros(2, dtype=torch.float64)
    for seed in range(2):
        tokens = torch.randint(0, 16, (3, 8), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad(), CollapseProbe(model.stack.blocks, metrics=("mu",)) as probe:
            model(tokens)
        telemetry.record_step()
        expected += probe.trajectory("mu")[1:].mean(dim=1)  # block outputs, mean over the sequences
    row = telemetry.epoch_row()
    assert row == pytest.approx({"train_mu1": expected[0].item() / 2, "train_mu2": expected[1].item() / 2},
                                rel=1e-5)
    assert telemetry.steps == 0 and not telemetry.sums.any()


def test_learnable_lambda_moves_and_is_not_decayed(tmp_path):
    summary = train(_config(tmp_path, lam=-1.0, learnable=True, epochs=2))
    lams = [v for k, v in summary["final"].items() if k.startswith("lam")]
    assert len(lams) == 4 and all(v != -1.0 for v in lams)
    fixed = train(_config(tmp_path, "fixed", lam=2.0, epochs=1))
    assert all(v == 2.0 for k, v in fixed["final"].items() if k.startswith("lam"))
    config = _config(tmp_path, lam=-1.0, learnable=True)
    model = build_model(config, load_data(config)[1])
    decayed = {id(p) for group in build_optimizer(model, config).param_groups if group["weight_decay"] > 0
               for p in group["params"]}
    lams = [block.skip.lam for block in model.stack.blocks]
    assert decayed and not any(id(lam) in decayed for lam in lams)


def test_resume_gives_the_same_weights(tmp_path):
    full = _config(tmp_path, "full", epochs=3, num_train=512)
    train(full)
    parts = _config(tmp_path, "parts", epochs=3, num_train=512)
    first = train(parts, stop_after=1)
    assert not first["finished"] and first["epochs_done"] == 1 and not (tmp_path / "parts" / SUMMARY).exists()
    second = train(parts, stop_after=1)
    assert second["epochs_done"] == 2
    train(parts)
    a = load_checkpoint(tmp_path / "full" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "parts" / CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 3 and a["finished"] and b["finished"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["eval_loss"] for r in a["history"]] == [r["eval_loss"] for r in b["history"]]
    # a finished run resumes to itself, and is never restarted silently
    assert train(parts)["epochs_done"] == 3
    with pytest.raises(ValueError, match="exists"):
        train(parts, resume=False)
    with pytest.raises(ValueError, match="lr"):
        train(_config(tmp_path, "parts", epochs=3, num_train=512, lr=1e-2))


def test_activation_checkpointing_trains_the_same_model(tmp_path):
    """`--checkpoint block` recomputes activations in the backward: the same weights bit for bit on the CPU
    reference path, and the same μ telemetry (recorded once per layer, never from the recomputation)."""
    args = ["--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "128", "--num-test", "32",
            "--d-model", "16", "--depth", "6", "--batch-size", "32", "--epochs", "1", "--threads", "1", "--quiet",
            "--learnable"]
    assert main(["train", "mqar", "--out", str(tmp_path / "plain"), *args]) == 0
    assert main(["train", "mqar", "--out", str(tmp_path / "ckpt"), "--checkpoint", "block", *args]) == 0
    plain, ckpt = (load_checkpoint(tmp_path / name / CHECKPOINT) for name in ("plain", "ckpt"))
    assert ckpt["config"]["checkpoint"] == "block" and plain["config"]["checkpoint"] is None
    for name, tensor in plain["model"].items():
        assert torch.equal(tensor, ckpt["model"][name]), name
    mu_keys = [key for key in plain["history"][-1] if key.startswith("train_mu")]
    assert len(mu_keys) == 6
    assert [plain["history"][-1][k] for k in mu_keys] == [ckpt["history"][-1][k] for k in mu_keys]


def test_checkpoint_is_weights_only_loadable(tmp_path):
    train(_config(tmp_path, epochs=1, num_train=256))
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "config", "history", "epoch"} <= set(state)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "run"))


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU ranks, each half of the global batch of 32, against one process with all 32."""
    args = ["--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "256", "--num-test", "64",
            "--d-model", "32", "--batch-size", "32", "--lr", "3e-3", "--epochs", "2", "--threads", "1", "--quiet",
            "--learnable", "--lam", "-1"]
    done = torchrun("-m", "lambdaskip", "train", "mqar", "--out", str(tmp_path / "ddp"), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / SUMMARY).read_text())
    assert summary["world_size"] == 2
    rank0, rank1 = summary["lams_by_rank"]
    assert rank0 == rank1 and rank0 != [-1.0] * 4  # λ moved, identically on both ranks
    assert main(["train", "mqar", "--out", str(tmp_path / "single"), *args]) == 0
    ddp = load_checkpoint(tmp_path / "ddp" / CHECKPOINT)["model"]
    single = load_checkpoint(tmp_path / "single" / CHECKPOINT)["model"]
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_image_digits_run(tmp_path):
    pytest.importorskip("sklearn")
    summary = train(_config(tmp_path, task="image", arch="s4d", d_model=16, d_state=8, epochs=1, batch_size=64,
                            lr=1e-2))
    assert summary["data_source"].startswith("scikit-learn 8x8 digits")
    assert {"eval_acc", "test_acc", "mu2"} <= set(summary["final"]) and summary["final"]["eval_acc"] > 0.2


@pytest.mark.parametrize("arch, head, shape", [("attention", "token", (3, 12, 10)), ("mamba2", "token", (3, 12, 10)),
                                               ("s4d", "pooled", (3, 10))])
def test_model_shapes(arch, head, shape):
    kwargs = dict(d_state=8, headdim=8) if arch == "mamba2" else {}
    model = SequenceModel(20, 10, arch, 2, 16, lam=-1.0, learnable=True, head=head, max_len=12, **kwargs)
    assert model(torch.randint(0, 20, (3, 12))).shape == shape
    assert model.lams() == {"lam0": -1.0, "lam0_mlp": -1.0, "lam1": -1.0, "lam1_mlp": -1.0}
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randint(0, 20, (3, 13)))
    with pytest.raises(ValueError, match="head"):
        SequenceModel(20, 10, arch, 2, 16, head="last")


def test_schedule_and_data_order():
    schedule = WarmupCosine(warmup=10, total=110)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5) and schedule(110) == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(epoch_order(100, 0, 3), epoch_order(100, 0, 3))
    assert not torch.equal(epoch_order(100, 0, 3), epoch_order(100, 0, 4))
    assert sorted(epoch_order(100, 1, 0).tolist()) == list(range(100))


@pytest.mark.parametrize("argv, message", [
    (["train", "mqar", "--out", "{out}", "--num-pairs", "40"], "seqlen"),
    (["train", "mqar", "--out", "{out}", "--epochs", "0"], "epochs"),
    (["train", "mqar", "--out", "{out}", "--lr", "-1"], "lr"),
    (["train", "mqar", "--out", "{out}", "--filler", "noise"], "filler"),
    (["train", "image", "--out", "{out}", "--paper-size"], "paper-size"),
    (["train", "image", "--out", "{out}", "--image", "{out}/nowhere"], "image"),
    (["train", "mqar", "--out", "{out}", "--arch", "mamba2", "--headdim", "7"], "headdim"),
    (["train", "mqar", "--out", "{out}", "--batch-size", "5000"], "batch_size"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{out}", str(tmp_path / "cli")) for a in argv]
    extra = [] if "--num-train" in argv else ["--num-train", "64", "--num-test", "8", "--quiet"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lambdaskip train: error:") and message in err and "\n" not in err


def test_paper_preset():
    paper = TrainConfig.paper_mqar(out="x")
    assert (paper.seqlen, paper.num_pairs, paper.d_model, paper.depth, paper.d_state, paper.batch_size,
            paper.epochs, paper.weight_decay, paper.warmup_frac) == (512, 64, 128, 2, 64, 64, 64, 0.1, 0.1)
    paper.validate()


def test_sweep_writes_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["sweep", "mqar", "--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "64",
            "--num-test", "16", "--d-model", "16", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet",
            "--lams", "0", "1", "--learnable-inits", "1", "--lrs", "1e-3", "--seeds", "0", "--out", str(tmp_path / "sweep")]
    assert main(argv) == 0
    printed = capsys.readouterr()  # --quiet still says which run is running, and where it wrote
    assert "run 1/3: attention_fixed+0_lr" in printed.err and "run 3/3: attention_learn+1" in printed.err
    assert f"wrote {tmp_path / 'sweep'}/results.csv" in printed.out
    out = tmp_path / "sweep"
    assert {"results.csv", "results.md", "accuracy_vs_lambda.png", "mu_over_training.png", "sweep.json"} <= set(
        os.listdir(out))
    assert len((out / "results.csv").read_text().splitlines()) == 4
    table = (out / "results.md").read_text()
    assert "learnable from +1" in table and "| attention | +0 |" in table
    assert main(argv) == 0  # a finished sweep resumes every run without training again


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["attention", "mamba2", "s4d"])
def test_tiny_mqar_on_gpu_with_bf16_autocast(tmp_path, arch):
    summary = train(_config(tmp_path, arch=arch, device="cuda", amp=True, epochs=3, lam=-1.0, learnable=True))
    assert summary["device"].startswith("cuda") and summary["finished"]
    assert all(torch.isfinite(torch.tensor(summary["final"][k])) for k in ("train_loss", "eval_loss", "mu2"))
    if arch == "attention":
        assert summary["best_eval_acc"] > 0.5


def _tiny_argv(out, *extra):
    return ["train", "mqar", "--out", str(out), "--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2",
            "--num-train", "64", "--num-test", "16", "--d-model", "16", "--batch-size", "32", "--epochs", "2",
            "--threads", "1", "--quiet", *extra]


def test_diverging_run_stops_with_one_line_and_is_not_finished(tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(_tiny_argv(out, "--lr", "1e4", "--clip-grad", "0", "--epochs", "3")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lambdaskip train: error: training diverged") and "\n" not in err
    assert not (out / SUMMARY).exists()
    if (out / CHECKPOINT).exists():  # the last good epoch's checkpoint is kept, finite and not finished
        state = load_checkpoint(out / CHECKPOINT)
        assert not state["finished"] and all(torch.isfinite(t).all() for t in state["model"].values())


def test_nonfinite_checkpoint_is_refused_after_load(tmp_path):
    from lambdaskip.training import TrainingDiverged, save_checkpoint
    config = _config(tmp_path, epochs=2, num_train=64, num_test=16, d_model=16)
    train(config, stop_after=1)
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    model = build_model(config, load_data(config)[1])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(0, 4))
    save_checkpoint(tmp_path / "run" / CHECKPOINT, model, optimizer, scheduler, 1, state["history"], config, False,
                    torch.device("cpu"))
    with pytest.raises(TrainingDiverged, match="non-finite values in the checkpoint"):
        train(config)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "random", "no-checksum"])
def test_damaged_checkpoint_is_refused_with_one_line(tmp_path, capsys, damage):
    out = tmp_path / "run"
    argv = _tiny_argv(out)
    assert main(argv + ["--epochs", "1"]) == 0
    capsys.readouterr()
    path = out / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "flip":
        middle = len(data) // 2
        data[middle:middle + 2000] = bytes(b ^ 0xFF for b in data[middle:middle + 2000])
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = bytearray()
    elif damage == "random":
        data = bytearray(torch.randint(0, 256, (len(data),), dtype=torch.uint8).numpy().tobytes())
    else:
        (out / (CHECKPOINT + ".sha256")).unlink()
    path.write_bytes(bytes(data))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lambdaskip train: error: checkpoint {path} is corrupt (") and "\n" not in err
    assert err.endswith("remove it or use another --out") and "weights_only" not in err
    assert path.read_bytes() == bytes(data)  # left as it was, for the user to inspect


def test_checkpoint_checksum_lists_the_replaced_checkpoint(tmp_path):
    """A kill between the two renames of a save (new checksums, old checkpoint) still resumes."""
    out = tmp_path / "run"
    train(_config(tmp_path, epochs=2, num_train=64, num_test=16, d_model=16), stop_after=1)
    old = (out / CHECKPOINT).read_bytes()
    train(_config(tmp_path, epochs=2, num_train=64, num_test=16, d_model=16), stop_after=1)
    lines = (out / (CHECKPOINT + ".sha256")).read_text().splitlines()
    assert len(lines) == 2 and all(line.endswith("  " + CHECKPOINT) for line in lines)
    (out / CHECKPOINT).write_bytes(old)
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1


def test_run_folder_is_checked_locked_and_appears_whole(tmp_path, capsys):
    from lambdaskip.common import output_lock
    (tmp_path / "file").write_text("x")
    assert main(_tiny_argv(tmp_path / "file")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lambdaskip train: error: --out {tmp_path / 'file'} is a file, not a folder"
    assert main(_tiny_argv(tmp_path / "new" / "refused", "--batch-size", "5000")) == 2  # refused after loading data
    assert "batch_size" in capsys.readouterr().err and sorted(os.listdir(tmp_path)) == ["file"]
    with output_lock(tmp_path / "busy"):
        assert main(_tiny_argv(tmp_path / "busy")) == 2
    assert "is in use by another run" in capsys.readouterr().err and not (tmp_path / "busy").exists()
    config = _config(tmp_path, epochs=2, num_train=64, num_test=16, d_model=16)
    train(config, stop_after=0)  # no epoch done: no folder
    assert not (tmp_path / "run").exists()
    train(config, stop_after=1)
    assert sorted(os.listdir(tmp_path / "run")) == [CHECKPOINT, CHECKPOINT + ".sha256", METRICS_CSV, METRICS_JSON]
    capsys.readouterr()
    train(config)
    assert "resuming from epoch 1" in capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no lock or temporary left


@pytest.mark.parametrize("argv, name, code", [
    (["train", "mqar", "--out", "{out}", "--arch", "rnn"], "--arch", 2),
    (["train", "mqar", "--out", "{out}", "--depth", "-1"], "depth", 2),
    (["train", "mqar", "--out", "{out}", "--depth", "two"], "--depth", 2),
    (["train", "mqar", "--out", "{out}", "--norm", "batchnorm"], "norm", 2),
    (["train", "mqar", "--out", "{out}", "--lr", "nan"], "lr", 2),
    (["train", "mqar", "--out", "{out}", "--seed", "-1"], "seed", 2),
    (["train", "mqar"], "--out", 2),
    (["train", "mqar", "--out", "{file}"], "--out", 2),
    (["sweep", "mqar", "--out", "{out}", "--lams", "--learnable-inits"], "--lams", 2),
    (["sweep", "mqar", "--out", "{out}", "--seeds", "x"], "--seeds", 2),
    (["collapse", "--out", "/proc/nope"], "--out", 2),
    (["collapse", "--out", "{out}", "--depth", "0"], "depth", 2),
    (["collapse", "--out", "{out}", "--gating", "maybe"], "gating", 2),
    (["collapse", "--out", "{out}", "--hf-model", "{out}/nowhere"], "--hf-model", 2),
    (["frobnicate"], "frobnicate", 2),
])
def test_bad_input_battery_one_line_naming_the_argument(tmp_path, capsys, argv, name, code):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{out}", str(tmp_path / "o")).replace("{file}", str(tmp_path / "file")) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    assert status == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_norm_none_trains(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), **{**TINY, "norm": None, "epochs": 1, "num_train": 64,
                                                       "num_test": 16, "d_model": 16})
    assert train(config)["finished"]
    assert main(_tiny_argv(tmp_path / "cli", "--norm", "none", "--epochs", "1")) == 0


def test_paper_size_on_cpu_warns(capsys):
    from lambdaskip.cli import build_parser
    from lambdaskip.cli.train import config_from_args
    args = build_parser().parse_args(["train", "mqar", "--out", "x", "--paper-size", "--device", "cpu"])
    config_from_args(args, out="x", lam=1.0, learnable=False)
    assert "--paper-size is sized for a GPU" in capsys.readouterr().err
