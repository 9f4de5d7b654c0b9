"""The collapse study's configuration: :class:`StudyConfig`, its presets and its variants (panels).

Mixers as built here: attention is bidirectional, one head, with W_O (the theorem's ``M·Y·W_V·W_O``);
Mamba-2 has d_state 16, head dim 32 (fewer heads for narrow models), and its inner RMSNorm is on unless
``norm`` is None; S4D has d_state 64, GELU and out_proj. ``norm=None`` removes every normalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lambdaskip.common import NORMS
from lambdaskip.metrics import METRICS
from lambdaskip.modules import ARCHS

INPUTS = ("text", "gaussian")
# The metrics of lambdaskip.metrics.METRICS this study records, in the order of its outputs.
RECORDED = ("normalized_mu", "mu")
assert set(RECORDED) <= set(METRICS)
DEFAULT_LAMS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 10.0)

PRESETS = {
    # Figs. 1–2: λ sweeps on a Mamba-2 without gating (Fig. 1) and a transformer (Fig. 2), 64 layers.
    "lambda-sweep": {"archs": ["attention", "mamba2"], "depth": 64, "gating": [False],
                     "lams": [-10.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 10.0, 100.0]},
    # Fig. 3: Mamba-2 with gating on/off × norm on/off, without (λ = 0) and with (λ = 1) the skip.
    "gating": {"archs": ["mamba2"], "gating": [True, False], "norms": ["rmsnorm", None], "lams": [0.0, 1.0]},
    # Beyond the paper's depths: at which depth does each λ collapse? 1024 layers of each architecture,
    # narrower and shorter than the default so that the whole sweep runs in one pass per stack in under
    # two minutes on 2 CPU cores.
    "deep": {"archs": ["attention", "mamba2", "s4d"], "depth": 1024, "d_model": 32, "seqlen": 64, "excerpts": 4,
             "lams": [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 10.0]},
}


class StudyError(ValueError):
    """A study configuration that cannot run; the CLI prints its message on one line."""


@dataclass
class StudyConfig:
    """Everything that determines a study's numbers (recorded in results.json).

    archs: from :data:`lambdaskip.modules.ARCHS`; depth: blocks; lams: the λ sweep; norms: λ-skip norms
    (None = no norm); gating: Mamba-2 gate settings to run; seeds: model and embedding seeds; excerpts:
    sequences per batch; input: "text" or "gaussian"; text: a file (None = bundled sample); hf_tokenizer: a
    local HF tokenizer; rate_a: Theorem 4.1's a; metric: the one plotted per layer (from :data:`RECORDED`);
    threads: CPU threads for torch during the run (1 by default: small ops gain nothing from more, and a
    busy machine loses much).
    """
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    depth: int = 32
    d_model: int = 64
    seqlen: int = 128
    lams: list[float] = field(default_factory=lambda: list(DEFAULT_LAMS))
    norms: list[str | None] = field(default_factory=lambda: ["layernorm"])
    gating: list[bool] = field(default_factory=lambda: [False])
    seeds: list[int] = field(default_factory=lambda: [0])
    excerpts: int = 8
    input: str = "text"
    text: str | None = None
    hf_tokenizer: str | None = None
    rate_a: float = 0.99
    metric: str = "normalized_mu"
    collapse_threshold: float = 1e-2
    device: str = "cpu"
    threads: int = 1
    preset: str | None = None

    @classmethod
    def from_preset(cls, preset: str | None = None, **values) -> "StudyConfig":
        """The defaults, overridden by ``preset`` (a key of :data:`PRESETS`), overridden by ``values``."""
        if preset is not None and preset not in PRESETS:
            raise StudyError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
        return cls(preset=preset, **{**(PRESETS[preset] if preset else {}), **values})

    def validate(self) -> None:
        """Raise StudyError naming the first bad field."""
        unknown = [a for a in self.archs if a not in ARCHS]
        if not self.archs or unknown:
            raise StudyError(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHS)}" if unknown
                             else "no architecture given")
        if not self.lams:
            raise StudyError("the λ list is empty: give at least one value with --lams")
        if any(not math.isfinite(lam) for lam in self.lams):
            raise StudyError(f"every λ must be finite, got {self.lams}")
        for name in ("depth", "d_model", "excerpts", "threads"):
            if getattr(self, name) <= 0:
                raise StudyError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.seqlen < 2:
            raise StudyError(f"seqlen must be at least 2 (μ compares tokens), got {self.seqlen}")
        bad_norm = [n for n in self.norms if n is not None and n not in NORMS]
        if not self.norms or bad_norm:
            raise StudyError(f"norm must be among {', '.join(NORMS)}, none; got {bad_norm or self.norms}")
        if not self.gating:
            raise StudyError("no gating setting given")
        if not self.seeds:
            raise StudyError("no seed given")
        if self.input not in INPUTS:
            raise StudyError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.input == "gaussian" and (self.text or self.hf_tokenizer):
            raise StudyError("--text and --hf-tokenizer apply to --input text only")
        if not 0 < self.rate_a < 1:
            raise StudyError(f"rate-a must lie in (0, 1), got {self.rate_a}")
        if not 0 < self.collapse_threshold < 1:
            raise StudyError(f"collapse-threshold must lie in (0, 1), got {self.collapse_threshold}")
        if self.metric not in RECORDED:
            raise StudyError(f"metric must be one of {', '.join(RECORDED)}, got {self.metric!r}")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and not torch.cuda.is_available()):
            raise StudyError(f"device must be cpu, or cuda where a GPU is present; got {self.device!r}")


@dataclass(frozen=True)
class Variant:
    """One panel of the study: an architecture with its Mamba-2 gating and its norm."""
    arch: str
    gating: bool | None
    norm: str | None

    @property
    def label(self) -> str:
        parts = [self.arch]
        if self.gating is not None:
            parts.append(f"gating {'on' if self.gating else 'off'}")
        parts.append(f"norm {self.norm or 'off'}")
        return ", ".join(parts)


def variants(config: StudyConfig) -> list[Variant]:
    """The study's panels, in order: archs × (gating for Mamba-2) × norms."""
    return [Variant(arch, gating if arch == "mamba2" else None, norm)
            for arch in config.archs
            for gating in (config.gating if arch == "mamba2" else [None])
            for norm in config.norms]


def mixer_kwargs(variant: Variant, d_model: int) -> dict:
    """Constructor arguments of the variant's mixer (see the module docstring)."""
    if variant.arch == "attention":
        return {"nheads": 1, "causal": False}
    if variant.arch == "mamba2":
        d_inner = 2 * d_model
        return {"d_state": 16, "headdim": math.gcd(32, d_inner), "gating": bool(variant.gating),
                "inner_norm": variant.norm is not None}
    return {"d_state": 64}
