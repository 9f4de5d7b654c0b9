"""Autotuning configurations of the SSD kernels: a small set on a GPU, exactly one under the interpreter.

Triton's CPU interpreter cannot time candidates (an autotuner with more than one config raises there),
so each kernel names the single configuration it runs with when ``TRITON_INTERPRET=1``.
"""
import os

import triton


def interpreting() -> bool:
    """True when kernels run under Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def configs(gpu: list[dict], interpreter: dict, warps=(4,), stages=(2,)) -> list[triton.Config]:
    """``triton.Config`` objects: every ``gpu`` block choice × warps × stages, or the one ``interpreter``."""
    if interpreting():
        return [triton.Config(interpreter, num_warps=1, num_stages=1)]
    return [triton.Config(meta, num_warps=w, num_stages=s) for meta in gpu for w in warps for s in stages]
