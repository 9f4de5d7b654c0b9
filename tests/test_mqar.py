"""The MQAR generator's invariants and the image-sequence loaders (digits, LRA-Image from CIFAR batches)."""
import pickle

import numpy as np
import pytest
import torch

from lambdaskip.training.data.image import (CIFAR_TEST_BATCH, CIFAR_TRAIN_BATCHES, digits_datasets,
                                           grayscale_tokens, lra_image_datasets)
from lambdaskip.training.data.mqar import IGNORE_INDEX, MQARConfig, generate_mqar, mqar_datasets

TASKS = [dict(vocab_size=32, seqlen=24, num_pairs=3),
         dict(vocab_size=128, seqlen=67, num_pairs=8),     # odd length: one unused position at the end
         dict(vocab_size=20, seqlen=64, num_pairs=9),      # keys nearly exhausted (9 of 9)
         dict(vocab_size=8192, seqlen=512, num_pairs=64)]  # the paper's size


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("filler", ["zero", "random"])
def test_invariants(task, filler):
    n, pairs, half = 50, task["num_pairs"], task["vocab_size"] // 2
    inputs, labels = generate_mqar(n, filler=filler, seed=3, **task)
    assert inputs.shape == labels.shape == (n, task["seqlen"]) and inputs.dtype == labels.dtype == torch.int64
    keys, values = inputs[:, 0:2 * pairs:2], inputs[:, 1:2 * pairs:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < task["vocab_size"])).all()
    for row in range(n):
        assert len(set(keys[row].tolist())) == pairs and len(set(values[row].tolist())) == pairs
        queries = torch.nonzero(labels[row] != IGNORE_INDEX).flatten()
        assert len(queries) == pairs and (queries >= 2 * pairs).all() and ((queries - 2 * pairs) % 2 == 0).all()
        # every key queried exactly once, labelled with its own value
        assert sorted(inputs[row, queries].tolist()) == sorted(keys[row].tolist())
        value_of = dict(zip(keys[row].tolist(), values[row].tolist()))
        assert all(value_of[int(inputs[row, q])] == int(labels[row, q]) for q in queries)
        others = torch.ones(task["seqlen"], dtype=torch.bool)
        others[:2 * pairs] = False
        others[queries] = False
        if filler == "zero":
            assert (inputs[row, others] == 0).all()
    assert (labels[:, :2 * pairs] == IGNORE_INDEX).all()
    if filler == "random":
        assert (inputs[:, 2 * pairs:] != 0).float().mean() > 0.5


def test_seeds_reproducible_and_splits_disjoint():
    task = dict(vocab_size=64, seqlen=32, num_pairs=4)
    a, b = generate_mqar(200, seed=5, **task), generate_mqar(200, seed=5, **task)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], generate_mqar(200, seed=6, **task)[0])
    data = mqar_datasets(MQARConfig(num_train=2000, num_test=300, seed=5, **task))
    train = {tuple(row) for row in data["train"].tensors[0].tolist()}
    test = [tuple(row) for row in data["test"].tensors[0].tolist()]
    assert len(test) == 300 and not train.intersection(test)
    # a test split is a stream of its own: the same whatever the size of the train split
    other = mqar_datasets(MQARConfig(num_train=100, num_test=300, seed=5, **task))
    assert torch.equal(other["test"].tensors[0], data["test"].tensors[0])


def test_power_law_prefers_short_gaps():
    inputs, labels = generate_mqar(2000, vocab_size=64, seqlen=128, num_pairs=4, power_a=0.01, seed=0)
    slots = (torch.nonzero(labels != IGNORE_INDEX)[:, 1] - 8) // 2
    counts = torch.bincount(slots, minlength=60).double()
    # p(gap) ∝ gap^(a-1): the first slot is drawn far more often than the last
    assert counts[0] > 5 * counts[-1]
    flat = generate_mqar(2000, vocab_size=64, seqlen=128, num_pairs=4, power_a=1.0, seed=0)[1]
    flat_counts = torch.bincount((torch.nonzero(flat != IGNORE_INDEX)[:, 1] - 8) // 2, minlength=60).double()
    assert flat_counts.max() < 2.5 * flat_counts.mean()


@pytest.mark.parametrize("bad, match", [
    (dict(num_pairs=0), "num_pairs"), (dict(vocab_size=10, num_pairs=8), "vocab_size"),
    (dict(seqlen=20, num_pairs=8), "seqlen"), (dict(power_a=0.0), "power_a"), (dict(filler="noise"), "filler"),
    (dict(split="val"), "split"), (dict(seed=-1), "seed"), (dict(num_examples=0), "num_examples"),
])
def test_bad_arguments(bad, match):
    kwargs = dict(num_examples=4, vocab_size=64, seqlen=64, num_pairs=8)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        generate_mqar(**kwargs)


def test_config_presets():
    paper = MQARConfig.paper()
    assert (paper.seqlen, paper.num_pairs, paper.vocab_size, paper.num_train, paper.num_test) == (512, 64, 8192,
                                                                                                      100_000, 3_000)
    with pytest.raises(ValueError, match="num_train"):
        MQARConfig(num_train=0).validate()


@pytest.mark.parametrize("side, levels", [(8, 17), (8, 256), (32, 256)])
def test_digits_shapes_and_split(side, levels):
    pytest.importorskip("sklearn")
    data = digits_datasets(side=side, levels=levels, seed=0)
    sizes = {name: len(ds) for name, ds in data.items()}
    assert sizes == {"train": 1347, "val": 150, "test": 300}
    for tokens, labels in (ds.tensors for ds in data.values()):
        assert tokens.shape[1] == side * side and tokens.dtype == labels.dtype == torch.int64
        assert tokens.min() >= 0 and tokens.max() < levels and tokens.max() > levels // 2
        assert set(labels.unique().tolist()) == set(range(10))
    again = digits_datasets(side=side, levels=levels, seed=0)
    assert torch.equal(again["test"].tensors[0], data["test"].tensors[0])
    # the splits partition the 1,797 images: each class keeps its count
    counts = sum(torch.bincount(ds.tensors[1], minlength=10) for ds in data.values())
    assert counts.sum() == 1797 and counts.min() >= 174
    reshuffled = digits_datasets(side=side, levels=levels, seed=1)
    assert not torch.equal(reshuffled["test"].tensors[1], data["test"].tensors[1])


@pytest.mark.parametrize("bad, match", [(dict(side=16), "side"), (dict(levels=64), "levels"),
                                        (dict(side=32, levels=17), "levels=17")])
def test_digits_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        digits_datasets(**bad)


def _write_fake_cifar(root, per_batch=12, seed=0):
    rng = np.random.default_rng(seed)
    for name in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist(), b"batch_label": name.encode()}
        with open(root / name, "wb") as file:
            pickle.dump(batch, file)


def test_lra_image_loader(tmp_path):
    _write_fake_cifar(tmp_path)
    data = lra_image_datasets(tmp_path, seed=0, num_val=10)
    assert {k: len(v) for k, v in data.items()} == {"train": 50, "val": 10, "test": 12}
    tokens = data["test"].tensors[0]
    assert tokens.shape == (12, 1024) and tokens.dtype == torch.int64 and 0 <= tokens.min() and tokens.max() <= 255
    with open(tmp_path / CIFAR_TEST_BATCH, "rb") as file:
        raw = pickle.load(file)[b"data"].reshape(-1, 3, 32, 32).astype(np.float64)
    gray = (0.2989 * raw[:, 0] + 0.5870 * raw[:, 1] + 0.1140 * raw[:, 2]).reshape(12, -1)
    assert (tokens.double() - torch.from_numpy(gray)).abs().max() <= 1.0
    assert torch.equal(lra_image_datasets(tmp_path, seed=0, num_val=10)["val"].tensors[0], data["val"].tensors[0])


def test_grayscale_extremes():
    images = np.stack([np.zeros((3, 2, 2), np.uint8), np.full((3, 2, 2), 255, np.uint8)])
    assert grayscale_tokens(images).tolist() == [[0] * 4, [255] * 4]


def test_lra_image_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder"):
        lra_image_datasets(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        lra_image_datasets(tmp_path)
    _write_fake_cifar(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [print]}, file)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        lra_image_datasets(tmp_path)
