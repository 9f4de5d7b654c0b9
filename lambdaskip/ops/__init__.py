"""Public functional ops. Each validates its input, then dispatches by ``backend=``
(``"auto"``, ``"reference"``, ``"triton"``, ``"extension"``; see :mod:`lambdaskip.ops._backend`).

Policies every op follows:

- Bad arguments: a TypeError (wrong type or dtype) or ValueError (wrong shape or value) in one line that
  names the argument. Scalars are checked for type and finiteness (``scale``, ``eps``, ``L``, flags
  must be real bools).
- Empty tensors: a zero-size batch or sequence dim (attention's batch, nheads and seqlen_q;
  lambda_norm's leading dims; S4D's batch B and length L; ssd_scan's batch and seqlen, ssd_step's batch)
  gives an empty result of the right shape and dtype that backpropagates, without launching a kernel
  (ssd_scan's final state is then the initial state, or zeros). A zero-size feature dim (headdim, d,
  S4D's channels H and modes N/2, SSD's nheads, ngroups and dstate) has no meaningful result and is refused
  with a ValueError, as are queries without keys (a softmax over nothing).
- Non-finite data: NaN in → NaN out. A NaN or ±inf input value makes NaN (or ±inf) the outputs that
  depend on it, in the same places on every backend as in the reference; never zeros or a finite
  guess. Each op's docstring says which outputs a value reaches.
"""
from lambdaskip.ops._backend import BACKENDS, prefer_backend, triton_can_run
from lambdaskip.ops.attention import attention
from lambdaskip.ops.lambda_norm import lambda_norm
from lambdaskip.ops.s4d import s4d_conv, s4d_kernel
from lambdaskip.ops.ssd import ssd_scan
from lambdaskip.ops.ssd_step import ssd_step

__all__ = ["BACKENDS", "prefer_backend", "triton_can_run", "attention", "lambda_norm", "s4d_conv", "s4d_kernel", "ssd_scan",
           "ssd_step"]
