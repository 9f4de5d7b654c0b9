"""Image-sequence classification data: pixels as tokens, one class label per image.

- :func:`lra_image_datasets`: LRA-Image, i.e. CIFAR-10 in grayscale as 1024-token sequences of 256
  levels, read from the python batches the user already has (``data_batch_1..5`` and ``test_batch``,
  as in ``cifar-10-python.tar.gz``). Nothing is downloaded. The 50,000 training images are split
  45,000 / 5,000 into train / validation by a fixed seed; the 10,000 test images are the test split.
- :func:`digits_datasets`: the offline substitute, scikit-learn's bundled 8×8 handwritten digits (1,797
  images, 17 gray levels): 64 tokens, or bilinearly upsampled to 32×32 = 1024 tokens; levels kept (17) or
  rescaled to 256. Split train / validation / test in LRA's proportions (45 : 5 : 10) by a fixed seed.
  Results on it are results on a substitute, not on LRA-Image: :data:`DIGITS_SOURCE` says so.

Every function returns ``{"train", "val", "test"}`` TensorDatasets of (tokens (n, seqlen) int64 in
[0, levels), labels (n,) int64 in [0, 10)).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
DIGITS_SOURCE = "scikit-learn 8x8 digits (offline substitute for LRA-Image)"
LRA_SOURCE = "LRA-Image (grayscale CIFAR-10)"
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # TensorFlow's rgb_to_grayscale, which LRA uses
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


def _split(tokens: torch.Tensor, labels: torch.Tensor, num_val: int, num_test: int, seed: int) -> dict:
    """Shuffle with ``seed`` and cut into test (first), validation, train TensorDatasets."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    tokens, labels = tokens[order], labels[order]
    cuts = {"test": slice(0, num_test), "val": slice(num_test, num_test + num_val),
            "train": slice(num_test + num_val, None)}
    return {name: torch.utils.data.TensorDataset(tokens[cut], labels[cut]) for name, cut in cuts.items()}


def digits_datasets(side: int = 8, levels: int = 256, seed: int = 0) -> dict[str, torch.utils.data.TensorDataset]:
    """scikit-learn's digits as token sequences (a substitute for LRA-Image).

    Args:
        side: 8 (the images as they are, 64 tokens) or 32 (bilinear upsampling, 1024 tokens).
        levels: 17 (the bundled gray levels 0..16, only with side=8) or 256 (rescaled to 0..255).
        seed: the split's shuffle.
    Returns:
        {"train": 1,347, "val": 150, "test": 300 images} of (tokens (n, side²) int64, labels (n,) int64).
    """
    if side not in (8, 32):
        raise ValueError(f"side must be 8 or 32, got {side!r}")
    if levels not in (17, 256):
        raise ValueError(f"levels must be 17 or 256, got {levels!r}")
    if levels == 17 and side != 8:
        raise ValueError("levels=17 keeps the raw gray levels and needs side=8; upsampling uses levels=256")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits task needs scikit-learn: pip install 'lambdaskip[train]'") from error
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()  # (1797, 8, 8), values 0..16
    labels = torch.from_numpy(bunch.target).long()
    if levels == 256:
        images = images * (255.0 / 16.0)
    if side == 32:
        images = F.interpolate(images[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    tokens = images.round().clamp(0, levels - 1).long().flatten(1)
    num_test, num_val = round(len(labels) * 10 / 60), round(len(labels) * 5 / 60)
    return _split(tokens, labels, num_val, num_test, seed)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR python batches contain: dicts, lists, bytes, str and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,) int64) from one CIFAR-10 python batch."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
    with open(path, "rb") as file:
        batch = _ArrayUnpickler(file, encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path} is not a CIFAR-10 python batch: data {data.shape}, labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def grayscale_tokens(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 images (n, 3, H, W) -> (n, H·W) int64 tokens in [0, 256), as TF's rgb_to_grayscale."""
    weights = np.asarray(GRAYSCALE_WEIGHTS, dtype=np.float32)[None, :, None, None]
    gray = (images.astype(np.float32) / 255.0 * weights).sum(axis=1)
    return torch.from_numpy(np.clip(gray * 255.5, 0, 255).astype(np.int64).reshape(len(images), -1))


def lra_image_datasets(root: str | Path, seed: int = 0,
                       num_val: int = 5_000) -> dict[str, torch.utils.data.TensorDataset]:
    """LRA-Image from local CIFAR-10 python batches.

    Args:
        root: the folder holding ``data_batch_1`` … ``data_batch_5`` and ``test_batch``
            (``cifar-10-batches-py`` after unpacking the official archive).
        seed: the shuffle that splits the 50,000 training images.
        num_val: images held out for validation (45k/5k by default).
    Returns:
        {"train": 45,000, "val": 5,000, "test": 10,000 images} of (tokens (n, 1024), labels (n,)).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {root}")
    parts = [_read_cifar_batch(root / name) for name in CIFAR_TRAIN_BATCHES]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
    if not 0 < num_val < len(train_labels):
        raise ValueError(f"num_val must be in (0, {len(train_labels)}), got {num_val}")
    test_images, test_labels = _read_cifar_batch(root / CIFAR_TEST_BATCH)
    splits = _split(grayscale_tokens(train_images), train_labels, num_val, 0, seed)
    splits["test"] = torch.utils.data.TensorDataset(grayscale_tokens(test_images), torch.from_numpy(test_labels))
    return splits
