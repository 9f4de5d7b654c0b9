"""Plain-PyTorch references: the specification of every kernel, float64-capable, written for clarity."""
from lambdaskip.reference.attention import attention
from lambdaskip.reference.lambda_norm import lambda_norm
from lambdaskip.reference.s4d import (s4d_conv_direct, s4d_conv_fft, s4d_init, s4d_kernel, s4d_kernel_naive,
                                      s4d_recurrence)
from lambdaskip.reference.ssd import ssd_scan_chunked, ssd_scan_sequential

__all__ = [
    "attention", "lambda_norm", "s4d_conv_direct", "s4d_conv_fft", "s4d_init", "s4d_kernel",
    "s4d_kernel_naive", "s4d_recurrence", "ssd_scan_chunked", "ssd_scan_sequential",
]
