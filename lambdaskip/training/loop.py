"""Training loop for MQAR and image-sequence classification, on one process or many (torchrun + DDP).

One run = one :class:`TrainConfig` and one output folder holding

- ``checkpoint.pt``: model, optimizer, scheduler, RNG states, history and config, rewritten atomically
  (temporary file + ``os.replace``) after every epoch; loadable with ``torch.load(weights_only=True)``.
- ``metrics.csv`` / ``metrics.json``: one row per epoch (losses, accuracies, learning rate, every λ,
  normalised μ after every layer on a fixed evaluation batch), the config and library versions.
- ``summary.json``: written when the run ends (all epochs done, or the target accuracy reached).

The folder is the run's resume point, so "all or nothing" means: it appears (renamed from a temporary
sibling) only once it holds a first verified checkpoint, every file in it is then replaced atomically, and
``summary.json`` (the finished mark) is written last. One run at a time holds it (:func:`output_lock`).
A non-finite loss (checked every step), parameter or λ (every epoch, and after loading a checkpoint) stops
the run with :class:`~lambdaskip.training.finite.TrainingDiverged`: the last good checkpoint stays and the
run is not marked finished.

Exact resume: the data order of epoch e comes from a generator seeded with (seed, e) alone, so a run
restarted from its checkpoint after epoch e replays the same batches, optimizer and schedule state and
ends with the same weights as an uninterrupted run.

Distributed: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1 in the environment) the run
joins a process group (nccl on CUDA, gloo on CPU) and wraps the model in DistributedDataParallel (or shards
it with FSDP2 and writes ``checkpoint.dcp``: :mod:`lambdaskip.training.sharded`).
``batch_size`` is the global batch: every rank takes its own contiguous 1/N of each global batch, and
DDP averages gradients, which equals the single-process gradient because every example carries the same
number of labels (MQAR: ``num_pairs``; classification: 1). Parameters, λ included, stay identical on all
ranks since DDP applies the same averaged gradient everywhere. Evaluation is sharded and summed with
``all_reduce``, training μ averaged over the ranks; rank 0 writes the files.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from lambdaskip.common import atomic_write, output_lock, versions
from lambdaskip.training.checkpoint import check_resumable
from lambdaskip.training.config import TrainConfig
from lambdaskip.training.data import load_data
from lambdaskip.training.distributed import Placement, all_gather_rows, all_sum, setup_placement
from lambdaskip.training.finite import check_loss, check_model, check_row
from lambdaskip.training.measure import TrainingMu, autocast, evaluate, loss_and_hits, probe_mu
from lambdaskip.training.model import SequenceModel, build_model
from lambdaskip.training.optim import WarmupCosine, build_optimizer, epoch_order
from lambdaskip.training.sharded import (load_run_checkpoint, load_run_weights, run_checkpoint, run_folder,
                                         save_run_checkpoint, shard_model)
from lambdaskip.training.tensorboard_log import TensorBoardLog, require_tensorboard

METRICS_CSV, METRICS_JSON, SUMMARY = "metrics.csv", "metrics.json", "summary.json"


def _write_metrics(out: Path, history: list[dict], meta: dict) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out / METRICS_CSV, text.getvalue().encode())
    atomic_write(out / METRICS_JSON, json.dumps({**meta, "history": history}, indent=1).encode())


def train(config: TrainConfig, *, resume: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume) one run and return its summary.

    Args:
        config: the run; ``config.out`` is its folder.
        resume: continue from ``out/checkpoint.pt`` when it exists; False raises if it exists
            (a finished or started run is never overwritten).
        stop_after: leave after this many epochs in this call (the checkpoint allows resuming), as a job
            with a time limit would; None runs to the end.
    Returns:
        the summary dict (also written to ``out/summary.json`` when the run has ended).
    """
    config.validate()
    if config.tensorboard:  # before any work: a missing extra is a one-line hint, not a late traceback
        require_tensorboard()
    if config.threads:
        torch.set_num_threads(config.threads)
    placement = setup_placement(config)
    with output_lock(config.out) if placement.main else contextlib.nullcontext():
        return _train(config, placement, resume, stop_after)


def _train(config: TrainConfig, placement: Placement, resume: bool, stop_after: int | None) -> dict:
    out = Path(config.out)
    checkpoint_path, exists = run_checkpoint(out, placement)
    checkpoint = None
    if exists:
        if not resume:
            raise ValueError(f"{checkpoint_path} exists: resume it, or choose another --out")
        checkpoint = load_run_checkpoint(checkpoint_path, placement)
        check_resumable(checkpoint["config"], config)

    data, facts = load_data(config)
    model = build_model(config, facts).to(placement.device)
    if placement.fsdp:
        shard_model(model, placement, config.amp)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(data["train"]) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(data['train'])} training examples")
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(int(config.warmup_frac * total_steps), total_steps))
    history: list[dict] = []
    start_epoch, finished = 0, False
    if checkpoint is not None:
        load_run_weights(checkpoint, checkpoint_path, model, optimizer, placement)
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if placement.device.type == "cuda" and checkpoint["rng"]["cuda"].numel():
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], placement.device)
        history, start_epoch, finished = checkpoint["history"], checkpoint["epoch"], checkpoint["finished"]
        check_model(model, f"in the checkpoint {checkpoint_path}")
        if placement.main and not finished:
            print(f"resuming from epoch {start_epoch} ({checkpoint_path})", file=sys.stderr, flush=True)
    wrapped = model
    if placement.world > 1 and not placement.fsdp:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[placement.device.index] if placement.device.type == "cuda" else None,
            broadcast_buffers=False)  # the only buffers are fixed λ values, identical from construction

    meta = {"config": asdict(config), "data_source": facts["source"], "world_size": placement.world,
            "device": str(placement.device), "versions": versions(),
            "parameters": sum(p.numel() for p in model.parameters())}
    tokens, labels = data["train"].tensors
    per_rank = config.batch_size // placement.world
    training_mu = TrainingMu(model, placement.device)
    board = placement.main and config.tensorboard and TensorBoardLog(config.tensorboard, start_epoch * steps_per_epoch)
    epochs_run = 0
    while not finished and start_epoch + epochs_run < config.epochs:
        if stop_after is not None and epochs_run >= stop_after:
            break
        epoch = start_epoch + epochs_run
        order = epoch_order(len(tokens), config.seed, epoch)
        wrapped.train()
        began, loss_sum = time.perf_counter(), 0.0
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", config, placement)
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size + placement.rank * per_rank:][:per_rank]
            x, y = tokens[index].to(placement.device), labels[index].to(placement.device)
            with autocast(config, placement):
                logits = wrapped(x)
            training_mu.record_step()
            loss, hits, count = loss_and_hits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step()
            value = loss.item()  # the loop's one synchronisation per step, where it always was; the check reuses it
            check_loss(value, epoch + 1, step + 1)  # a bad step is never saved: the last checkpoint stays good
            loss_sum += value
            lams = model.lams() if config.tensorboard else None  # a collective under FSDP: every rank calls it
            if board:
                board.step(epoch * steps_per_epoch + step + 1, value, hits / count, scheduler.get_last_lr()[0],
                           lams, training_mu.last.tolist())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if bar is not None:
            bar.close()
        train_loss = all_sum([loss_sum / steps_per_epoch], placement)[0] / placement.world
        eval_loss, eval_acc = evaluate(model, data["eval"], config, placement)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": scheduler.get_last_lr()[0],
               "train_loss": train_loss, "eval_loss": eval_loss, "eval_acc": eval_acc}
        if "test" in data:
            row["test_loss"], row["test_acc"] = evaluate(model, data["test"], config, placement)
        row["seconds"] = time.perf_counter() - began
        row.update(model.lams())
        row.update({f"mu{k}": v for k, v in enumerate(probe_mu(model, data["eval"], config, placement))})
        row.update(training_mu.epoch_row(placement))
        check_row(row, f"after epoch {epoch + 1}")
        check_model(model, f"after epoch {epoch + 1}")
        history.append(row)
        if board:
            board.epoch(row)
        epochs_run += 1
        finished = (epoch + 1 == config.epochs) or (config.target_acc is not None and eval_acc >= config.target_acc)
        with run_folder(out, placement) as folder:
            save_run_checkpoint(folder, model, optimizer, scheduler, epoch + 1, history, config, finished, placement)
            if placement.main:
                _write_metrics(folder, history, meta)
        if placement.main and config.progress:
            print(_describe(row), flush=True)
        if placement.world > 1:
            dist.barrier()
    if board:
        board.close()
    summary = {**meta, "rank": placement.rank, "lams_by_rank": _lams_by_rank(model, placement),
               "finished": finished, "epochs_done": len(history), "history": history,
               "final": history[-1] if history else None,
               "best_eval_acc": max((row["eval_acc"] for row in history), default=None)}
    if finished and placement.main:
        atomic_write(out / SUMMARY, json.dumps({k: v for k, v in summary.items() if k != "rank"}, indent=1).encode())
    return summary


def _lams_by_rank(model: SequenceModel, placement: Placement) -> list[list[float]]:
    """Every rank's λ values, gathered with all_gather: equal rows show the ranks agree."""
    return all_gather_rows(list(model.lams().values()), placement)


def _progress(total: int, description: str, config: TrainConfig, placement: Placement):
    if not (config.progress and placement.main):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)


def _describe(row: dict) -> str:
    lams = " ".join(f"{v:+.2f}" for k, v in row.items() if k.startswith("lam") and not k.endswith("_mlp"))
    mus = " ".join(f"{v:.2f}" for k, v in row.items() if k.startswith("mu"))
    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, eval loss {row['eval_loss']:.4f}, "
            f"eval acc {row['eval_acc']:.4f}, λ [{lams}], μ/‖Y‖ [{mus}], {row['seconds']:.1f}s")

