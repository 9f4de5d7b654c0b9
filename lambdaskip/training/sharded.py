"""FSDP2 for the trainer (``--parallel fsdp`` under torchrun): the model sharded per block, and its sharded,
verified checkpoints; the loop saves and loads either kind of checkpoint through this module
(:func:`save_run_checkpoint`, :func:`load_run_checkpoint`, :func:`load_run_weights`).

Sharding (:func:`shard_model`): ``torch.distributed.fsdp.fully_shard`` on every block of the stack, then on the
root (embedding, positions, head). Every parameter, its gradient and its AdamW moments are split on dim 0 over
the N ranks (``Shard(0)`` DTensors); a block's parameters are all-gathered just before its forward, and again
for its backward (or its recomputation under ``--checkpoint``), then freed. Gradients are reduce-scattered
with the mean over the ranks, like DDP's all-reduce. Fixed λ (buffers) stay whole on every rank. A learnable
λ is a 0-d parameter, which ``fully_shard`` refuses (torch 2.13: "fully_shard doesn't support scalar
parameters"): it becomes a (1,) parameter first, the same single λ for :class:`~lambdaskip.modules.LambdaSkip`
and ``lambda_norm``. On CUDA with ``amp``, ``MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)``: bf16 compute and all-gathers, fp32 gradient reduction and fp32 sharded master
weights; on the CPU plain float32.

Checkpoint (:data:`SHARDED_CHECKPOINT`, a folder): ``.metadata`` and ``__<rank>_0.distcp`` written by
``torch.distributed.checkpoint`` from ``get_state_dict`` (model and optimizer, each rank its own shard),
``train_state.pt`` (scheduler, epoch, history, config, finished and every rank's RNG state; loadable with
``weights_only=True``) and ``manifest.sha256`` (the SHA-256 of each of those files). All ranks write into a
temporary sibling folder, rank 0 adds the manifest and renames it over the previous one
(:func:`~lambdaskip.common.staged_folder`), so the folder holds one whole checkpoint or the previous one. Before
loading, rank 0 checks every file against the manifest and all ranks raise the same
:class:`~lambdaskip.training.checkpoint.CorruptCheckpoint` when one fails. DCP reshards on load, so a run
may resume on another number of ranks (rank r takes RNG state r mod the saved number).

``torch.distributed.fsdp`` and ``.checkpoint`` are imported when a sharded run uses them (seconds of import).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lambdaskip.common import atomic_write, output_lock, staged_folder
from lambdaskip.training.checkpoint import CHECKPOINT, CorruptCheckpoint, load_checkpoint, save_checkpoint
from lambdaskip.training.distributed import Placement

SHARDED_CHECKPOINT = "checkpoint.dcp"
TRAIN_STATE, MANIFEST = "train_state.pt", "manifest.sha256"
_KEYS = ("scheduler", "epoch", "history", "config", "finished", "rng")


def shard_model(model: nn.Module, placement: Placement, amp: bool) -> None:
    """Apply FSDP2 in place to a :class:`~lambdaskip.training.SequenceModel`: each block, then the root.
    Call before building the optimizer (the parameters become DTensors)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    for block in model.stack.blocks:
        for skip in (block.skip, block.mlp_skip):
            if skip is not None and isinstance(skip.lam, nn.Parameter) and skip.lam.dim() == 0:
                skip.lam = nn.Parameter(skip.lam.detach().reshape(1))
    policy = MixedPrecisionPolicy()
    if amp and placement.device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.stack.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def _from_main(value, placement: Placement):
    """Rank 0's ``value`` (a picklable object) on every rank."""
    if placement.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def run_folder(out: Path, placement: Placement):
    """The folder the files of an epoch go to: ``out``, or on the first save a temporary sibling renamed to
    ``out`` when the block ends (rank 0 does the renaming). Rank 0 gets it; under FSDP every rank gets the
    same path (all write shards into it); other ranks get None."""
    if placement.main:
        with contextlib.nullcontext(str(out)) if out.is_dir() else staged_folder(out) as folder:
            yield Path(_from_main(folder, placement) if placement.fsdp else folder)
    else:
        yield Path(_from_main(None, placement)) if placement.fsdp else None


def run_checkpoint(out: Path, placement: Placement) -> tuple[Path, bool]:
    """This run's checkpoint path (``checkpoint.pt``, or ``checkpoint.dcp`` under FSDP) and whether it exists,
    as rank 0 sees it after restoring a checkpoint folder moved aside by a kill between two renames. Raises
    ValueError when ``out`` holds the other kind (a DDP or one-process run resumed with FSDP, or back)."""
    path, other = (out / SHARDED_CHECKPOINT, out / CHECKPOINT) if placement.fsdp else (
        out / CHECKPOINT, out / SHARDED_CHECKPOINT)
    exists = None
    if placement.main:
        if placement.fsdp and out.is_dir():
            with output_lock(path, flag="checkpoint"):  # puts back a moved-aside copy, drops temporaries
                pass
        exists = (path.exists(), other.exists())
    exists, other_exists = _from_main(exists, placement)
    if other_exists and not exists:
        how = "without --parallel fsdp" if placement.fsdp else "with --parallel fsdp under torchrun"
        raise ValueError(f"{out} holds a {other.name} checkpoint: resume it {how}, or choose another --out")
    return path, exists


def save_run_checkpoint(folder: Path | None, model, optimizer, scheduler, epoch: int, history: list[dict], config,
                        finished: bool, placement: Placement) -> None:
    """The run's checkpoint in ``folder`` (from :func:`run_folder`): ``checkpoint.dcp`` written by all ranks
    under FSDP, else ``checkpoint.pt`` written by rank 0."""
    if placement.fsdp:
        save_sharded(folder / SHARDED_CHECKPOINT, model, optimizer, scheduler, epoch, history, config, finished,
                     placement)
    elif placement.main:
        save_checkpoint(folder / CHECKPOINT, model, optimizer, scheduler, epoch, history, config, finished,
                        placement.device)


def load_run_checkpoint(path: Path, placement: Placement) -> dict:
    """The verified checkpoint at ``path`` (from :func:`run_checkpoint`): under FSDP its training state only
    (the weights follow with :func:`load_run_weights` once the model is sharded), else the whole file."""
    return load_sharded_state(path, placement) if placement.fsdp else load_checkpoint(path)


def load_run_weights(checkpoint: dict, path: Path, model, optimizer, placement: Placement) -> None:
    """Load model and optimizer state of the checkpoint ``checkpoint`` read from ``path``."""
    if placement.fsdp:
        load_sharded_weights(path, model, optimizer)
    else:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])


def save_sharded(path: Path, model, optimizer, scheduler, epoch: int, history: list[dict], config, finished: bool,
                 placement: Placement) -> None:
    """Write the sharded checkpoint folder ``path`` (all ranks call this; see the module docstring)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(model, optimizer)
    cuda_rng = torch.cuda.get_rng_state(placement.device) if placement.device.type == "cuda" else torch.zeros(
        0, dtype=torch.uint8)
    rngs = [{"torch": torch.get_rng_state(), "cuda": cuda_rng}] * placement.world
    dist.all_gather_object(rngs, rngs[0])
    with contextlib.ExitStack() as stack:
        staged = None
        if placement.main:
            stack.enter_context(output_lock(path, flag="checkpoint"))
            staged = stack.enter_context(staged_folder(path))
        staged = Path(_from_main(staged, placement))
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=staged)
        if placement.main:
            state = {"scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "config": asdict(config),
                     "finished": finished, "rng": rngs}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write(staged / TRAIN_STATE, buffer.getvalue())
            lines = [f"{_sha256(file)}  {file.name}" for file in sorted(staged.iterdir())]
            atomic_write(staged / MANIFEST, ("\n".join(lines) + "\n").encode())
    dist.barrier()  # the folder is in place before any rank goes on


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sharded(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` fails its manifest, or None when every listed file matches."""
    try:
        lines = [line.split() for line in (path / MANIFEST).read_text().splitlines() if line.strip()]
    except (FileNotFoundError, UnicodeDecodeError):
        return f"no readable {MANIFEST}"
    if any(len(line) != 2 for line in lines) or not {".metadata", TRAIN_STATE} <= {name for _, name in lines}:
        return f"{MANIFEST} does not list a whole checkpoint"
    for digest, name in lines:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"the SHA-256 of {name} does not match {MANIFEST}"
    return None


def load_sharded_state(path: Path, placement: Placement) -> dict:
    """The verified checkpoint folder's training state (scheduler, epoch, history, config, finished, and this
    rank's ``rng``); the weights follow with :func:`load_sharded_weights`. Raises CorruptCheckpoint on all
    ranks when rank 0's verification fails."""
    reason = _from_main(verify_sharded(path) if placement.main else None, placement)
    if reason is not None:
        raise CorruptCheckpoint(path, reason)
    try:
        state = torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - as load_checkpoint: never show torch's weights_only advice
        raise CorruptCheckpoint(path, f"{TRAIN_STATE} unreadable by torch.load: {type(err).__name__}") from None
    if not isinstance(state, dict) or not set(_KEYS) <= set(state):
        raise CorruptCheckpoint(path, "not a lambdaskip training checkpoint")
    state["rng"] = state["rng"][placement.rank % len(state["rng"])]
    return state


def load_sharded_weights(path: Path, model, optimizer) -> None:
    """Load the model and optimizer shards of the (verified) checkpoint folder ``path`` into the sharded
    ``model`` and its ``optimizer`` (all ranks; DCP reads the pieces each rank's shards need)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
