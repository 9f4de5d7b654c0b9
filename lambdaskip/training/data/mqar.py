"""Multi-query associative recall (MQAR): a generator written from the published protocol.

Each sequence of ``seqlen`` tokens starts with ``num_pairs`` key–value pairs ``k_1 v_1 … k_n v_n``;
keys are distinct tokens from the lower half of the vocabulary (token 0 excluded: it is the filler) and
values distinct tokens from the upper half. The rest of the sequence is ``(seqlen − 2n) // 2`` query
slots at even offsets after the pairs. Every key is queried exactly once, in a slot drawn without
replacement with probability ∝ gap^(power_a − 1) (gap = 1, 2, … counts slots from the end of the pairs),
so short recall distances are more likely for ``power_a < 1``. At a query position the label is the
key's value; every other position is labelled −100 (ignored). Tokens that are neither pair nor query are
the filler: 0, or uniform random tokens over the whole vocabulary (``filler="random"``).

Splits are drawn from disjoint random streams: numpy's generator seeded with ``[seed, split_id]`` (train
0, test 1), so train and test never share a stream whatever the sizes. Generation is vectorised:
distinct keys and values are drawn
with replacement and redrawn where a row repeats (or by Gumbel-top-k when that would rarely succeed), and
query slots ∝ p without replacement by the Gumbel-top-k trick.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass

import numpy as np
import torch

from lambdaskip.common import renamed_argument

IGNORE_INDEX = -100
SPLIT_IDS = {"train": 0, "test": 1}
FILLERS = ("zero", "random")
ROW_BLOCK = 4096  # rows per block in the sampler; part of the stream definition, do not change


@dataclass(frozen=True)
class MQARConfig:
    """The MQAR task's parameters.

    ``cpu()`` gives the defaults sized for a laptop CPU, ``paper()`` the zoology/paper setting
    (L = 512, 64 pairs, vocab 8192, 100k train / 3k test).
    """
    vocab_size: int = 128
    seqlen: int = 64
    num_pairs: int = 8
    power_a: float = 0.01
    filler: str = "zero"
    num_train: int = 20_000
    num_test: int = 1_000
    seed: int = 0
    seq_len: InitVar[int | None] = None  # deprecated spelling of seqlen

    def __post_init__(self, seq_len):
        object.__setattr__(self, "seqlen", renamed_argument("MQARConfig", "seq_len", "seqlen", seq_len, self.seqlen))

    @classmethod
    def cpu(cls, **overrides) -> "MQARConfig":
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> "MQARConfig":
        base = dict(vocab_size=8192, seqlen=512, num_pairs=64, num_train=100_000, num_test=3_000)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        check_mqar_args(self.vocab_size, self.seqlen, self.num_pairs, self.power_a, self.filler)
        for name in ("num_train", "num_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_mqar_args(vocab_size: int, seqlen: int, num_pairs: int, power_a: float, filler: str) -> None:
    """Raise ValueError naming the first argument that makes the task impossible."""
    for name, value in (("vocab_size", vocab_size), ("seqlen", seqlen), ("num_pairs", num_pairs)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if vocab_size // 2 - 1 < num_pairs:
        raise ValueError(f"vocab_size={vocab_size} leaves {vocab_size // 2 - 1} keys for num_pairs={num_pairs}: "
                         f"need vocab_size >= {2 * num_pairs + 2}")
    if (seqlen - 2 * num_pairs) // 2 < num_pairs:
        raise ValueError(f"seqlen={seqlen} has {(seqlen - 2 * num_pairs) // 2} query slots for "
                         f"num_pairs={num_pairs}: need seqlen >= {4 * num_pairs}")
    if not np.isfinite(power_a) or power_a <= 0:
        raise ValueError(f"power_a must be a positive finite number, got {power_a!r}")
    if filler not in FILLERS:
        raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")


def _sample_without_replacement(rng: np.random.Generator, num_rows: int, probs: np.ndarray, k: int) -> np.ndarray:
    """(num_rows, k) distinct indices per row, distributed as k sequential draws ∝ probs, in drawing order.

    Gumbel-top-k: the k largest of log p + Gumbel noise, found with a partition (linear time), rows
    processed in blocks of :data:`ROW_BLOCK` so that memory stays bounded."""
    log_probs = np.log(probs)[None, :]
    picks = []
    for start in range(0, num_rows, ROW_BLOCK):
        scores = log_probs + rng.gumbel(size=(min(ROW_BLOCK, num_rows - start), probs.size))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        picks.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(picks)


def _uniform_distinct(rng: np.random.Generator, num_rows: int, n: int, k: int) -> np.ndarray:
    """(num_rows, k) distinct indices from range(n) per row, uniformly, in random order.

    For k(k − 1) ≤ 4n, rows are drawn with replacement and rows with a repeat are redrawn (a row succeeds
    with probability ≈ exp(−k(k − 1)/2n) ≥ e^(−2)), costing O(k) per row instead of O(n); otherwise
    Gumbel-top-k."""
    if k * (k - 1) > 4 * n:
        return _sample_without_replacement(rng, num_rows, np.ones(n), k)
    picks = rng.integers(0, n, size=(num_rows, k))
    while True:
        ordered = np.sort(picks, axis=1)
        repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if repeated.size == 0:
            return picks
        picks[repeated] = rng.integers(0, n, size=(repeated.size, k))


def generate_mqar(num_examples: int, vocab_size: int = 128, seqlen: int = 64, num_pairs: int = 8,
                  power_a: float = 0.01, filler: str = "zero", seed: int = 0,
                  split: str = "train", *, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_examples`` MQAR sequences.

    Args:
        num_examples: number of sequences (> 0).
        vocab_size, seqlen, num_pairs, power_a, filler: the task (see the module docstring).
        seed: the experiment seed; with ``split`` it selects the random stream.
        split: ``"train"`` or ``"test"`` (disjoint streams for the same seed).
        seq_len: deprecated spelling of ``seqlen``.
    Returns:
        inputs (num_examples, seqlen) int64 token ids, labels (num_examples, seqlen) int64: the value
        at each query position, −100 elsewhere.
    """
    seqlen = renamed_argument("generate_mqar", "seq_len", "seqlen", seq_len, seqlen)
    check_mqar_args(vocab_size, seqlen, num_pairs, power_a, filler)
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    half = vocab_size // 2
    rows = np.arange(num_examples)[:, None]

    keys = 1 + _uniform_distinct(rng, num_examples, half - 1, num_pairs)
    values = half + _uniform_distinct(rng, num_examples, vocab_size - half, num_pairs)

    num_slots = (seqlen - 2 * num_pairs) // 2
    gaps = np.arange(1, num_slots + 1, dtype=np.float64)
    slot_probs = power_a * gaps ** (power_a - 1)
    slots = _sample_without_replacement(rng, num_examples, slot_probs / slot_probs.sum(), num_pairs)
    query_positions = 2 * num_pairs + 2 * slots

    if filler == "zero":
        inputs = np.zeros((num_examples, seqlen), dtype=np.int64)
    else:
        inputs = rng.integers(0, vocab_size, size=(num_examples, seqlen), dtype=np.int64)
    inputs[:, 0:2 * num_pairs:2] = keys
    inputs[:, 1:2 * num_pairs:2] = values
    inputs[rows, query_positions] = keys
    labels = np.full((num_examples, seqlen), IGNORE_INDEX, dtype=np.int64)
    labels[rows, query_positions] = values
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def mqar_datasets(config: MQARConfig) -> dict[str, torch.utils.data.TensorDataset]:
    """Train and test TensorDatasets of (inputs, labels) for ``config``."""
    config.validate()
    task = dict(vocab_size=config.vocab_size, seqlen=config.seqlen, num_pairs=config.num_pairs,
                power_a=config.power_a, filler=config.filler, seed=config.seed)
    return {split: torch.utils.data.TensorDataset(*generate_mqar(size, split=split, **task))
            for split, size in (("train", config.num_train), ("test", config.num_test))}
