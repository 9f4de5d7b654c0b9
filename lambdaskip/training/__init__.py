"""The trainer (``lambdaskip train`` / ``lambdaskip sweep``), one responsibility a module:

- :mod:`.config`: :class:`TrainConfig`; :mod:`.data`: MQAR and image-sequence datasets;
- :mod:`.model`: :class:`SequenceModel` and the model of a run; :mod:`.optim`: AdamW, schedule, data order;
- :mod:`.loop`: :func:`train` (evaluation, μ telemetry, metrics files); :mod:`.checkpoint`: exact resume;
- :mod:`.distributed`: one process or one rank under torchrun; :mod:`.sharded`: FSDP2 and its sharded
  checkpoints; :mod:`.sweep`: :func:`run_sweep`.

Library use: ``train(TrainConfig(task="mqar", arch="mamba2", out="runs/m"))``; functions take config
objects, never command-line arguments.
"""
from lambdaskip.training.checkpoint import CHECKPOINT, CorruptCheckpoint, load_checkpoint, save_checkpoint
from lambdaskip.training.config import TASKS, TrainConfig
from lambdaskip.training.data import load_data
from lambdaskip.training.finite import TrainingDiverged
from lambdaskip.training.loop import METRICS_CSV, METRICS_JSON, SUMMARY, train
from lambdaskip.training.measure import TrainingMu, evaluate, probe_mu
from lambdaskip.training.model import SequenceModel, build_model
from lambdaskip.training.optim import WarmupCosine, build_optimizer, epoch_order
from lambdaskip.training.sweep import SweepConfig, run_sweep

__all__ = [
    "CHECKPOINT", "METRICS_CSV", "METRICS_JSON", "SUMMARY", "TASKS", "SequenceModel", "SweepConfig", "TrainConfig",
    "TrainingMu", "WarmupCosine", "build_model", "build_optimizer", "epoch_order", "evaluate", "load_checkpoint",
    "load_data", "probe_mu", "run_sweep", "save_checkpoint", "train", "CorruptCheckpoint", "TrainingDiverged",
]
