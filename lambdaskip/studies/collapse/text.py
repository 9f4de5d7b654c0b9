"""Inputs for collapse studies: the bundled text sample, a built-in tokenizer, a seeded embedding.

- Text is split into passages at blank lines; each passage yields non-overlapping windows of ``seqlen``
  tokens (a passage shorter than ``seqlen`` yields none), taken first windows first. The bundled sample
  (``lambdaskip/data/excerpts.txt``, sources in ``ATTRIBUTION.md``) has 33 public-domain passages of
  more than 128 tokens each, so the default study takes the first 128 tokens of each, like the paper's
  32 Wikipedia excerpts of ≥ 128 tokens.
- The built-in tokenizer lowercases, splits into words (letters/digits, with an inner apostrophe) and
  single punctuation marks, and hashes each token into a fixed vocabulary (CRC-32 mod ``vocab_size``),
  so any text has ids without a vocabulary file. ``hf_tokenizer`` loads a locally cached Hugging Face
  tokenizer instead (offline; ``transformers`` is optional).
- Embedding: token id → row of a seeded N(0, 1) table (vocab_size, d_model); no positional encoding.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from importlib import resources

import torch

HASH_VOCAB_SIZE = 16384
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


class TextInputError(ValueError):
    """A text source that cannot give the requested input (unreadable, too short, missing tokenizer)."""


def tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks, in order."""
    return _TOKEN.findall(text.lower())


def hash_encode(text: str, vocab_size: int = HASH_VOCAB_SIZE) -> list[int]:
    """Token ids in [0, vocab_size): CRC-32 of each token of :func:`tokenize`, modulo vocab_size."""
    return [zlib.crc32(token.encode("utf-8")) % vocab_size for token in tokenize(text)]


def hf_tokenizer(name: str) -> tuple[Callable[[str], list[int]], int]:
    """``(encode, vocab_size)`` from a Hugging Face tokenizer available locally (never downloads).

    Raises:
        TextInputError: transformers is not installed, or ``name`` is not in the local cache.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise TextInputError("--hf-tokenizer needs the optional package transformers "
                             "(pip install transformers); it is not installed") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError/HF errors for missing models
        raise TextInputError(f"tokenizer {name!r} is not available locally (offline only): "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]), len(tokenizer)


def bundled_text() -> str:
    """The bundled public-domain sample (33 passages separated by blank lines)."""
    return resources.files("lambdaskip").joinpath("data/excerpts.txt").read_text(encoding="utf-8")


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``. Raises TextInputError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise TextInputError(f"cannot read text file {path!r}: {err.strerror if isinstance(err, OSError) else err}"
                             ) from err


def passages(text: str) -> list[str]:
    """The non-empty blocks of ``text`` separated by blank lines."""
    return [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]


def token_windows(text: str, encode: Callable[[str], list[int]], seqlen: int, count: int) -> torch.Tensor:
    """``count`` non-overlapping windows of ``seqlen`` token ids.

    Windows are taken round-robin: the first window of every passage, then the second ones, and so on,
    so distinct passages come first and one long passage still yields many windows.

    Returns:
        (count, seqlen) int64.
    Raises:
        TextInputError: no passage has ``seqlen`` tokens, or the text has fewer than ``count`` windows (never
        a silently smaller batch; the message gives how many there are).
    """
    per_passage, longest = [], 0
    for passage in passages(text):
        ids = encode(passage)
        longest = max(longest, len(ids))
        per_passage.append([ids[start:start + seqlen] for start in range(0, len(ids) - seqlen + 1, seqlen)])
    rounds = max((len(w) for w in per_passage), default=0)
    windows = [w[r] for r in range(rounds) for w in per_passage if r < len(w)]
    if not windows:
        raise TextInputError(f"the text is shorter than the requested {seqlen} tokens per sequence: its longest "
                             f"passage (blocks split at blank lines) has {longest} tokens; lower --seqlen")
    if len(windows) < count:
        raise TextInputError(f"--excerpts {count} asks for more sequences than the text has: it gives "
                             f"{len(windows)} windows of {seqlen} tokens (from {len(per_passage)} passages); "
                             f"use --excerpts {len(windows)} or fewer, or a shorter --seqlen")
    return torch.tensor(windows[:count], dtype=torch.int64)


def embed(ids: torch.Tensor, d_model: int, vocab_size: int, seed: int) -> torch.Tensor:
    """Rows of a seeded N(0, 1) embedding table (vocab_size, d_model).

    Args:
        ids: (batch, seqlen) int64 in [0, vocab_size).
    Returns:
        (batch, seqlen, d_model) float32.
    """
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab_size, d_model, generator=generator)
    return table[ids]


def gaussian_inputs(count: int, seqlen: int, d_model: int, seed: int) -> torch.Tensor:
    """(count, seqlen, d_model) float32 N(0, 1) tokens from ``seed``."""
    return torch.randn(count, seqlen, d_model, generator=torch.Generator().manual_seed(seed))
