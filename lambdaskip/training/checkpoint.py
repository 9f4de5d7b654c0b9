"""Checkpoints of a training run: everything needed to resume exactly, loadable with ``weights_only=True``."""
from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import torch

from lambdaskip.common import atomic_write
from lambdaskip.training.config import RENAMED_FIELDS, RESUMABLE_CHANGES, TrainConfig

CHECKPOINT = "checkpoint.pt"


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


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Raise ValueError when the checkpoint's config ``saved`` differs from ``config`` in a field that changes
    the result (former field names, :data:`RENAMED_FIELDS`, are read under their new names)."""
    saved = {RENAMED_FIELDS.get(k, k): v for k, v in saved.items()}
    current = asdict(config)
    changed = [f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in current
               if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if changed:
        raise ValueError(f"the checkpoint in {config.out} was written with a different configuration: "
                         f"{', '.join(changed)}; use a new --out or the same settings")
