"""Live TensorBoard logging of a training run (``lambdaskip train … --tensorboard DIR``, extra ``[tb]``).

Per training step (x axis: the global step, 1-based), in the run folder ``DIR``:

- ``train/loss``, ``train/acc`` (the step's batch; under DDP the main rank's shard), ``train/lr``;
- ``lambda/<name>``: every λ, named as the metrics.csv columns (``lam0``, ``lam0_mlp``, …);
- ``train_mu/layer<k>``: raw μ of block k's output during that step (the λ-skips' telemetry, k = 1 … depth).

Per epoch (x axis: the global step at the epoch's end): ``eval/loss``, ``eval/acc``, ``test/…`` where the task
has a test set, ``train/epoch_loss``. And the **depth profile**: one TensorBoard run per epoch,
``DIR/depth_profile/epoch_<e>``, holding ``depth_profile/normalized_mu`` (the probe's normalised μ on the
fixed evaluation batch, x = layer 0 … depth) and ``depth_profile/train_mu`` (the epoch's mean raw μ, x = layer
1 … depth). TensorBoard draws runs that share a tag in one chart, so the chart shows μ against depth with
one line per epoch (toggled in the run selector, values on hover): 256 layers read as a curve, where a
histogram would lose the layer order and a figure per epoch would need matplotlib and give no values.
"""
from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path

HINT = "--tensorboard needs the tensorboard package: pip install 'lambdaskip[tb]' (or pip install tensorboard)"
PROFILE = "depth_profile"


def require_tensorboard() -> None:
    """Raise ImportError with a one-line install hint when the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError(HINT)


def summary_writer(log_dir: str, purge_step: int | None = None):
    """``torch.utils.tensorboard.SummaryWriter(log_dir, purge_step=…)``, or ImportError with the install hint."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)


class TensorBoardLog:
    """Writes a run's scalars under ``log_dir``.

    Args:
        log_dir: the TensorBoard run folder (created by the writer).
        resumed_at: the global step a resumed run restarts after (0: a new run); TensorBoard drops what an
            interrupted run had logged past it (``purge_step``), so a replayed step is not drawn twice.
        writer_factory: ``(log_dir, purge_step) -> writer`` with ``add_scalar(tag, value, step)``,
            ``flush()`` and ``close()``; None: :func:`summary_writer` (tests pass a recording fake).
    """

    def __init__(self, log_dir: str, resumed_at: int = 0, writer_factory: Callable[..., object] | None = None):
        self.log_dir, self.factory = Path(log_dir), writer_factory or summary_writer
        self.writer = self.factory(str(self.log_dir), purge_step=resumed_at + 1 if resumed_at else None)

    def step(self, step: int, loss: float, acc: float, lr: float, lams: dict[str, float],
             mus: Sequence[float]) -> None:
        """One training step: loss, accuracy, learning rate, every λ and μ of every block's output."""
        add = self.writer.add_scalar
        add("train/loss", loss, step)
        add("train/acc", acc, step)
        add("train/lr", lr, step)
        for name, value in lams.items():
            add(f"lambda/{name}", value, step)
        for layer, value in enumerate(mus, start=1):
            add(f"train_mu/layer{layer}", value, step)

    def epoch(self, row: dict) -> None:
        """One epoch's metrics row (as in metrics.csv): evaluation scalars, then the depth profile run."""
        step = row["step"]
        for key, tag in (("train_loss", "train/epoch_loss"), ("eval_loss", "eval/loss"), ("eval_acc", "eval/acc"),
                         ("test_loss", "test/loss"), ("test_acc", "test/acc")):
            if key in row:
                self.writer.add_scalar(tag, row[key], step)
        self.writer.flush()
        profile = self.factory(str(self.log_dir / PROFILE / f"epoch_{row['epoch']:03d}"))
        for prefix, tag in (("mu", "normalized_mu"), ("train_mu", "train_mu")):
            for key, value in row.items():
                match = re.fullmatch(rf"{prefix}(\d+)", key)
                if match:
                    profile.add_scalar(f"{PROFILE}/{tag}", value, int(match.group(1)))
        profile.close()

    def close(self) -> None:
        self.writer.close()
