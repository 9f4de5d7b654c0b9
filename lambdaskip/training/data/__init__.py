"""The trainer's data: MQAR (:mod:`.mqar`) and image-sequence classification (:mod:`.image`)."""
from __future__ import annotations

from lambdaskip.training.data.image import (DIGITS_SOURCE, LRA_SOURCE, NUM_CLASSES, digits_datasets,
                                            lra_image_datasets)
from lambdaskip.training.data.mqar import IGNORE_INDEX, MQARConfig, generate_mqar, mqar_datasets

__all__ = ["DIGITS_SOURCE", "IGNORE_INDEX", "LRA_SOURCE", "MQARConfig", "NUM_CLASSES", "digits_datasets",
           "generate_mqar", "load_data", "lra_image_datasets", "mqar_datasets"]


def load_data(config) -> tuple[dict, dict]:
    """The datasets of a :class:`~lambdaskip.training.TrainConfig`: (splits, task facts).

    splits maps "train"/"eval" (and "test" for images) to TensorDatasets; facts hold vocab size, outputs,
    head kind, sequence length and the data source label.
    """
    if config.task == "mqar":
        data = mqar_datasets(config.mqar())
        facts = dict(vocab=config.vocab_size, outputs=config.vocab_size, head="token", seqlen=config.seqlen,
                     source="MQAR (lambdaskip generator)")
        return {"train": data["train"], "eval": data["test"]}, facts
    if config.image == "digits":
        data, source = digits_datasets(side=config.image_side, levels=256, seed=config.seed), DIGITS_SOURCE
    else:
        data, source = lra_image_datasets(config.image, seed=config.seed), LRA_SOURCE
    facts = dict(vocab=256, outputs=NUM_CLASSES, head="pooled", seqlen=data["train"].tensors[0].shape[1],
                 source=source)
    return {"train": data["train"], "eval": data["val"], "test": data["test"]}, facts
