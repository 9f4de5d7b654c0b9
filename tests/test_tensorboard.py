"""``--tensorboard``: the scalars a run logs (through a recording writer, and read back from real event files
when the tensorboard package is installed), and the one-line hint without it."""
import importlib.util
import json
from collections import defaultdict

import pytest

from lambdaskip.cli import main
from lambdaskip.training import METRICS_JSON, TrainConfig, train
from lambdaskip.training import loop, tensorboard_log

TINY = dict(task="mqar", vocab_size=16, seqlen=16, num_pairs=2, num_train=256, num_test=64, d_model=16, depth=3,
            batch_size=64, epochs=2, threads=1, progress=False, learnable=True, checkpoint="block")
STEPS = 4  # 256 / 64 per epoch


class RecordingWriter:
    """Stands in for SummaryWriter: every add_scalar of every writer, by log_dir."""
    logged: dict = {}
    purges: list = []

    def __init__(self, log_dir, purge_step=None):
        self.scalars = self.logged.setdefault(log_dir, defaultdict(dict))
        self.purges.append((log_dir, purge_step))
        self.closed = False

    def add_scalar(self, tag, value, step):
        assert step not in self.scalars[tag], f"{tag} logged twice at step {step}"
        self.scalars[tag][step] = float(value)

    def flush(self):
        pass

    def close(self):
        self.closed = True


def _check_run(scalars: dict, profiles: dict, history: list[dict], depth: int) -> None:
    """What a run logged against its metrics.json history (one process: the step values are the epoch's)."""
    lams = sorted(k for k in history[0] if k.startswith("lam"))
    for epoch, row in enumerate(history, start=1):
        steps = range((epoch - 1) * STEPS + 1, epoch * STEPS + 1)
        assert sum(scalars["train/loss"][s] for s in steps) / STEPS == pytest.approx(row["train_loss"], rel=1e-12)
        for k in range(1, depth + 1):  # per-step μ of every block, averaged over the epoch = metrics' train_mu
            mean = sum(scalars[f"train_mu/layer{k}"][s] for s in steps) / STEPS
            assert mean == pytest.approx(row[f"train_mu{k}"], rel=1e-9)
        assert scalars["eval/acc"][row["step"]] == row["eval_acc"]
        assert scalars["eval/loss"][row["step"]] == pytest.approx(row["eval_loss"])
        profile = profiles[f"epoch_{epoch:03d}"]
        assert profile["depth_profile/normalized_mu"] == pytest.approx({k: row[f"mu{k}"] for k in range(depth + 1)})
        assert profile["depth_profile/train_mu"] == pytest.approx({k: row[f"train_mu{k}"] for k in range(1, depth + 1)})
    last = len(history) * STEPS
    assert {f"lambda/{name}": scalars[f"lambda/{name}"][last] for name in lams} == pytest.approx(
        {f"lambda/{name}": history[-1][name] for name in lams})  # learnable λ after the last step
    assert len({scalars["lambda/lam0"][s] for s in range(1, last + 1)}) > 1  # it moved, step by step
    assert all(0 <= v <= 1 for v in scalars["train/acc"].values()) and len(scalars["train/lr"]) == last


def test_run_logs_loss_accuracy_every_lambda_and_mu_per_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "require_tensorboard", lambda: None)
    monkeypatch.setattr(tensorboard_log, "summary_writer", RecordingWriter)
    RecordingWriter.logged, RecordingWriter.purges = {}, []
    board = tmp_path / "tb"
    config = TrainConfig(out=str(tmp_path / "run"), tensorboard=str(board), **TINY)
    train(config, stop_after=1)
    train(config)  # resumed after epoch 1: TensorBoard is told to drop anything logged past it
    assert [purge for folder, purge in RecordingWriter.purges if folder == str(board)] == [None, STEPS + 1]
    history = json.loads((tmp_path / "run" / METRICS_JSON).read_text())["history"]
    scalars = RecordingWriter.logged[str(board)]
    profiles = {name.rsplit("/", 1)[1]: tags for name, tags in RecordingWriter.logged.items() if name != str(board)}
    assert set(profiles) == {"epoch_001", "epoch_002"}
    _check_run(scalars, profiles, history, TINY["depth"])


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the [tb] extra is not installed")
def test_event_files_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    board = tmp_path / "tb"
    train(TrainConfig(out=str(tmp_path / "run"), tensorboard=str(board), **TINY))
    history = json.loads((tmp_path / "run" / METRICS_JSON).read_text())["history"]

    def read(folder):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}

    profiles = {p.name: read(p) for p in (board / "depth_profile").iterdir()}
    scalars = read(board)
    assert set(profiles) == {"epoch_001", "epoch_002"}
    assert len([t for t in scalars if t.startswith("train_mu/")]) == TINY["depth"]
    assert len([t for t in scalars if t.startswith("lambda/")]) == 2 * TINY["depth"]
    row = history[-1]
    assert scalars["eval/acc"][row["step"]] == pytest.approx(row["eval_acc"], rel=1e-6)
    assert profiles["epoch_002"]["depth_profile/normalized_mu"] == pytest.approx(
        {k: row[f"mu{k}"] for k in range(TINY["depth"] + 1)}, rel=1e-6)
    for tag, key in (("train/loss", "train_loss"), ("train_mu/layer2", "train_mu2")):  # event files hold float32
        mean = sum(scalars[tag][s] for s in range(STEPS + 1, 2 * STEPS + 1)) / STEPS
        assert mean == pytest.approx(row[key], rel=1e-6)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_without_tensorboard_a_one_line_hint_and_exit_2(tmp_path, capsys, monkeypatch, command):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    extra = ["--lams", "1", "--learnable-inits", "--lrs", "1e-3", "--seeds", "0"] if command == "sweep" else []
    code = main([command, "mqar", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"),
                 "--quiet", "--threads", "1", "--num-train", "64", "--num-test", "64", "--epochs", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "pip install 'lambdaskip[tb]'" in err
    assert not (tmp_path / "run" / "runs").exists() and not (tmp_path / "tb").exists()
