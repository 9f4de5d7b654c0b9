"""lambdaskip: λ-skip sequence layers, rank-collapse metrics and fast kernels.

A λ-skip layer computes ``Y_{k+1} = Norm(M_k V_k + λ·Y_k)``; the rank-collapse metric is
``μ(Y) = ‖Y − 1·ȳᵀ‖_F``. Importing this package imports nothing but the standard library: each public name
below loads its module (and torch) on first use, so the ``lambdaskip`` command starts inside its Ctrl-C
handling (:mod:`lambdaskip.cli`). Nothing compiles, no GPU is needed, and the transformers adapter
(``retrofit``, ``restore``) loads only when those are used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names' sources, for readers and type checkers; __getattr__ imports them on first use
    from lambdaskip import metrics, ops, reference
    from lambdaskip.common import __version__
    from lambdaskip.hf import restore, retrofit
    from lambdaskip.metrics import CollapseProbe, effective_rank, mu, normalized_mu
    from lambdaskip.modules import (AttentionMixer, IdentityMixer, LambdaSkip, LambdaSkipBlock, LTIMixer,
                                    Mamba2Mixer, S4DMixer, build_stack)

_SOURCES = {
    "metrics": "lambdaskip.metrics", "ops": "lambdaskip.ops", "reference": "lambdaskip.reference",
    "__version__": "lambdaskip.common",
    **dict.fromkeys(("CollapseProbe", "effective_rank", "mu", "normalized_mu"), "lambdaskip.metrics"),
    **dict.fromkeys(("AttentionMixer", "IdentityMixer", "LambdaSkip", "LambdaSkipBlock", "LTIMixer", "Mamba2Mixer",
                     "S4DMixer", "build_stack"), "lambdaskip.modules"),
    **dict.fromkeys(("retrofit", "restore"), "lambdaskip.hf"),
}


def extension_status() -> str:
    """How the S4D C++/CUDA extension was (or was not) loaded; importing it compiles nothing."""
    from lambdaskip._extension import extension_status as status

    return status()


def __getattr__(name: str):
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'lambdaskip' has no attribute {name!r}")
    module = importlib.import_module(source)
    value = module if source == f"lambdaskip.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AttentionMixer", "CollapseProbe", "IdentityMixer", "LTIMixer", "LambdaSkip", "LambdaSkipBlock",
    "Mamba2Mixer", "S4DMixer", "build_stack", "effective_rank", "extension_status", "metrics", "mu",
    "normalized_mu", "ops", "reference", "restore", "retrofit", "__version__",
]
