"""Autotuning configurations of the SSD kernels, keyed by kernel name: a small set on a GPU, one under the
interpreter.

Every GPU config listed here compiles for sm_90 without spilling registers and within a block's shared
memory (``bench/results/sm90-static/README.md``, checked by ``tests/test_sm90_static.py``), and each is
executed against the float64 reference under the interpreter by ``tests/test_autotune_configs.py``.
Triton's CPU interpreter cannot time candidates (an autotuner with more than one config raises there),
so each kernel also names the single configuration it runs with when ``TRITON_INTERPRET=1``.
"""
import os

import triton

# kernel name → [(block sizes, num_warps, num_stages), ...]
GPU_CONFIGS = {
    # dstate looped in BLOCK_K; 128-row tiles, 64 × 64 tiles at 4 warps and BLOCK_K 64 with them spill: left out
    "_chunk_scan_kernel": [({"BLOCK_M": m, "BLOCK_P": p, "BLOCK_K": k, "BLOCK_S": 32}, w, st)
                           for m, p, k, w, st in ((64, 64, 32, 8, 1), (64, 64, 32, 8, 2), (32, 32, 64, 4, 1))],
    "_chunk_state_kernel": [({"BLOCK_S": s}, w, 2) for s in (32, 64) for w in (4, 8)],
    # 64-column tiles at 4 warps spill (56 B/thread) here: 8 warps only for them
    "_chunk_state_varlen_kernel": [({"BLOCK_S": 32}, 4, 2), ({"BLOCK_S": 32}, 8, 2), ({"BLOCK_S": 64}, 8, 2)],
    # dstate split across programs (the launcher's BLOCK_N ≤ 64), headdim looped in BLOCK_K; BLOCK_K 64 at
    # 32 rows and 8 warps spills
    "_chunk_scan_bwd_rows_kernel": [({"BLOCK_M": m, "BLOCK_K": k, "BLOCK_S": 32}, 4, 1)
                                    for m, k in ((16, 32), (32, 32), (16, 64))],
    # dx or dB split across programs (the launcher's BLOCK_O ≤ 64), the keys looped in BLOCK_K; 32 × 32 at
    # 4 warps spills in the dx pass
    "_chunk_scan_bwd_columns_kernel": [({"BLOCK": b, "BLOCK_K": k}, w, 1) for b, k, w in ((16, 64, 4), (32, 64, 8),
                                                                                         (64, 32, 8))],
    "_ssd_step_kernel": [({"BLOCK_P": p}, w, 2) for p in (4, 8, 16) for w in (2, 4)],
}
INTERPRETER_CONFIGS = {
    "_chunk_scan_kernel": {"BLOCK_M": 32, "BLOCK_P": 32, "BLOCK_K": 32, "BLOCK_S": 32},
    "_chunk_state_kernel": {"BLOCK_S": 32},
    "_chunk_state_varlen_kernel": {"BLOCK_S": 32},
    "_chunk_scan_bwd_rows_kernel": {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_S": 32},
    "_chunk_scan_bwd_columns_kernel": {"BLOCK": 32, "BLOCK_K": 32},
    "_ssd_step_kernel": {"BLOCK_P": 16},
}


def interpreting() -> bool:
    """True when kernels run under Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_configs(kernel: str) -> list[triton.Config]:
    """The GPU autotuning configs of ``kernel`` (whether or not the interpreter is on)."""
    return [triton.Config(dict(meta), num_warps=w, num_stages=s) for meta, w, s in GPU_CONFIGS[kernel]]


def configs(kernel: str) -> list[triton.Config]:
    """``kernel``'s autotuning configs: :func:`gpu_configs`, or under the interpreter its one config."""
    if interpreting():
        return [triton.Config(dict(INTERPRETER_CONFIGS[kernel]), num_warps=1, num_stages=1)]
    return gpu_configs(kernel)
