"""Starting from a saved pipeline or classifier: loading, and adapting the class count.

Rule for a changed class count. The null class stays last. Classes present in both keep their
learned embedding; classes the pretrained model did not have start from its null-class
embedding, i.e. from the unconditional model, which conditioning then moves away from. A
pretrained unconditional unet gains a zero-initialised class embedding, so training starts from
exactly its unconditional behaviour. For a NoisyClassifier, shared classes keep their output
rows and new classes get zero weights and the mean of the old biases, so they start with an
average logit.
"""

import os
from typing import Optional

import torch
from diffusers.utils import logging
from diffusers import UNet2DModel

from ..models import NoisyClassifier

logger = logging.get_logger(__name__)


def _subfolder_exists(path: str, subfolder: str) -> bool:
    return not os.path.isdir(path) or os.path.isdir(os.path.join(path, subfolder))


def rebuild_with_config(model, resized_prefix: str, **changes):
    """Build a fresh model of the same class with `changes` to its config, holding `model`'s weights.

    The parameters whose names start with `resized_prefix` change shape, so they keep the new
    model's initialisation and the caller fills them.
    """
    config = {key: value for key, value in model.config.items() if not key.startswith("_")}
    adapted = type(model).from_config({**config, **changes})
    state = {name: value for name, value in model.state_dict().items() if not name.startswith(resized_prefix)}
    adapted.load_state_dict(state, strict=False)
    return adapted


def load_pretrained_unet(path: str, num_channels: int, num_classes: Optional[int], resolution: int) -> UNet2DModel:
    """Load the `unet` of a saved pipeline (local folder or Hub id), adapted to `num_classes` (+1 null class)."""
    subfolder = "unet" if _subfolder_exists(path, "unet") else None
    unet = UNet2DModel.from_pretrained(path, subfolder=subfolder)
    if unet.config.in_channels != num_channels:
        raise ValueError(
            f"the pretrained unet takes {unet.config.in_channels} channels but the data has {num_channels}; "
            "fine-tune on images with the same channels."
        )
    if unet.config.sample_size != resolution:
        raise ValueError(
            f"the pretrained unet was trained at --resolution {unet.config.sample_size}, not {resolution}; "
            f"pass --resolution {unet.config.sample_size}."
        )
    return adapt_class_embedding(unet, num_classes)


def adapt_class_embedding(unet: UNet2DModel, num_classes: Optional[int]) -> UNet2DModel:
    """Resize the unet's class table to num_classes + 1 rows by the rule in this module's docstring."""
    old_rows = unet.config.num_class_embeds
    if num_classes is None:
        return unet  # unlabelled data: a conditional unet keeps its table and trains on the null class
    new_rows = num_classes + 1
    if old_rows == new_rows:
        return unet

    adapted = rebuild_with_config(unet, "class_embedding.", num_class_embeds=new_rows)
    with torch.no_grad():
        table = adapted.class_embedding.weight
        if old_rows is None:
            table.zero_()
            logger.info(f"added a zero-initialised class embedding for {num_classes} classes plus the null class")
        else:
            old = unet.class_embedding.weight
            shared = min(old_rows - 1, num_classes)
            table[:shared] = old[:shared]
            table[shared:] = old[-1]
            logger.info(
                f"class embedding resized from {old_rows - 1} to {num_classes} classes; "
                f"{num_classes - shared} new classes start from the null-class embedding"
            )
    return adapted


def load_pretrained_classifier(path: str, num_channels: int, num_classes: int, resolution: int) -> NoisyClassifier:
    """Load a saved NoisyClassifier, with its output layer resized to `num_classes`."""
    classifier = NoisyClassifier.from_pretrained(path)
    if classifier.config.in_channels != num_channels or classifier.config.sample_size != resolution:
        raise ValueError(
            f"the pretrained classifier takes {classifier.config.in_channels}-channel "
            f"{classifier.config.sample_size}-pixel images; the data has {num_channels} channels at --resolution "
            f"{resolution}."
        )
    old_classes = classifier.config.num_classes
    if old_classes == num_classes:
        return classifier

    adapted = rebuild_with_config(classifier, "head.4.", num_classes=num_classes)
    with torch.no_grad():
        old_layer, new_layer = classifier.head[-1], adapted.head[-1]
        shared = min(old_classes, num_classes)
        new_layer.weight.zero_()
        new_layer.bias.fill_(float(old_layer.bias.mean()))
        new_layer.weight[:shared] = old_layer.weight[:shared]
        new_layer.bias[:shared] = old_layer.bias[:shared]
    logger.info(f"classifier head resized from {old_classes} to {num_classes} classes")
    return adapted


def load_pretrained_scheduler(path: str, scheduler_cls, **overrides):
    """Load the noise schedule saved beside a pretrained model (its `scheduler` subfolder), with `overrides`."""
    config = scheduler_cls.load_config(path, subfolder="scheduler")
    return scheduler_cls.from_config(config, **overrides)
