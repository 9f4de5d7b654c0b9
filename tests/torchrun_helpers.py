"""Launching a command on 2 gloo ranks with torchrun, for the distributed trainer tests (DDP and FSDP)."""
import os
import subprocess
import sys


def torchrun(*argv: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=nproc argv...`` with one CPU thread per
    rank; argv is ``-m module ...`` or a script and its arguments. Returns the finished process (text output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
