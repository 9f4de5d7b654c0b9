"""The ``lambdaskip`` console script (also ``python -m lambdaskip``)."""
from __future__ import annotations

import argparse
import sys

from lambdaskip.experiments import collapse as collapse_study
from lambdaskip.experiments.commands import add_training_subcommands


def _demo(args: argparse.Namespace) -> int:
    import torch

    from lambdaskip.metrics import CollapseProbe
    from lambdaskip.modules import build_stack

    generator = torch.Generator().manual_seed(args.seed)
    y0 = torch.randn(2, args.seqlen, args.d_model, generator=generator)
    print(f"normalised μ per layer (depth {args.depth}, d_model {args.d_model}, seqlen {args.seqlen}, layernorm)")
    for arch in ("attention", "mamba2", "s4d"):
        kwargs = {"headdim": 16, "d_state": 16} if arch == "mamba2" else {}
        for lam in args.lams:
            stack = build_stack(arch, args.depth, args.d_model, lam=lam, seed=args.seed, **kwargs)
            with torch.no_grad(), CollapseProbe(stack.blocks, metrics=("normalized_mu",)) as probe:
                stack(y0)
            trajectory = probe.trajectory("normalized_mu").mean(dim=1)
            cells = " ".join(f"{v:.3f}" for v in trajectory.tolist())
            print(f"{arch:>9} λ={lam:>5g}: {cells}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdaskip", description="λ-skip layers and rank-collapse studies")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="print normalised μ per layer for attention, Mamba-2 and S4D stacks")
    demo.add_argument("--depth", type=int, default=8)
    demo.add_argument("--d-model", type=int, default=32)
    demo.add_argument("--seqlen", type=int, default=64)
    demo.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    collapse = commands.add_parser(
        "collapse", help="rank-collapse depth study: μ per layer for a λ sweep, plots, Theorem 4.1 verdict",
        description="Run random-init attention / Mamba-2 / S4D λ-skip stacks on text (bundled sample by "
                    "default) and record μ per layer for each λ; writes CSV, JSON and PNGs to --out.")
    collapse_study.add_arguments(collapse)
    collapse.set_defaults(run=collapse_study.main)
    add_training_subcommands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
