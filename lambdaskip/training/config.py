"""The trainer's configuration: :class:`TrainConfig`, everything that defines one run."""
from __future__ import annotations

import math
from dataclasses import InitVar, dataclass
from pathlib import Path

from lambdaskip.common import NORMS, renamed_argument
from lambdaskip.modules import ARCHS
from lambdaskip.training.data.mqar import MQARConfig

TASKS = ("mqar", "image")
# Fields that may differ between a run and its resumption (they change nothing that is computed).
RESUMABLE_CHANGES = ("out", "progress", "device", "threads", "parallel", "tensorboard")
PARALLEL = ("ddp", "fsdp")
# Former field names, as older checkpoints and sweep records store them.
RENAMED_FIELDS = {"n_heads": "nheads", "seq_len": "seqlen"}


@dataclass
class TrainConfig:
    """Everything that defines a run. ``batch_size`` is the global batch over all ranks.

    ``out``, ``progress``, ``device``, ``threads`` (CPU threads of this process, 0 = PyTorch's default;
    1 is far faster for small models on a busy or small machine), ``tensorboard`` (a folder for live
    TensorBoard scalars, see :mod:`~lambdaskip.training.tensorboard_log`) and ``parallel`` (under torchrun:
    "ddp" replicates the model, "fsdp" shards it with FSDP2; one process without torchrun) do not change the
    result beyond rounding and may differ when a run is resumed (the checkpoint's kind, sharded under FSDP,
    must match); every other field must match its checkpoint. ``position_std`` is the initial
    scale of the learned positions; None: 1 for MQAR (the token embedding's scale: at 0.02 the positions are
    drowned under the tokens that a λ = 1 skip carries through every block, and λ = 1 stays on MQAR's
    plateau, as it needs a previous-token head), 0.02 for images (not re-measured). ``n_heads=`` and ``seq_len=`` are
    accepted as deprecated spellings of ``nheads`` and ``seqlen``."""
    task: str = "mqar"
    out: str = "runs/mqar"
    # MQAR
    vocab_size: int = 128
    seqlen: int = 64
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
    nheads: int = 2
    d_state: int = 16
    headdim: int = 16
    positions: bool = True
    position_std: float | None = None
    checkpoint: str | int | None = None
    # optimisation
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2.15e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    clip_grad: float = 1.0
    target_acc: float | None = None
    seed: int = 0
    eval_batch_size: int = 256
    probe_batch: int = 8
    amp: bool = True
    device: str = "auto"
    parallel: str = "ddp"
    threads: int = 0
    progress: bool = True
    tensorboard: str | None = None  # a folder: live TensorBoard scalars (tensorboard_log.py; extra [tb])
    # deprecated spellings
    n_heads: InitVar[int | None] = None
    seq_len: InitVar[int | None] = None

    def __post_init__(self, n_heads, seq_len):
        self.nheads = renamed_argument("TrainConfig", "n_heads", "nheads", n_heads, self.nheads)
        self.seqlen = renamed_argument("TrainConfig", "seq_len", "seqlen", seq_len, self.seqlen)

    @classmethod
    def paper_mqar(cls, **overrides) -> "TrainConfig":
        """The paper's MQAR setting (zoology): L = 512, 64 pairs, vocab 8192, d = 128, state 64, 2 layers,
        100k/3k examples, global batch 64, weight decay 0.1, 10 % warmup, 64 epochs."""
        paper = MQARConfig.paper()
        base = dict(task="mqar", vocab_size=paper.vocab_size, seqlen=paper.seqlen, num_pairs=paper.num_pairs,
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
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)} or none, got {self.norm!r}")
        positive = ("depth", "d_model", "nheads", "d_state", "headdim", "epochs", "batch_size", "eval_batch_size",
                    "probe_batch")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lam", "lr", "weight_decay", "warmup_frac", "clip_grad"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.position_std is not None and not (math.isfinite(self.position_std) and self.position_std > 0):
            raise ValueError(f"position_std must be None or positive, got {self.position_std!r}")
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
        if self.checkpoint is not None and self.checkpoint != "block" and (
                isinstance(self.checkpoint, bool) or not isinstance(self.checkpoint, int) or self.checkpoint < 1):
            raise ValueError(f"checkpoint must be None, 'block' or a positive int, got {self.checkpoint!r}")
        if self.arch == "attention" and self.d_model % self.nheads:
            raise ValueError(f"d_model={self.d_model} must be divisible by nheads={self.nheads}")
        if self.arch == "mamba2" and (2 * self.d_model) % self.headdim:
            raise ValueError(f"2*d_model={2 * self.d_model} must be divisible by headdim={self.headdim}")
        if self.arch == "s4d" and self.d_state % 2:
            raise ValueError(f"d_state must be even for s4d, got {self.d_state}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be a non-negative int (0: PyTorch's default), got {self.threads!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def position_scale(self) -> float:
        """``position_std``, or its default for the task (1 for MQAR, 0.02 for images)."""
        if self.position_std is not None:
            return self.position_std
        return 1.0 if self.task == "mqar" else 0.02

    def mqar(self) -> MQARConfig:
        return MQARConfig(vocab_size=self.vocab_size, seqlen=self.seqlen, num_pairs=self.num_pairs,
                          power_a=self.power_a, filler=self.filler, num_train=self.num_train,
                          num_test=self.num_test, seed=self.seed)
