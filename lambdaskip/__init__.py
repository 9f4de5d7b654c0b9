"""lambdaskip: λ-skip sequence layers, rank-collapse metrics and fast kernels.

A λ-skip layer computes ``Y_{k+1} = Norm(M_k V_k + λ·Y_k)``; the rank-collapse metric is
``μ(Y) = ‖Y − 1·ȳᵀ‖_F``. Importing this package compiles nothing, needs no GPU and does not import the
transformers adapter (``retrofit`` and ``restore`` load :mod:`lambdaskip.hf` on first use).
"""
from lambdaskip import metrics, ops, reference
from lambdaskip.common import __version__
from lambdaskip.metrics import CollapseProbe, effective_rank, mu, normalized_mu
from lambdaskip.modules import (AttentionMixer, IdentityMixer, LambdaSkip, LambdaSkipBlock, LTIMixer,
                                Mamba2Mixer, S4DMixer, build_stack)


def extension_status() -> str:
    """How the S4D C++/CUDA extension was (or was not) loaded; importing it compiles nothing."""
    from lambdaskip._extension import extension_status as status

    return status()


def __getattr__(name: str):
    if name in ("retrofit", "restore"):
        from lambdaskip import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'lambdaskip' has no attribute {name!r}")


__all__ = [
    "AttentionMixer", "CollapseProbe", "IdentityMixer", "LTIMixer", "LambdaSkip", "LambdaSkipBlock",
    "Mamba2Mixer", "S4DMixer", "build_stack", "effective_rank", "extension_status", "metrics", "mu", "normalized_mu", "ops",
    "reference", "restore", "retrofit", "__version__",
]
