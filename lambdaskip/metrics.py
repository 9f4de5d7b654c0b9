"""Rank-collapse metrics and a probe that records them for every layer of a stack.

Tokens are rows: a sequence is a (seqlen, d_model) matrix per batch element, so every metric maps a
tensor of shape (..., seqlen, d_model) to one value per leading index.

- μ(Y) = ‖Y − 1·ȳᵀ‖_F with ȳ the mean token: 0 exactly when all tokens are equal.
- normalised μ = μ(Y) / ‖Y‖_F ∈ [0, 1]: what the paper plots.
- effective rank = exp(entropy of σ/Σσ) over the singular values σ (Roy & Vetterli, 2007).

Telemetry (the probe below, :attr:`lambdaskip.modules.LambdaSkip.track_mu`) records only while
:func:`telemetry_active`: activation checkpointing re-runs blocks during the backward inside
:func:`telemetry_paused`, so each layer is recorded once per step, from the forward.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

import torch
from torch import nn


_telemetry = threading.local()  # per thread: a CUDA backward (and with it a recomputation) runs on its own


@contextlib.contextmanager
def telemetry_paused() -> Iterator[None]:
    """Within the block (in this thread), μ telemetry records nothing; blocks nest."""
    _telemetry.paused = getattr(_telemetry, "paused", 0) + 1
    try:
        yield
    finally:
        _telemetry.paused -= 1


def telemetry_active() -> bool:
    """False inside :func:`telemetry_paused` (e.g. while activation checkpointing recomputes a block)."""
    return not getattr(_telemetry, "paused", 0)


def _as_tokens(y: torch.Tensor, name: str = "y") -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if not (y.is_floating_point() or y.is_complex()):
        raise TypeError(f"{name} must have a floating dtype, got {y.dtype}")
    if y.dim() < 2:
        raise ValueError(f"{name} must have shape (..., seqlen, d_model), got {tuple(y.shape)}")
    if y.dtype in (torch.float16, torch.bfloat16):
        y = y.float()
    return y


def mu(y: torch.Tensor) -> torch.Tensor:
    """μ(Y) = ‖Y − 1·ȳᵀ‖_F per batch element.

    Args:
        y: (..., seqlen, d_model).
    Returns:
        (...) in y's dtype (float32 for half inputs).
    """
    y = _as_tokens(y)
    centered = y - y.mean(dim=-2, keepdim=True)
    return torch.linalg.vector_norm(centered, dim=(-2, -1))


def normalized_mu(y: torch.Tensor) -> torch.Tensor:
    """μ(Y) / ‖Y‖_F per batch element, in [0, 1]; 0 for an all-zero Y.

    Args:
        y: (..., seqlen, d_model).
    Returns:
        (...).
    """
    y = _as_tokens(y)
    norm = torch.linalg.vector_norm(y, dim=(-2, -1))
    return mu(y) / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def effective_rank(y: torch.Tensor) -> torch.Tensor:
    """exp(H(p)) with p = σ/Σσ the normalised singular values of each (seqlen, d_model) matrix.

    Args:
        y: (..., seqlen, d_model).
    Returns:
        (...), between 1 (rank one) and min(seqlen, d_model); 0 for an all-zero matrix.
    """
    y = _as_tokens(y)
    sigma = torch.linalg.svdvals(y)
    total = sigma.sum(dim=-1, keepdim=True)
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


# The metrics by name: what CollapseProbe and the studies record.
METRIC_FUNCTIONS = {"mu": mu, "normalized_mu": normalized_mu, "effective_rank": effective_rank}
METRICS = tuple(METRIC_FUNCTIONS)


class CollapseProbe:
    """Records rank-collapse metrics of every probed module's output during forward passes.

    Used as a context manager around a forward pass; only the metric values (floats) are kept, never the
    activations. Layer 0 is the input of the first probed module, layer k the output of the k-th.

    Args:
        modules: the modules to probe, in depth order (e.g. ``stack.blocks``).
        metrics: names from :data:`METRICS`.

    Example::

        with CollapseProbe(stack.blocks) as probe:
            stack(x)
        probe.table()              # [{"layer": 0, "metric": "mu", "batch": 0, "value": ...}, ...]
        probe.trajectory("mu")     # tensor (layers, batch)
    """

    def __init__(self, modules: Iterable[nn.Module], metrics: Iterable[str] = METRICS):
        self.modules = list(modules)
        if not self.modules:
            raise ValueError("modules must name at least one module to probe")
        self.metrics = tuple(metrics)
        unknown = [m for m in self.metrics if m not in METRIC_FUNCTIONS]
        if unknown:
            raise ValueError(f"metrics must be among {METRICS}, got {unknown}")
        self._handles = []
        self._records: dict[tuple[int, str], torch.Tensor] = {}

    def _record(self, layer: int, y) -> None:
        if not telemetry_active():
            return
        if isinstance(y, tuple):
            y = y[0]
        with torch.no_grad():
            for name in self.metrics:
                self._records[(layer, name)] = METRIC_FUNCTIONS[name](y.detach()).reshape(-1).cpu()

    def __enter__(self) -> "CollapseProbe":
        self._records.clear()
        first = self.modules[0]
        self._handles.append(first.register_forward_pre_hook(lambda mod, args: self._record(0, args[0])))
        for depth, module in enumerate(self.modules, start=1):
            self._handles.append(module.register_forward_hook(
                lambda mod, args, out, depth=depth: self._record(depth, out)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def trajectory(self, metric: str = "mu") -> torch.Tensor:
        """The recorded values of ``metric`` as a (layers, batch) float64 tensor."""
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} was not recorded; recorded: {self.metrics}")
        layers = sorted(layer for layer, name in self._records if name == metric)
        if not layers:
            raise RuntimeError("nothing recorded: run a forward pass inside the `with CollapseProbe(...)` block")
        return torch.stack([self._records[(layer, metric)].double() for layer in layers])

    def table(self) -> list[dict]:
        """Tidy rows ``{"layer", "metric", "batch", "value"}``, one per recorded number."""
        rows = []
        for (layer, metric), values in sorted(self._records.items()):
            rows.extend({"layer": layer, "metric": metric, "batch": b, "value": float(v)}
                        for b, v in enumerate(values.tolist()))
        return rows
