"""Training loop for MQAR and image-sequence classification, on one process or many (torchrun + DDP).

One run = one :class:`TrainConfig` and one output folder holding

- ``checkpoint.pt``: model, optimizer, scheduler, RNG states, history and config, rewritten atomically
  (temporary file + ``os.replace``) after every epoch; loadable with ``torch.load(weights_only=True)``.
- ``metrics.csv`` / ``metrics.json``: one row per epoch (losses, accuracies, learning rate, every λ,
  normalised μ after every layer on a fixed evaluation batch), the config and library versions.
- ``summary.json``: written when the run ends (all epochs done, or the target accuracy reached).

Exact resume: the data order of epoch e comes from a generator seeded with (seed, e) alone, so a run
restarted from its checkpoint after epoch e replays the same batches, optimizer and schedule state and
ends with the same weights as an uninterrupted run.

Distributed: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1 in the environment) the run
joins a process group (nccl on CUDA, gloo on CPU) and wraps the model in DistributedDataParallel.
``batch_size`` is the global batch: every rank takes its own contiguous 1/N of each global batch, and
DDP averages gradients, which equals the single-process gradient because every example carries the same
number of labels (MQAR: ``num_pairs``; classification: 1). Parameters, λ included, stay identical on all
ranks since DDP applies the same averaged gradient everywhere. Evaluation is sharded and summed with
``all_reduce``; rank 0 writes the files.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lambdaskip.experiments.image import DIGITS_SOURCE, LRA_SOURCE, NUM_CLASSES, digits_datasets, lra_image_datasets
from lambdaskip.experiments.model import SequenceModel
from lambdaskip.experiments.mqar import IGNORE_INDEX, MQARConfig, mqar_datasets
from lambdaskip.experiments.records import atomic_write, versions
from lambdaskip.metrics import CollapseProbe

TASKS = ("mqar", "image")
ARCHS = ("attention", "mamba2", "s4d")
CHECKPOINT, METRICS_CSV, METRICS_JSON, SUMMARY = "checkpoint.pt", "metrics.csv", "metrics.json", "summary.json"
# Fields that may differ between a run and its resumption (they change nothing that is computed).
RESUMABLE_CHANGES = ("out", "progress", "device", "threads")


@dataclass
class TrainConfig:
    """Everything that defines a run. ``batch_size`` is the global batch over all ranks.

    ``out``, ``progress``, ``device`` and ``threads`` (CPU threads of this process, 0 = PyTorch's default;
    1 is far faster for small models on a busy or small machine) do not change the result and may differ
    when a run is resumed; every other field must match its checkpoint."""
    task: str = "mqar"
    out: str = "runs/mqar"
    # MQAR
    vocab_size: int = 128
    seq_len: int = 64
    num_pairs: int = 8
    power_a: float = 0.01
    filler: str = "zero"
    num_train: int = 20_000
    num_test: int = 1_000
    # image: "digits" (the offline substitute) or a folder of CIFAR-10 python batches (LRA-Image)
    image: str = "digits"
    image_side: int = 8
    # model
    arch: str = "attention"
    depth: int = 2
    d_model: int = 64
    lam: float = 1.0
    learnable: bool = False
    norm: str = "layernorm"
    mlp: bool = True
    n_heads: int = 2
    d_state: int = 16
    headdim: int = 16
    positions: bool = True
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    clip_grad: float = 1.0
    target_acc: float | None = None
    seed: int = 0
    eval_batch_size: int = 256
    probe_batch: int = 8
    amp: bool = True
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    @classmethod
    def paper_mqar(cls, **overrides) -> "TrainConfig":
        """The paper's MQAR setting (zoology): L = 512, 64 pairs, vocab 8192, d = 128, state 64, 2 layers,
        100k/3k examples, global batch 64, weight decay 0.1, 10 % warmup, 64 epochs."""
        paper = MQARConfig.paper()
        base = dict(task="mqar", vocab_size=paper.vocab_size, seq_len=paper.seq_len, num_pairs=paper.num_pairs,
                    num_train=paper.num_train, num_test=paper.num_test, d_model=128, depth=2, d_state=64,
                    headdim=64, epochs=64, batch_size=64, weight_decay=0.1, warmup_frac=0.1)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot run."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        positive = ("depth", "d_model", "n_heads", "d_state", "headdim", "epochs", "batch_size", "eval_batch_size",
                    "probe_batch")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lam", "lr", "weight_decay", "warmup_frac", "clip_grad"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError("weight_decay and clip_grad must be non-negative (clip_grad=0 disables clipping)")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise ValueError(f"target_acc must be in (0, 1], got {self.target_acc}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.task == "mqar":
            self.mqar().validate()
        elif self.image == "digits":
            if self.image_side not in (8, 32):
                raise ValueError(f"image_side must be 8 or 32 for the digits task, got {self.image_side}")
        elif not Path(self.image).is_dir():
            raise ValueError(f"image must be 'digits' or a folder of CIFAR-10 python batches; "
                             f"{self.image!r} is not a folder")
        if self.arch == "attention" and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.arch == "mamba2" and (2 * self.d_model) % self.headdim:
            raise ValueError(f"2*d_model={2 * self.d_model} must be divisible by headdim={self.headdim}")
        if self.arch == "s4d" and self.d_state % 2:
            raise ValueError(f"d_state must be even for s4d, got {self.d_state}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be a non-negative int (0: PyTorch's default), got {self.threads!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def mqar(self) -> MQARConfig:
        return MQARConfig(vocab_size=self.vocab_size, seq_len=self.seq_len, num_pairs=self.num_pairs,
                          power_a=self.power_a, filler=self.filler, num_train=self.num_train,
                          num_test=self.num_test, seed=self.seed)


# ----------------------------------------------------------------------------------------------------------
# data, model, optimiser

def load_data(config: TrainConfig) -> tuple[dict, dict]:
    """(splits, task facts): splits maps "train"/"eval" (and "test" for images) to TensorDatasets;
    facts hold vocab size, outputs, head kind, sequence length and the data source label."""
    if config.task == "mqar":
        data = mqar_datasets(config.mqar())
        facts = dict(vocab=config.vocab_size, outputs=config.vocab_size, head="token", seq_len=config.seq_len,
                     source="MQAR (lambdaskip generator)")
        return {"train": data["train"], "eval": data["test"]}, facts
    if config.image == "digits":
        data, source = digits_datasets(side=config.image_side, levels=256, seed=config.seed), DIGITS_SOURCE
    else:
        data, source = lra_image_datasets(config.image, seed=config.seed), LRA_SOURCE
    facts = dict(vocab=256, outputs=NUM_CLASSES, head="pooled", seq_len=data["train"].tensors[0].shape[1],
                 source=source)
    return {"train": data["train"], "eval": data["val"], "test": data["test"]}, facts


def build_model(config: TrainConfig, facts: dict) -> SequenceModel:
    mixer = {"attention": dict(n_heads=config.n_heads, causal=config.task == "mqar"),
             "mamba2": dict(d_state=config.d_state, headdim=config.headdim, chunk_size=64),
             "s4d": dict(d_state=config.d_state)}[config.arch]
    return SequenceModel(facts["vocab"], facts["outputs"], config.arch, config.depth, config.d_model,
                         lam=config.lam, learnable=config.learnable, norm=config.norm, mlp=config.mlp,
                         head=facts["head"], max_len=facts["seq_len"] if config.positions else 0,
                         seed=config.seed, **mixer)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on parameters with ≥ 2 dimensions (projections, embeddings, convolutions,
    S4D's C), none on λ, norm weights, biases or the SSMs' per-channel vectors (A, dt, D): decaying λ
    would pull it towards 0, the skip that collapses."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


class WarmupCosine:
    """lr factor: linear warmup from 0 over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a permutation drawn from (seed, epoch) only."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(state))


# ----------------------------------------------------------------------------------------------------------
# distributed set-up

@dataclass
class Placement:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_placement(config: TrainConfig) -> Placement:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    device = torch.device("cpu")
    if want_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} (global) must be divisible by the {world} ranks")
    return Placement(rank, world, device)


def _all_sum(values: list[float], placement: Placement) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=placement.device)
    if placement.world > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


# ----------------------------------------------------------------------------------------------------------
# evaluation and logging

def _loss_and_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(mean cross-entropy over labelled positions, correct predictions, labelled positions)."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    mask = labels != IGNORE_INDEX
    return loss, int((logits.argmax(-1)[mask] == labels[mask]).sum()), int(mask.sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, config: TrainConfig, placement: Placement) -> tuple[float, float]:
    """(mean loss, accuracy) over labelled positions of ``dataset``, each rank evaluating every world-th
    example and the sums combined with all_reduce."""
    model.eval()
    tokens, labels = (t[placement.rank::placement.world] for t in dataset.tensors)
    loss_sum = hits = count = 0.0
    for start in range(0, len(tokens), config.eval_batch_size):
        x = tokens[start:start + config.eval_batch_size].to(placement.device)
        y = labels[start:start + config.eval_batch_size].to(placement.device)
        with _autocast(config, placement):
            logits = model(x)
        loss, batch_hits, batch_count = _loss_and_hits(logits, y)
        loss_sum, hits, count = loss_sum + float(loss) * batch_count, hits + batch_hits, count + batch_count
    loss_sum, hits, count = _all_sum([loss_sum, hits, count], placement)
    return loss_sum / count, hits / count


@torch.no_grad()
def probe_mu(model: SequenceModel, dataset, config: TrainConfig, placement: Placement) -> list[float]:
    """Normalised μ (mean over the first ``probe_batch`` evaluation sequences) at the stack's input and
    after every block."""
    model.eval()
    tokens = dataset.tensors[0][: config.probe_batch].to(placement.device)
    with CollapseProbe(model.stack.blocks, metrics=("normalized_mu",)) as probe:
        model(tokens)
    return probe.trajectory("normalized_mu").mean(dim=1).tolist()


class TrainingMu:
    """μ of every block's output during the training steps themselves, from the λ-skips' telemetry
    (:attr:`lambdaskip.modules.LambdaSkip.track_mu`: on CUDA the fused λ-norm kernel computes μ in the same
    pass as the norm, so logging costs almost nothing). Raw μ, averaged over the sequences of each step and
    over the epoch's steps; under DDP each rank sees its own shard (the main rank's values are logged)."""

    def __init__(self, model: SequenceModel, device: torch.device):
        self.skips = [block.mlp_skip or block.skip for block in model.stack.blocks]
        for skip in self.skips:
            skip.track_mu = True
        self.sums = torch.zeros(len(self.skips), dtype=torch.float64, device=device)
        self.steps = 0

    def record_step(self) -> None:
        """Add the last forward's μ (kept on the device: no synchronisation per step)."""
        self.sums += torch.stack([skip.last_mu.double().mean() for skip in self.skips])
        self.steps += 1

    def epoch_row(self) -> dict[str, float]:
        """``{"train_mu1": ..., "train_mu<depth>": ...}`` for the epoch so far, then reset."""
        means = (self.sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return {f"train_mu{k}": v for k, v in enumerate(means, start=1)}


def _autocast(config: TrainConfig, placement: Placement):
    if config.amp and placement.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _write_metrics(out: Path, history: list[dict], meta: dict) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out / METRICS_CSV, text.getvalue().encode())
    atomic_write(out / METRICS_JSON, json.dumps({**meta, "history": history}, indent=1).encode())


# ----------------------------------------------------------------------------------------------------------
# checkpoints

def save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, history: list[dict], config: TrainConfig,
                    finished: bool, device: torch.device) -> None:
    """Everything needed to resume, as tensors and plain containers (``weights_only=True``-loadable);
    the CUDA RNG state is that of ``device`` only (never initialises the other GPUs)."""
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "history": history, "config": asdict(config), "finished": finished,
             "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True`` on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    current = asdict(config)
    changed = [f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in current
               if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if changed:
        raise ValueError(f"the checkpoint in {config.out} was written with a different configuration: "
                         f"{', '.join(changed)}; use a new --out or the same settings")


# ----------------------------------------------------------------------------------------------------------
# the run

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
    if config.threads:
        torch.set_num_threads(config.threads)
    placement = setup_placement(config)
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT
    checkpoint = None
    if checkpoint_path.exists():
        if not resume:
            raise ValueError(f"{checkpoint_path} exists: resume it, or choose another --out")
        checkpoint = load_checkpoint(checkpoint_path)
        _check_resumable(checkpoint["config"], config)
    if placement.main:
        out.mkdir(parents=True, exist_ok=True)

    data, facts = load_data(config)
    model = build_model(config, facts).to(placement.device)
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
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if placement.device.type == "cuda" and checkpoint["rng"]["cuda"].numel():
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], placement.device)
        history, start_epoch, finished = checkpoint["history"], checkpoint["epoch"], checkpoint["finished"]
    wrapped = model
    if placement.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[placement.device.index] if placement.device.type == "cuda" else None,
            broadcast_buffers=False)  # the only buffers are fixed λ values, identical from construction

    meta = {"config": asdict(config), "data_source": facts["source"], "world_size": placement.world,
            "device": str(placement.device), "versions": versions(),
            "parameters": sum(p.numel() for p in model.parameters())}
    tokens, labels = data["train"].tensors
    per_rank = config.batch_size // placement.world
    training_mu = TrainingMu(model, placement.device)
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
            with _autocast(config, placement):
                logits = wrapped(x)
            training_mu.record_step()
            loss, _, _ = _loss_and_hits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if bar is not None:
            bar.close()
        train_loss = _all_sum([loss_sum / steps_per_epoch], placement)[0] / placement.world
        eval_loss, eval_acc = evaluate(model, data["eval"], config, placement)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": scheduler.get_last_lr()[0],
               "train_loss": train_loss, "eval_loss": eval_loss, "eval_acc": eval_acc}
        if "test" in data:
            row["test_loss"], row["test_acc"] = evaluate(model, data["test"], config, placement)
        row["seconds"] = time.perf_counter() - began
        row.update(model.lams())
        row.update({f"mu{k}": v for k, v in enumerate(probe_mu(model, data["eval"], config, placement))})
        row.update(training_mu.epoch_row())
        history.append(row)
        epochs_run += 1
        finished = (epoch + 1 == config.epochs) or (config.target_acc is not None and eval_acc >= config.target_acc)
        if placement.main:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch + 1, history, config, finished,
                            placement.device)
            _write_metrics(out, history, meta)
            if config.progress:
                print(_describe(row), flush=True)
        if placement.world > 1:
            dist.barrier()
    summary = {**meta, "rank": placement.rank, "lams_by_rank": _lams_by_rank(model, placement),
               "finished": finished, "epochs_done": len(history), "history": history,
               "final": history[-1] if history else None,
               "best_eval_acc": max((row["eval_acc"] for row in history), default=None)}
    if finished and placement.main:
        atomic_write(out / SUMMARY, json.dumps({k: v for k, v in summary.items() if k != "rank"}, indent=1).encode())
    return summary


def _lams_by_rank(model: SequenceModel, placement: Placement) -> list[list[float]]:
    """Every rank's λ values, gathered with all_gather: equal rows show the ranks agree."""
    lams = torch.tensor(list(model.lams().values()), dtype=torch.float64, device=placement.device)
    if placement.world == 1:
        return [lams.tolist()]
    gathered = [torch.empty_like(lams) for _ in range(placement.world)]
    dist.all_gather(gathered, lams)
    return [row.tolist() for row in gathered]


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

