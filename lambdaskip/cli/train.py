"""The ``lambdaskip train`` and ``lambdaskip sweep`` subcommands: parse the options into a
:class:`~lambdaskip.training.TrainConfig` (and a :class:`~lambdaskip.training.SweepConfig`), then call
:func:`lambdaskip.training.train` or :func:`lambdaskip.training.run_sweep` (imported when a command runs)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from lambdaskip.cli.flags import add_alias
from lambdaskip.common import output_lock
from lambdaskip.modules import ARCHS


def _checkpoint_arg(value: str) -> str | int:
    if value == "block":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes 'block' or a positive int, got {value!r}") from None


# TrainConfig fields settable from the command line: (flag, type, help). Defaults come from TrainConfig
# (or TrainConfig.paper_mqar with --paper-size); a flag left out keeps the default.
_FIELDS = [
    ("--depth", int, "blocks in the stack (default 2)"),
    ("--d-model", int, "token width (default 64)"),
    ("--nheads", int, "attention heads (default 2)"),
    ("--d-state", int, "SSM state size for mamba2 and s4d (default 16)"),
    ("--headdim", int, "Mamba-2 head dimension (default 16)"),
    ("--norm", str, "post-norm of every λ-skip: layernorm, rmsnorm, l2 or none (default layernorm)"),
    ("--position-std", float, "initial scale of the learned positions (default: 1 for mqar, 0.02 for image)"),
    ("--epochs", int, "epochs (default 6)"),
    ("--batch-size", int, "global batch over all ranks (default 64)"),
    ("--lr", float, "peak learning rate (default 2.15e-3)"),
    ("--weight-decay", float, "AdamW weight decay on matrices (default 0.1)"),
    ("--warmup-frac", float, "fraction of steps with linear warmup, then cosine decay (default 0.1)"),
    ("--clip-grad", float, "gradient-norm clipping, 0 disables (default 1.0)"),
    ("--target-acc", float, "stop once the evaluation accuracy reaches this fraction (default: all epochs)"),
    ("--seed", int, "seed of data, initialisation and data order (default 0)"),
    ("--eval-batch-size", int, "evaluation batch (default 256)"),
    ("--probe-batch", int, "evaluation sequences used for μ per layer (default 8)"),
    ("--device", str, "auto, cpu or cuda (default auto)"),
    ("--threads", int, "CPU threads per process, 0 = PyTorch's default; 1 is fastest for small models "
                       "(default 0)"),
    ("--checkpoint", _checkpoint_arg, "activation checkpointing: 'block' (every block) or K (every K blocks), "
                                      "recomputed in the backward; for deep stacks (default none)"),
    ("--tensorboard", str, "folder for live TensorBoard logs: loss, accuracy, every λ and per-layer μ per step, "
                           "μ's depth profile per epoch (needs the [tb] extra; default none)"),
]
_MQAR_FIELDS = [
    ("--vocab-size", int, "vocabulary; keys from the lower half, values from the upper (default 128)"),
    ("--seqlen", int, "sequence length (default 64)"),
    ("--num-pairs", int, "key-value pairs per sequence (default 8)"),
    ("--power-a", float, "power-law exponent of the query gaps (default 0.01)"),
    ("--filler", str, "filler tokens: zero or random (default zero)"),
    ("--num-train", int, "training sequences (default 20000)"),
    ("--num-test", int, "test sequences (default 1000)"),
]
_IMAGE_FIELDS = [
    ("--image", str, "'digits' (scikit-learn's 8x8 digits, an offline substitute) or a folder of CIFAR-10 "
                     "python batches for LRA-Image (default digits)"),
    ("--image-side", int, "digits: 8 (64 tokens) or 32 (upsampled, 1024 tokens) (default 8)"),
]
# Former spellings, still accepted (hidden from --help).
_ALIASES = [("--n-heads", "--nheads", int), ("--seq-len", "--seqlen", int)]


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _add_model_and_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=("mqar", "image"), help="mqar or image (sequence classification)")
    parser.add_argument("--arch", choices=ARCHS, default="attention",
                        help=f"mixer of every block: {', '.join(ARCHS)} (default %(default)s)")
    for option, kind, text in _FIELDS + _MQAR_FIELDS + _IMAGE_FIELDS:
        parser.add_argument(option, type=kind, default=None, help=text)
    for old, option, kind in _ALIASES:
        add_alias(parser, old, _dest(option), type=kind)
    parser.add_argument("--paper-size", action="store_true",
                        help="MQAR as in the paper: L=512, 64 pairs, vocab 8192, d=128, state 64, 100k/3k, 64 epochs")
    parser.add_argument("--no-mlp", action="store_true", help="blocks without the MLP sub-layer")
    parser.add_argument("--no-positions", action="store_true", help="no learned position embeddings")
    parser.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on GPU")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def config_from_args(args: argparse.Namespace, **overrides):
    """A validated TrainConfig from parsed arguments; ``overrides`` win over the arguments."""
    from lambdaskip.training import TrainConfig
    if args.paper_size and args.task != "mqar":
        raise ValueError("--paper-size applies to the mqar task only")
    values = {_dest(option): getattr(args, _dest(option)) for option, _, _ in _FIELDS + _MQAR_FIELDS + _IMAGE_FIELDS}
    values = {k: v for k, v in values.items() if v is not None}
    if str(values.get("norm", "")).lower() in ("none", "off"):
        values["norm"] = None
    values.update(task=args.task, arch=args.arch, mlp=not args.no_mlp, positions=not args.no_positions,
                  amp=not args.no_amp, progress=not args.quiet)
    values.update(overrides)
    config = TrainConfig.paper_mqar(**values) if args.paper_size else TrainConfig(**values)
    config.validate()
    if args.paper_size and (config.device == "cpu" or not _cuda()):
        print("lambdaskip: warning: --paper-size is sized for a GPU; on the CPU one epoch takes hours "
              "(use --device cuda, or smaller sizes)", file=sys.stderr)
    return config


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _fail(command: str, error: Exception) -> int:
    """Print ``error`` as one line; exit status 1 for a failure while running, 2 for bad input."""
    text = str(error).strip()
    print(f"lambdaskip {command}: error: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
    return 2 if isinstance(error, (ValueError, ImportError, FileNotFoundError)) else 1


def _run_train(args: argparse.Namespace) -> int:
    from lambdaskip.training import train
    from lambdaskip.training.distributed import leave_process_group
    completed, code = False, 0
    try:
        config = config_from_args(args, out=args.out, lam=args.lam, learnable=args.learnable, parallel=args.parallel)
        summary = train(config, resume=not args.no_resume)
        completed = True
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        code = _fail("train", error)
    finally:
        leave_process_group(completed)
    final = summary["final"] if completed else None
    if final is not None and summary["rank"] == 0:
        state = "finished" if summary["finished"] else "stopped"
        print(f"{state} after {summary['epochs_done']} epochs: eval accuracy {final['eval_acc']:.4f} "
              f"(best {summary['best_eval_acc']:.4f}); files in {args.out}")
    return _end_rank(code)


def _end_rank(code: int) -> int:
    """``code``; a rank of a torchrun job exits here (see :func:`~lambdaskip.training.distributed.exit_rank`)."""
    from lambdaskip.training.distributed import exit_rank, joined_process_group
    if joined_process_group():
        exit_rank(code)
    return code


def add_train_subcommand(commands) -> None:
    """Register ``lambdaskip train`` on an argparse sub-parser collection."""
    parser = commands.add_parser("train", help="train one model on MQAR or image-sequence classification",
                                 description="Train one λ-skip model; under torchrun it runs with DDP or FSDP2 "
                                             "(--parallel).")
    _add_model_and_task_arguments(parser)
    parser.add_argument("--lam", type=float, default=1.0, help="initial λ of every skip (default %(default)g)")
    parser.add_argument("--learnable", action="store_true", help="λ is a trainable parameter per skip")
    parser.add_argument("--out", required=True, help="run folder (checkpoint, metrics, summary)")
    parser.add_argument("--no-resume", action="store_true", help="fail instead of resuming an existing run")
    parser.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                        help="under torchrun: ddp replicates the model on every rank, fsdp shards it per block "
                             "(FSDP2) and writes a sharded checkpoint.dcp folder; one process without torchrun "
                             "(default %(default)s)")
    parser.set_defaults(run=_run_train)


def sweep_config_from_args(args: argparse.Namespace):
    """The :class:`~lambdaskip.training.SweepConfig` of parsed ``lambdaskip sweep`` arguments."""
    from lambdaskip.training import SweepConfig
    # left out, --lrs and --seeds take SweepConfig's defaults (the paper's lr grid, seeds 0 1 2); a --lr
    # without --lrs sweeps that one learning rate
    given = {"lrs": args.lrs or ([args.lr] if args.lr is not None else None), "seeds": args.seeds}
    return SweepConfig(out=args.out, archs=args.archs, lams=args.lams, learnable_inits=args.learnable_inits,
                       log_mu=args.log_mu, **{k: v for k, v in given.items() if v is not None})


def _run_sweep(args: argparse.Namespace) -> int:
    from lambdaskip.training import run_sweep
    from lambdaskip.training.distributed import leave_process_group
    completed, code = False, 0
    try:
        sweep = sweep_config_from_args(args)
        base = config_from_args(args, out=args.out)
        with output_lock(args.out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
            run_sweep(sweep, base)
        completed = True
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        code = _fail("sweep", error)
    finally:
        leave_process_group(completed)
    return _end_rank(code)


def add_sweep_subcommand(commands) -> None:
    """Register ``lambdaskip sweep``: every (arch, λ setting, lr, seed) run, then one table and plots."""
    parser = commands.add_parser("sweep", help="train over λ, learning rate, arch and seed; write a table and plots",
                                 description="Runs (or resumes) one training run per combination into OUT/runs/, "
                                             "then writes OUT/results.csv, OUT/results.md and PNG plots.")
    _add_model_and_task_arguments(parser)
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=None,
                        help="architectures (default: --arch)")
    parser.add_argument("--lams", type=float, nargs="*", default=[-2.0, -1.0, 0.0, 1.0, 2.0],
                        help="fixed λ values (default %(default)s)")
    parser.add_argument("--learnable-inits", type=float, nargs="*", default=[-1.0, 1.0],
                        help="initial values of learnable λ (default %(default)s)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="learning rates, swept per arch and λ setting and the best reported (default: the "
                             "paper's logspace(-4, -2, 4) = 1e-4 4.64e-4 2.15e-3 1e-2; with --lr: that one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    parser.add_argument("--out", required=True, help="sweep folder")
    parser.add_argument("--log-mu", action="store_true", help="mu_over_training.png with a log y axis")
    parser.set_defaults(run=_run_sweep)


def add_subcommands(commands) -> None:
    """Register ``train`` and ``sweep``."""
    add_train_subcommand(commands)
    add_sweep_subcommand(commands)
