"""Public functional ops. Each validates its input, then dispatches by ``backend=``
(``"auto"``, ``"reference"``, ``"triton"``, ``"extension"``; see :mod:`lambdaskip.ops._backend`)."""
from lambdaskip.ops._backend import BACKENDS, prefer_backend, triton_can_run
from lambdaskip.ops.attention import attention
from lambdaskip.ops.lambda_norm import lambda_norm
from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.ops.ssd_step import ssd_step

__all__ = ["BACKENDS", "prefer_backend", "triton_can_run", "attention", "lambda_norm", "s4d_conv", "s4d_kernel", "ssd_scan",
           "ssd_step"]
