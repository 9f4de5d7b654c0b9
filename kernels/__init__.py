"""Triton kernels (installed as ``lambdaskip.kernels``): @triton.jit functions and their launchers.

No nn.Module and no autograd here; the ops in :mod:`lambdaskip.ops` wrap these launchers. Importing a
submodule imports triton, so the ops import them lazily.
"""
