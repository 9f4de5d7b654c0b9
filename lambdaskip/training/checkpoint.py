"""Checkpoints of a training run: everything needed to resume exactly, loadable with ``weights_only=True``,
and verified before loading.

Beside ``checkpoint.pt`` lies ``checkpoint.pt.sha256``: the SHA-256 of the checkpoint being written and of the
one it replaces (both files are replaced atomically, the checksums first), so a process killed between the
two renames still leaves a checkpoint whose checksum is listed, while a flipped bit, a truncated or an empty
file, or random bytes are refused with :class:`CorruptCheckpoint` before ``torch.load`` sees them.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import torch

from lambdaskip.common import atomic_write
from lambdaskip.training.config import RENAMED_FIELDS, RESUMABLE_CHANGES, TrainConfig

CHECKPOINT = "checkpoint.pt"
CHECKSUM_SUFFIX = ".sha256"
_KEYS = ("model", "optimizer", "scheduler", "epoch", "history", "config", "finished", "rng")


class CorruptCheckpoint(ValueError):
    """A checkpoint that fails verification; the message says why and what to do."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"checkpoint {path} is corrupt ({reason}): remove it or use another --out")


def checksum_path(path: str | Path) -> Path:
    """Where the checksums of the checkpoint at ``path`` are kept."""
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def _listed_checksums(path: Path) -> list[str]:
    try:
        return checksum_path(path).read_text().split()[::2]  # "<sha256>  <name>" lines
    except (FileNotFoundError, UnicodeDecodeError):
        return []


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
    payload = buffer.getvalue()
    path = Path(path)
    current = [hashlib.sha256(path.read_bytes()).hexdigest()] if path.exists() else []
    current = [digest for digest in current if digest in _listed_checksums(path)]  # a verified one only
    lines = [f"{digest}  {path.name}" for digest in [hashlib.sha256(payload).hexdigest(), *current]]
    atomic_write(checksum_path(path), ("\n".join(lines) + "\n").encode())
    atomic_write(path, payload)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, verified against its checksum file, then loaded with
    ``weights_only=True`` on the CPU. Raises :class:`CorruptCheckpoint` (a ValueError) when it fails."""
    path = Path(path)
    payload = path.read_bytes()
    if not payload:
        raise CorruptCheckpoint(path, "empty file")
    listed = _listed_checksums(path)
    if not listed:
        raise CorruptCheckpoint(path, f"no checksum in {checksum_path(path).name}")
    if hashlib.sha256(payload).hexdigest() not in listed:
        raise CorruptCheckpoint(path, f"its SHA-256 does not match {checksum_path(path).name}")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's message may advise weights_only=False: never show it
        raise CorruptCheckpoint(path, f"unreadable by torch.load: {type(err).__name__}") from None
    if not isinstance(state, dict) or not set(_KEYS) <= set(state):
        raise CorruptCheckpoint(path, "not a lambdaskip training checkpoint")
    return state


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
