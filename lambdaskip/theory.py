"""Theorem 4.1 of the paper: when a λ-skip provably prevents rank collapse, and checks of live models.

Setting (PAPER.md §3): K layers ``Y_{k+1} = Norm(M_k Y_k C_V,k + λ Y_k)`` with the ℓ2 row norm, tokens as
the N rows of Y (width d), μ(Y) = ‖Y − 1·ȳᵀ‖_F. Constants: C_M = sup_k ‖M_k‖_F, S = sup_k ‖C_V,k‖ (spectral
norm; Frobenius is a valid, more conservative alternative), a ∈ (0, 1) the tolerated collapse rate.

- Eq. 7: ``λ² − a·(S·C_M + |λ|)² > 0``; closed forms :func:`lambda_min` and :func:`a_max`.
- If Eq. 7 holds and ``μ(Y_0)² ≥ b`` (:func:`input_threshold_b`), then ``μ(Y_K)² ≥ a^K μ(Y_0)²``.
- The proof's one-layer step (:func:`one_layer_bound`), for ℓ2-normalised rows of Y_k:
  ``μ(Y_{k+1})² ≥ (λ² μ(Y_k)² − 2|λ|·N·d·S·C_M) / (S·C_M + |λ|)²``.

What M and C_V are for each of our mixers (:func:`mixer_constants`) — read ``form`` before trusting a bound:

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
from dataclasses import dataclass, field

import torch
from torch import nn

from lambdaskip.metrics import mu
from lambdaskip.modules import AttentionMixer, IdentityMixer, LambdaSkipBlock, LTIMixer, Mamba2Mixer, S4DMixer
from lambdaskip.ops._checks import check_finite_float

FORMS = ("exact", "bounded", "approximate")


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

def lti_matrix(K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The materialised mixing matrices of a per-channel causal convolution.

    Args:
        K: (channels, N) kernels; D: optional (channels,) feed-through, added on the diagonal.
    Returns:
        (channels, N, N) lower-triangular Toeplitz, M[c, i, j] = K[c, i − j] (+ D[c] if i = j).
    """
    N = K.shape[-1]
    lag = torch.arange(N, device=K.device)[:, None] - torch.arange(N, device=K.device)[None, :]
    M = K[:, lag.clamp_min(0)] * (lag >= 0)
    if D is not None:
        M = M + torch.diag_embed(D[:, None].expand(-1, N).to(M.dtype))
    return M


def lti_frobenius(K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """‖M_c‖_F of :func:`lti_matrix` without materialising it: √(Σ_ℓ (N − ℓ)·K'_ℓ²), K'_0 = K_0 + D.

    Args:
        K: (channels, N); D: optional (channels,).
    Returns:
        (channels,) in K's dtype (at least float32).
    """
    K = K.double() if K.dtype == torch.float64 else K.float()
    if D is not None:
        K = torch.cat([K[:, :1] + D[:, None].to(K.dtype), K[:, 1:]], dim=1)
    N = K.shape[-1]
    weights = torch.arange(N, 0, -1, dtype=K.dtype, device=K.device)
    return (K.square() * weights).sum(dim=-1).sqrt()


@dataclass
class MixerConstants:
    """Theorem 4.1's constants of one mixer on one input batch.

    C_M: (batch,) max over heads/channels of ‖M‖_F; S, S_frob: spectral and Frobenius bounds on C_V;
    form: ``"exact"`` / ``"bounded"`` / ``"approximate"`` (see the module docstring); note: what was
    assumed; S_projections: for Mamba-2, ‖W_x‖·‖W_O‖ (reported, not used).
    """
    C_M: torch.Tensor
    S: float
    S_frob: float
    form: str
    note: str
    S_projections: float | None = None


def _spectral(W: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(W.detach().double(), ord=2).item()


def _frobenius(W: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(W.detach().double()).item()


def _attention_constants(mixer: AttentionMixer, y: torch.Tensor) -> MixerConstants:
    d, h = mixer.d_model, mixer.n_heads
    head = d // h
    W_v = mixer.qkv.weight[2 * d:].detach().double()                        # (d, d): V = Y W_vᵀ
    has_out = isinstance(mixer.out_proj, nn.Linear)
    W_o = mixer.out_proj.weight.detach().double() if has_out else torch.eye(d, dtype=torch.float64)
    values = [(W_o[:, i * head:(i + 1) * head] @ W_v[i * head:(i + 1) * head]).T for i in range(h)]
    M = mixer.mixing_matrix(y).double()                                      # (b, h, N, N)
    has_bias = mixer.qkv.bias is not None or (has_out and mixer.out_proj.bias is not None)
    form = "approximate" if has_bias else ("exact" if h == 1 else "bounded")
    return MixerConstants(
        C_M=torch.linalg.matrix_norm(M).amax(dim=1), S=sum(_spectral(C) for C in values),
        S_frob=sum(_frobenius(C) for C in values), form=form,
        note=f"M = softmax maps ({h} head(s)), C_V = W_V,hᵀ W_O,hᵀ" + ("; biases ignored" if has_bias else ""))


def _lti_constants(K: torch.Tensor, D, batch: int, S: float, S_frob: float, form: str, note: str):
    C_M = lti_frobenius(K.detach(), None if D is None else D.detach()).max()
    return MixerConstants(C_M=C_M.expand(batch).clone(), S=S, S_frob=S_frob, form=form, note=note)


def _s4d_constants(mixer: S4DMixer, y: torch.Tensor) -> MixerConstants:
    has_out = isinstance(mixer.out_proj, nn.Linear)
    S, S_frob = ((_spectral(mixer.out_proj.weight), _frobenius(mixer.out_proj.weight)) if has_out
                 else (1.0, math.sqrt(mixer.d_model)))
    pure = mixer.activation is None and not has_out
    return _lti_constants(mixer.kernel(y.shape[1]), mixer.D, y.shape[0], S, S_frob,
                          "bounded" if pure else "approximate",
                          "M_c = Toeplitz(K_c) + D_c·I per channel, C_V = " + ("W_Oᵀ" if has_out else "I")
                          + ("" if pure else "; activation/out_proj bias ignored"))


def _mamba2_constants(mixer: Mamba2Mixer, y: torch.Tensor) -> MixerConstants:
    M = mixer.mixing_matrix(y, include_D=mixer.D.dim() == 1)                 # (b, h, N, N)
    if mixer.D.dim() == 1:
        C_M = torch.linalg.matrix_norm(M).amax(dim=1)
    else:  # ‖M + D I‖_F² = ‖M‖_F² + 2D·tr(M) + N·D², per (head, channel)
        D = mixer.D.detach().double()                                        # (h, p)
        sq = (torch.linalg.matrix_norm(M).square()[..., None] + 2 * D * M.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None]
              + y.shape[1] * D.square())
        C_M = sq.flatten(1).amax(dim=1).sqrt()
    W_x = mixer.in_proj.weight[mixer.d_inner:2 * mixer.d_inner]
    return MixerConstants(
        C_M=C_M, S=1.0, S_frob=math.sqrt(mixer.d_model), form="approximate",
        S_projections=_spectral(W_x) * _spectral(mixer.out_proj.weight),
        note="M = SSD matrix of the inner sequence (D on the diagonal), C_V = I (paper); in_proj, conv, silu, "
             "gate, inner norm and out_proj are outside the theory")


def mixer_constants(mixer: nn.Module, y: torch.Tensor) -> MixerConstants:
    """C_M (per batch element) and S of ``mixer`` at its input ``y`` (batch, N, d_model).

    Raises:
        TypeError: a mixer kind the theory module does not know.
    """
    with torch.no_grad():
        if isinstance(mixer, IdentityMixer):
            N = y.shape[1]
            return MixerConstants(C_M=torch.full((y.shape[0],), math.sqrt(N), dtype=torch.float64), S=1.0,
                                  S_frob=math.sqrt(mixer.d_model), form="exact", note="M = I, C_V = I")
        if isinstance(mixer, AttentionMixer):
            return _attention_constants(mixer, y)
        if isinstance(mixer, S4DMixer):
            return _s4d_constants(mixer, y)
        if isinstance(mixer, LTIMixer):
            return _lti_constants(mixer.kernel(y.shape[1]), None, y.shape[0], 1.0, math.sqrt(mixer.d_model),
                                  "bounded", "M_c = Toeplitz(K_c) per channel, C_V = I")
        if isinstance(mixer, Mamba2Mixer):
            return _mamba2_constants(mixer, y)
    raise TypeError(f"mixer_constants does not know mixers of type {type(mixer).__name__}")


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
    with torch.no_grad():
        for k, block in enumerate(blocks, start=1):
            c = mixer_constants(block.mixer, y)
            lam = float(block.skip.lam)
            C_M = float(c.C_M.max())
            layers.append(LayerReport(layer=k, lam=lam, C_M=C_M, S=c.S, S_frob=c.S_frob, form=c.form, note=c.note,
                                      eq7=eq7_holds(lam, a, c.S, C_M), a_max=a_max(lam, c.S, C_M),
                                      lambda_min=lambda_min(a, c.S, C_M)))
            y = block(y)
            mus.append(mu(y).double())
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
