"""Triton kernels, installed as ``lambdaskip.kernels``: @triton.jit functions and their launchers.

The top-level ``kernels/`` directory *is* the ``lambdaskip.kernels`` package (setuptools
``package-dir = {"lambdaskip.kernels": "kernels"}``; there is no top-level module named ``kernels``):
``kernels/ssd_chunk_scan.py`` is imported as ``lambdaskip.kernels.ssd_chunk_scan``. What is here:

- ``lambda_norm.py`` — the fused λ-residual + norm (op: :func:`lambdaskip.ops.lambda_norm`);
- ``ssd.py`` — the SSD scan's forward and backward, composing its four steps (op:
  :func:`lambdaskip.ops.ssd_scan`, custom ops ``lambdaskip::ssd_scan_core`` / ``_backward``), one file a
  step, each with its forward and backward and a reference in :mod:`lambdaskip.reference.ssd_steps`:
  ``ssd_chunk_cumsum.py``, ``ssd_chunk_state.py``, ``ssd_state_passing.py``, ``ssd_chunk_scan.py``;
- ``ssd_configs.py`` — the SSD kernels' autotuning configurations (one config under the interpreter).

No nn.Module and no autograd here; the ops in :mod:`lambdaskip.ops` wrap these launchers. Importing a
submodule imports triton, so the ops import them lazily.
"""
