"""`lambdaskip train --parallel fsdp`: FSDP2 on 2 gloo ranks against one process, exact resume from the sharded
checkpoint, and a damaged shard refused with one line.

Tolerance against one process (losses, μ: 1e-5 relative; weights: 1e-4 relative + 1e-5 absolute, as DDP's
test): FSDP reduce-scatters the mean of two half-batch gradients where one process sums the whole batch at
once, so the two differ by float32 rounding (~1e-7 relative) in the order of the sums, which AdamW's steps carry
into the weights. Measured on this setting: losses within 3e-7 relative, λ bitwise equal. A wrong reduction (a
sum instead of a mean, a rank's shard missed) moves the losses by more than 1e-3. Between FSDP runs on the same
ranks nothing differs: a stopped and resumed run equals an uninterrupted one bit for bit.
"""
import json
import shutil

import pytest
import torch
from torchrun_helpers import torchrun

from lambdaskip.cli import main
from lambdaskip.training import CHECKPOINT, METRICS_JSON, SUMMARY, load_checkpoint
from lambdaskip.training.sharded import MANIFEST, SHARDED_CHECKPOINT, TRAIN_STATE, verify_sharded

ARGS = ["--vocab-size", "16", "--seqlen", "16", "--num-pairs", "2", "--num-train", "128", "--num-test", "48",
        "--eval-batch-size", "16", "--d-model", "32", "--batch-size", "32", "--lr", "3e-3", "--epochs", "2",
        "--threads", "1", "--quiet", "--learnable", "--lam", "-1", "--checkpoint", "block"]
# the same run as a library call that stops after one epoch (as a job with a time limit would)
STOP_AFTER_ONE = """
import sys
from lambdaskip.training import TrainConfig, train
from lambdaskip.training.distributed import exit_rank, leave_process_group
config = TrainConfig(task="mqar", out=sys.argv[1], vocab_size=16, seqlen=16, num_pairs=2, num_train=128, num_test=48,
                     eval_batch_size=16, d_model=32, batch_size=32, lr=3e-3, epochs=2, threads=1, progress=False,
                     learnable=True, lam=-1.0, checkpoint="block", parallel="fsdp")
train(config, stop_after=1)
leave_process_group()
exit_rank(0)
"""


def _fsdp(out, *extra):
    return torchrun("-m", "lambdaskip", "train", "mqar", "--out", str(out), "--parallel", "fsdp", *ARGS, *extra)


def _weights(folder):
    """The model's full weights in a sharded checkpoint folder, read in this (single) process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    target = folder.parent / "consolidated.pt"
    dcp_to_torch_save(folder, target)
    return torch.load(target, weights_only=True)["model"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    done = _fsdp(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_fsdp_two_gloo_ranks_match_one_process(fsdp_run, tmp_path):
    assert sorted(p.name for p in (fsdp_run / SHARDED_CHECKPOINT).iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", MANIFEST, TRAIN_STATE]
    assert not (fsdp_run / CHECKPOINT).exists()
    summary = json.loads((fsdp_run / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    rank0, rank1 = summary["lams_by_rank"]
    assert rank0 == rank1 and rank0 != [-1.0] * 4  # λ moved, gathered whole on both ranks
    assert main(["train", "mqar", "--out", str(tmp_path / "single"), *ARGS]) == 0
    single = load_checkpoint(tmp_path / "single" / CHECKPOINT)
    sharded = json.loads((fsdp_run / METRICS_JSON).read_text())["history"]
    assert len(sharded) == len(single["history"]) == 2
    for ours, theirs in zip(sharded, single["history"]):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():  # losses, accuracies, every λ, μ per layer (probe and training)
            if key != "seconds":
                assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    weights = _weights(fsdp_run / SHARDED_CHECKPOINT)
    assert set(weights) == set(single["model"])
    for name, tensor in single["model"].items():  # a learnable λ is stored as a (1,) tensor by FSDP
        torch.testing.assert_close(weights[name].reshape(tensor.shape), tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_resume_after_a_stop_is_exact(fsdp_run, tmp_path):
    out = tmp_path / "parts"
    script = tmp_path / "stop_after_one.py"
    script.write_text(STOP_AFTER_ONE)
    done = torchrun(str(script), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / SUMMARY).exists()
    assert torch.load(out / SHARDED_CHECKPOINT / TRAIN_STATE, weights_only=True)["epoch"] == 1
    # a kill between the two renames of the next save: the old folder moved aside, a temporary left over
    (out / SHARDED_CHECKPOINT).rename(out / f".{SHARDED_CHECKPOINT}.old-killed")
    (out / f".{SHARDED_CHECKPOINT}.tmp-killed").mkdir()
    done = _fsdp(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from epoch 1" in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    full, resumed = (json.loads((folder / METRICS_JSON).read_text())["history"] for folder in (fsdp_run, out))
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in full]
    a, b = _weights(fsdp_run / SHARDED_CHECKPOINT), _weights(out / SHARDED_CHECKPOINT)
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_fsdp_damaged_shard_is_refused_with_one_line(fsdp_run, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(fsdp_run, out)
    folder = out / SHARDED_CHECKPOINT
    assert verify_sharded(folder) is None
    shard = folder / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    done = _fsdp(out)
    assert done.returncode != 0
    expected = (f"lambdaskip train: error: checkpoint {folder} is corrupt (the SHA-256 of __1_0.distcp does not "
                f"match {MANIFEST}): remove it or use another --out")
    errors = [line for line in done.stderr.splitlines() if "error:" in line and "lambdaskip" in line]
    assert errors == [expected, expected], done.stderr[-3000:]  # one line from each rank, no traceback
    assert "lambdaskip/training" not in done.stderr
    shard.unlink()
    assert verify_sharded(folder) == "__1_0.distcp is missing"
    (folder / MANIFEST).unlink()
    assert verify_sharded(folder) == f"no readable {MANIFEST}"
    # a sharded run's folder is not resumed by one process (nor a one-process run's by FSDP)
    assert main(["train", "mqar", "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lambdaskip train: error: {out} holds a {SHARDED_CHECKPOINT} checkpoint: resume it with "
                   f"--parallel fsdp under torchrun, or choose another --out")
