"""Finite checks of a training run: a run whose loss, parameters or λ turn NaN or infinite stops at once
(:class:`TrainingDiverged`) instead of training on to a "finished" garbage run.

Cost: the loss is checked every step on the Python float the loop already takes for its running sum (no
extra device synchronisation); parameters, buffers (fixed λ) and the epoch's losses once per epoch, before
the checkpoint is written, and the model after every checkpoint load (one reduction, one synchronisation).
"""
from __future__ import annotations

import math

import torch

from lambdaskip.training.distributed import whole


class TrainingDiverged(RuntimeError):
    """The run produced a non-finite value; its last good checkpoint is kept and it is not marked finished."""


def check_loss(value: float, epoch: int, step: int) -> None:
    """Raise :class:`TrainingDiverged` when the training loss of (1-based) ``epoch``, ``step`` is not finite."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged: the loss is {value} at epoch {epoch}, step {step}; "
                               f"lower --lr or keep --clip-grad > 0")


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors of ``state`` (a state dict) holding NaN or ±inf. A tensor sharded by FSDP
    (a DTensor) is checked on every rank's shard, combined over the ranks: all ranks call this together."""
    names = [name for name, t in state.items() if torch.is_tensor(t) and t.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([whole(torch.isfinite(state[name]).all()) for name in names]).tolist()
    return [name for name, ok in zip(names, finite) if not ok]


def check_model(model: torch.nn.Module, where: str) -> None:
    """Raise :class:`TrainingDiverged` naming the first parameters or buffers (λ included) that are not
    finite; ``where`` says when ("after epoch 3", "in the checkpoint ...")."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingDiverged(f"training diverged: non-finite values {where} in {', '.join(bad[:3])}{more}")


def check_row(row: dict, where: str) -> None:
    """Raise :class:`TrainingDiverged` when a logged number of ``row`` (losses, λ) is not finite."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)
           and (k.endswith("loss") or k.startswith("lam"))]
    if bad:
        raise TrainingDiverged(f"training diverged: {', '.join(f'{k} = {row[k]}' for k in bad)} {where}")
