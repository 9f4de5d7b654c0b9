"""Theorem 4.1 of the paper: when a λ-skip provably prevents rank collapse, and checks of live models.

Setting (PAPER.md §3): K layers ``Y_{k+1} = Norm(M_k Y_k C_V,k + λ Y_k)`` with the ℓ2 row norm, tokens as
the N rows of Y (width d), μ(Y) = ‖Y − 1·ȳᵀ‖_F. Constants: C_M = sup_k ‖M_k‖_F, S = sup_k ‖C_V,k‖ (spectral
norm; Frobenius is a valid, more conservative alternative), a ∈ (0, 1) the tolerated collapse rate.

- Eq. 7: ``λ² − a·(S·C_M + |λ|)² > 0``; closed forms :func:`lambda_min` and :func:`a_max`.
- If Eq. 7 holds and ``μ(Y_0)² ≥ b`` (:func:`input_threshold_b`), then ``μ(Y_K)² ≥ a^K μ(Y_0)²``.
- The proof's one-layer step (:func:`one_layer_bound`), for ℓ2-normalised rows of Y_k:
  ``μ(Y_{k+1})² ≥ (λ² μ(Y_k)² − 2|λ|·N·d·S·C_M) / (S·C_M + |λ|)²``.

What M and C_V are for each of our mixers — each states them itself (``mixer.theorem_constants(y)``, read by
:func:`mixer_constants`); read ``form`` before trusting a bound:

- ``IdentityMixer``: M = I, C_V = I. Form ``"exact"``.
- ``AttentionMixer``: M_h = softmax map of head h (materialised), C_V,h = W_V,hᵀ W_O,hᵀ (the head's value
  and output projections; W_O = I without out_proj). One head without biases is the theorem's layer
  (``"exact"``). Several heads give ``Σ_h M_h Y C_V,h``; we take C_M = max_h ‖M_h‖_F and S = Σ_h ‖C_V,h‖,
  which bounds ‖Σ_h M_h Y C_V,h‖ by C_M·S·‖Y‖ (**ours**, form ``"bounded"``).
- ``LTIMixer`` / ``S4DMixer``: one lower-triangular Toeplitz M_c per channel c (kernel K_c, D_c on the
  diagonal), input-independent: ‖M_c‖_F² = Σ_ℓ (N − ℓ) K_c,ℓ² exactly; C_M = max_c ‖M_c‖_F (**ours**),
  C_V = I, or W_O of S4D's out_proj. Form ``"bounded"`` for the pure LTI map (no activation, no
  out_proj); S4D's activation and out_proj bias are outside the theory (``"approximate"``).
- ``Mamba2Mixer``: M_h is the SSD matrix of head h for the live input (:meth:`Mamba2Mixer.mixing_matrix`,
  D on the diagonal), C_M = max over heads and batch (empirical sup). The paper sets C_V = I, S = 1 for
  SSMs; but our mixer has in_proj, a causal conv, silu, the gate, an inner RMSNorm and out_proj around the
  scan, none of which the theory models. S = 1 is used (the paper's convention) and
  ``S_projections = ‖W_x‖·‖W_O‖`` is reported beside it. Form ``"approximate"``.

Bounds are exact statements only for ``norm="l2"`` with form ``"exact"`` (or ``"bounded"``, ours).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lambdaskip.common import check_finite_float
from lambdaskip.metrics import mu
from lambdaskip.modules import LambdaSkipBlock
from lambdaskip.modules.constants import FORMS, MixerConstants, lti_frobenius, lti_matrix

__all__ = ["FORMS", "Certificate", "LayerReport", "LayerTrace", "MixerConstants", "a_max", "certify", "eq7_holds",
           "eq7_margin", "input_threshold_b", "lambda_min", "lti_frobenius", "lti_matrix", "mixer_constants",
           "one_layer_bound", "trace_blocks"]


# ---------------------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------------------

def _rate(a) -> float:
    a = check_finite_float("a", a)
    if not 0 < a < 1:
        raise ValueError(f"a must lie in (0, 1), got {a}")
    return a


def _constants(S, C_M) -> tuple[float, float]:
    """S and C_M, each a finite number > 0."""
    return check_finite_float("S", S, positive=True), check_finite_float("C_M", C_M, positive=True)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def eq7_margin(lam: float, a: float, S: float, C_M: float) -> float:
    """The left side of Eq. 7, ``λ² − a·(S·C_M + |λ|)²``: positive exactly when Eq. 7 holds."""
    lam, a, S, C_M = check_finite_float("lam", lam), _rate(a), *_constants(S, C_M)
    return lam * lam - a * (S * C_M + abs(lam)) ** 2


def eq7_holds(lam: float, a: float, S: float, C_M: float) -> bool:
    """Whether Eq. 7, ``λ² − a·(S·C_M + |λ|)² > 0``, holds."""
    return eq7_margin(lam, a, S, C_M) > 0


def lambda_min(a: float, S: float, C_M: float) -> float:
    """The smallest admissible |λ| for rate ``a``: Eq. 7 holds exactly when |λ| > √a·S·C_M / (1 − √a)."""
    a, S, C_M = _rate(a), *_constants(S, C_M)
    return math.sqrt(a) * S * C_M / (1 - math.sqrt(a))


def a_max(lam: float, S: float, C_M: float) -> float:
    """The supremum of the rates ``a`` that Eq. 7 admits for λ: (|λ| / (|λ| + S·C_M))² (0 for λ = 0)."""
    lam, S, C_M = check_finite_float("lam", lam), *_constants(S, C_M)
    return (abs(lam) / (abs(lam) + S * C_M)) ** 2


def input_threshold_b(lam: float, a: float, N: int, d: int, S: float, C_M: float, K: int) -> float:
    """The input condition of Theorem 4.1: μ(Y_0)² ≥ b guarantees μ(Y_K)² ≥ a^K μ(Y_0)².

    ``b = 2|λ|·N·d·S·C_M / (a^K · (λ² − a(S·C_M + |λ|)²))``.

    Args:
        lam: λ; a: rate in (0, 1); N: tokens; d: width; S, C_M: > 0; K: depth (layers, ≥ 1).
    Raises:
        ValueError: an argument is out of range, or Eq. 7 fails (then no b exists).
    """
    N, d, K = _count("N", N), _count("d", d), _count("K", K)
    margin = eq7_margin(lam, a, S, C_M)
    if margin <= 0:
        raise ValueError(f"Eq. 7 fails for lam={lam}, a={a}, S={S}, C_M={C_M}: λ² − a(S·C_M + |λ|)² = "
                         f"{margin:.4g} ≤ 0; |lam| must exceed lambda_min(a, S, C_M) = {lambda_min(a, S, C_M):.4g}")
    return 2 * abs(lam) * N * d * S * C_M / (a ** K * margin)


def one_layer_bound(mu_sq: float, lam: float, N: int, d: int, S: float, C_M: float) -> float:
    """The proof's one-layer step: a lower bound on μ(Y_{k+1})² from μ(Y_k)² = ``mu_sq``.

    ``max(0, (λ²·mu_sq − 2|λ|·N·d·S·C_M) / (S·C_M + |λ|)²)``; valid for ℓ2-normalised rows of Y_k and
    ``Y_{k+1} = ℓ2norm(M Y_k C_V + λ Y_k)`` with ‖M‖_F ≤ C_M and ‖C_V‖₂ ≤ S. Non-decreasing in mu_sq.
    """
    mu_sq, lam = check_finite_float("mu_sq", mu_sq), check_finite_float("lam", lam)
    if mu_sq < 0:
        raise ValueError(f"mu_sq must be ≥ 0, got {mu_sq}")
    N, d, S, C_M = _count("N", N), _count("d", d), *_constants(S, C_M)
    return max(0.0, (lam * lam * mu_sq - 2 * abs(lam) * N * d * S * C_M) / (S * C_M + abs(lam)) ** 2)


# ---------------------------------------------------------------------------------------------------------
# Constants of live mixers
# ---------------------------------------------------------------------------------------------------------

def mixer_constants(mixer: nn.Module, y: torch.Tensor) -> MixerConstants:
    """C_M (per batch element) and S of ``mixer`` at its input ``y`` (batch, N, d_model): what the mixer's
    own ``theorem_constants(y)`` states (see the module docstring), computed without gradients.

    Raises:
        TypeError: a mixer without a ``theorem_constants`` method.
    """
    method = getattr(mixer, "theorem_constants", None)
    if not callable(method):
        raise TypeError(f"mixer_constants does not know mixers of type {type(mixer).__name__}: it has no "
                        f"theorem_constants(y) method")
    with torch.no_grad():
        return method(y)


@dataclass
class LayerTrace:
    """One block of :func:`trace_blocks`: its mixer's constants at the block's input, and its output."""
    constants: MixerConstants
    output: torch.Tensor


def trace_blocks(blocks, y: torch.Tensor) -> Iterator[LayerTrace]:
    """Run ``blocks`` in order on ``y`` (batch, N, d_model) without gradients, measuring each block's mixer
    constants (:func:`mixer_constants`) at its input before the block runs. The one loop over blocks that
    :func:`certify` and the collapse study share. Yields one :class:`LayerTrace` per block, lazily: a
    caller that keeps only what it measures holds one layer's activations at a time, whatever the depth."""
    with torch.no_grad():
        for block in blocks:
            constants = mixer_constants(block.mixer, y)
            y = block(y)
            yield LayerTrace(constants, y)


# ---------------------------------------------------------------------------------------------------------
# certify: the theorem against a live model
# ---------------------------------------------------------------------------------------------------------

@dataclass
class LayerReport:
    """One layer of a :class:`Certificate`: its λ, constants (sup over the batch) and Eq. 7 at rate a."""
    layer: int
    lam: float
    C_M: float
    S: float
    S_frob: float
    form: str
    note: str
    eq7: bool
    a_max: float
    lambda_min: float


@dataclass
class Certificate:
    """The result of :func:`certify`.

    ``mu``, ``mu_bound_theorem``, ``mu_bound_iterated``: (K + 1, batch) float64, row k = depth k (row 0 the
    input). ``mu_bound_theorem[k] = a^{k/2}·μ(Y_0)`` where the theorem's induction certifies depth k, else 0;
    ``mu_bound_iterated`` iterates :func:`one_layer_bound` with each layer's own constants (never weaker).
    ``exact``: the bounds are theorems here (ℓ2 norm and every layer of form exact/bounded).
    """
    a: float
    N: int
    d: int
    norm: str | None
    exact: bool
    layers: list[LayerReport]
    mu: torch.Tensor
    mu_bound_theorem: torch.Tensor
    mu_bound_iterated: torch.Tensor
    summary: dict = field(default_factory=dict)

    def respected(self, rtol: float = 1e-6) -> bool:
        """Whether the measured μ is at least both bounds at every depth (up to ``rtol``·√N)."""
        slack = rtol * math.sqrt(self.N)
        return bool((self.mu + slack >= self.mu_bound_theorem).all() and (self.mu + slack >= self.mu_bound_iterated).all())

    def table(self) -> str:
        """A plain-text table: per layer λ, ‖M‖_F, S, Eq. 7, and mean measured μ next to the bounds."""
        lines = [f"Theorem 4.1 at a = {self.a:g} (N = {self.N}, d = {self.d}, norm = {self.norm!r}"
                 + ("" if self.exact else "; NOT exact: the model is outside the theorem's setting, see notes") + ")",
                 f"{'depth':>5} {'λ':>9} {'‖M‖_F':>9} {'S':>8} {'Eq.7':>5} {'μ measured':>11} {'μ ≥ (thm)':>10} "
                 f"{'μ ≥ (iter)':>10}"]
        for k in range(self.mu.shape[0]):
            row = self.layers[k - 1] if k else None
            head = (f"{k:>5} {row.lam:>9.4g} {row.C_M:>9.4g} {row.S:>8.4g} {('yes' if row.eq7 else 'no'):>5}" if row
                    else f"{k:>5} {'input':>9} {'':>9} {'':>8} {'':>5}")
            lines.append(f"{head} {self.mu[k].mean():>11.4g} {self.mu_bound_theorem[k].mean():>10.4g} "
                         f"{self.mu_bound_iterated[k].mean():>10.4g}")
        lines.extend(sorted({f"note: {r.form}: {r.note}" for r in self.layers}))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Everything as JSON-ready Python types."""
        return {"a": self.a, "N": self.N, "d": self.d, "norm": self.norm, "exact": self.exact,
                "summary": self.summary, "layers": [vars(r) for r in self.layers],
                "mu": self.mu.tolist(), "mu_bound_theorem": self.mu_bound_theorem.tolist(),
                "mu_bound_iterated": self.mu_bound_iterated.tolist()}


def _blocks(model) -> list[LambdaSkipBlock]:
    blocks = list(model.blocks) if hasattr(model, "blocks") else list(model)
    if not blocks:
        raise ValueError("model must contain at least one LambdaSkipBlock")
    for i, block in enumerate(blocks):
        if not isinstance(block, LambdaSkipBlock):
            raise TypeError(f"model block {i} must be a LambdaSkipBlock, got {type(block).__name__}")
        if block.mlp is not None:
            raise ValueError(f"model block {i} has an MLP; Theorem 4.1 covers mixer + λ-skip blocks only")
    return blocks


def certify(model, inputs: torch.Tensor, a: float = 0.99) -> Certificate:
    """Check Theorem 4.1 on ``model`` for ``inputs``, layer by layer.

    The inputs' rows are first ℓ2-normalised (the theorem's Y_0); the blocks then run one at a time, and at
    each block's input its constants are measured (:func:`mixer_constants`; sup over the batch).

    Args:
        model: a :class:`~lambdaskip.modules.LambdaSkipStack` (or a sequence of blocks) without MLPs.
        inputs: (batch, N, d_model) floating tensor.
        a: the rate in (0, 1).
    Returns:
        a :class:`Certificate`; ``summary`` holds the whole-stack constants (C_M, S = sup over layers),
        |λ|_min(a), and whether Eq. 7 and μ(Y_0)² ≥ b hold for every batch element (``certified``).
    """
    a = _rate(a)
    blocks = _blocks(model)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() != 3:
        raise ValueError(f"inputs must be a floating tensor (batch, N, d_model), got "
                         f"{getattr(inputs, 'shape', type(inputs).__name__)}")
    batch, N, d = inputs.shape
    norms = {block.skip.norm for block in blocks}
    y = inputs / torch.linalg.vector_norm(inputs, dim=-1, keepdim=True).clamp_min(torch.finfo(inputs.dtype).tiny)
    mus, layers = [mu(y).double()], []
    for k, (block, trace) in enumerate(zip(blocks, trace_blocks(blocks, y)), start=1):
        c, lam = trace.constants, float(block.skip.lam)
        C_M = float(c.C_M.max())
        layers.append(LayerReport(layer=k, lam=lam, C_M=C_M, S=c.S, S_frob=c.S_frob, form=c.form, note=c.note,
                                  eq7=eq7_holds(lam, a, c.S, C_M), a_max=a_max(lam, c.S, C_M),
                                  lambda_min=lambda_min(a, c.S, C_M)))
        mus.append(mu(trace.output).double())
    measured = torch.stack(mus)
    theorem = torch.zeros_like(measured)
    iterated = torch.zeros_like(measured)
    theorem[0] = iterated[0] = measured[0]
    for i in range(batch):
        guaranteed, bound_sq = measured[0, i].item() ** 2, measured[0, i].item() ** 2
        for k, r in enumerate(layers, start=1):
            bound_sq = one_layer_bound(bound_sq, r.lam, N, d, r.S, r.C_M)
            iterated[k, i] = math.sqrt(bound_sq)
            if guaranteed > 0 and r.eq7 and guaranteed >= 2 * abs(r.lam) * N * d * r.S * r.C_M / eq7_margin(
                    r.lam, a, r.S, r.C_M):
                guaranteed *= a
            else:
                guaranteed = 0.0
            theorem[k, i] = math.sqrt(guaranteed)
    C_M, S = max(r.C_M for r in layers), max(r.S for r in layers)
    lam_abs = min(abs(r.lam) for r in layers)
    eq7 = all(eq7_holds(r.lam, a, S, C_M) for r in layers)
    b = input_threshold_b(lam_abs, a, N, d, S, C_M, len(layers)) if eq7 and len({r.lam for r in layers}) == 1 else None
    summary = {"C_M": C_M, "S": S, "lambda_min": lambda_min(a, S, C_M), "a_K": a ** len(layers), "eq7": eq7, "b": b,
               "mu0_sq_min": float(measured[0].min()) ** 2,
               "certified": bool(theorem[-1].min() > 0)}
    exact = norms == {"l2"} and all(r.form in ("exact", "bounded") for r in layers)
    return Certificate(a=a, N=N, d=d, norm=norms.pop() if len(norms) == 1 else None, exact=exact, layers=layers,
                       mu=measured, mu_bound_theorem=theorem, mu_bound_iterated=iterated, summary=summary)
