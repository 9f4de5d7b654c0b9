"""``lambdaskip collapse``: parse the options into a :class:`~lambdaskip.studies.collapse.StudyConfig`,
then call the study (:mod:`lambdaskip.studies.collapse`) and print its table."""
from __future__ import annotations

import argparse
import sys

from lambdaskip.common import OutputError, output_lock
from lambdaskip.modules import ARCHS
from lambdaskip.studies import collapse as study
from lambdaskip.studies.collapse import plots

# StudyConfig fields taken from the command line (an option left out keeps the preset's or the default value).
_FIELDS = ("archs", "depth", "d_model", "seqlen", "lams", "norms", "gating", "seeds", "excerpts", "input", "text",
           "hf_tokenizer", "rate_a", "metric", "collapse_threshold", "device", "threads")


def _norm_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "off") else value.lower()


def _gating_arg(value: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"gating takes on or off, got {value!r}")
    return value.lower() == "on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdaskip collapse``; unset options take the preset's or the default value."""
    parser.add_argument("--preset", choices=sorted(study.PRESETS),
                        help="lambda-sweep (Figs. 1-2), gating (Fig. 3) or deep (depth 1024, every architecture)")
    parser.add_argument("--archs", nargs="*", metavar="ARCH", help=f"among {', '.join(ARCHS)} (default: all)")
    parser.add_argument("--depth", type=int, help="layers (default 32; 64 with --preset lambda-sweep)")
    parser.add_argument("--d-model", type=int, help="token width (default 64)")
    parser.add_argument("--seqlen", type=int, help="tokens per sequence (default 128)")
    parser.add_argument("--lams", nargs="*", type=float, metavar="LAM",
                        help=f"λ values (default {' '.join(f'{v:g}' for v in study.DEFAULT_LAMS)})")
    parser.add_argument("--norm", nargs="*", type=_norm_arg, dest="norms", metavar="NORM",
                        help="λ-skip norm(s): layernorm (default), rmsnorm, l2, none")
    parser.add_argument("--gating", nargs="*", type=_gating_arg, metavar="on|off",
                        help="Mamba-2 gate setting(s) (default off, as in the paper's Fig. 1)")
    parser.add_argument("--seeds", nargs="*", type=int, metavar="SEED", help="model/embedding seeds (default 0)")
    parser.add_argument("--excerpts", type=int,
                        help="sequences per batch (default 8); at most the windows the text has, else an error "
                             "(the bundled sample gives 35 at --seqlen 128)")
    parser.add_argument("--input", choices=study.INPUTS, help="text (default) or gaussian tokens")
    parser.add_argument("--text", metavar="FILE", help="your own UTF-8 text (passages split at blank lines)")
    parser.add_argument("--hf-tokenizer", metavar="NAME", help="a locally cached Hugging Face tokenizer")
    parser.add_argument("--hf-model", metavar="PATH_OR_NAME",
                        help="study a local transformers model (Mamba-2, GPT-2, BERT, ALBERT) retrofitted with "
                             "λ-skips instead of random stacks; never downloads")
    parser.add_argument("--rate-a", type=float, help="Theorem 4.1's rate a in (0, 1) (default 0.99)")
    parser.add_argument("--metric", choices=study.RECORDED, help="metric of the per-layer plot (default normalized_mu)")
    parser.add_argument("--collapse-threshold", type=float, metavar="MU",
                        help="normalised μ below which a layer counts as collapsed, for the depth-of-collapse "
                             "summary (default 0.01)")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads during the run (default 1)")
    parser.add_argument("--out", default="collapse_out", help="output directory (default ./collapse_out)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> study.StudyConfig:
    """Defaults, overridden by the preset, overridden by the options given."""
    return study.StudyConfig.from_preset(args.preset, **{name: getattr(args, name) for name in _FIELDS
                                                         if getattr(args, name) is not None})


def run(args: argparse.Namespace) -> int:
    """Run the study from parsed arguments; returns the exit status (2 with a one-line error). ``--out`` is
    locked, and checked before the run; it is replaced whole after it."""
    try:
        config = config_from_args(args)
        config.validate()
        with output_lock(args.out):
            study.check_out_dir(args.out, args.overwrite)  # refuse before the run
            plots.load()
            if args.hf_model:
                results = study.run_hf_study(config, args.hf_model, args.out, args.overwrite,
                                             progress=not args.no_progress)
            else:
                results = study.run_study(config, progress=not args.no_progress)
                written = study.write_outputs(results, args.out, args.overwrite)
    except (study.StudyError, study.TextInputError, OutputError) as err:
        print(f"lambdaskip collapse: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"lambdaskip collapse: error: writing {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # a failure while running (out of memory, a backend error): one line, status 1
        print(f"lambdaskip collapse: error: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}",
              file=sys.stderr)
        return 1
    if args.hf_model:
        print(study.format_hf_table(results))
        print(f"wrote {args.out}")
        return 0
    print(study.format_table(results))
    if not plots.available():
        print("matplotlib is not installed: PNG plots skipped (pip install 'lambdaskip[plot]')")
    print("wrote " + ", ".join(written))
    return 0


def add_subcommand(commands) -> None:
    """Register ``lambdaskip collapse`` on an argparse sub-parser collection."""
    parser = commands.add_parser(
        "collapse", help="rank-collapse depth study: μ per layer for a λ sweep, plots, Theorem 4.1 verdict",
        description="Run random-init attention / Mamba-2 / S4D λ-skip stacks on text (bundled sample by "
                    "default) and record μ per layer for each λ; writes CSV, JSON and PNGs to --out.")
    add_arguments(parser)
    parser.set_defaults(run=run)
