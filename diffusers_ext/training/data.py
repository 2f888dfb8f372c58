"""Training data: the bundled digits, image folders and datasets-library datasets.

Every source becomes a `datasets.Dataset` with an image column and, for conditional training,
an integer label column. A transform turns rows into `pixel_values` (B, C, H, W) in [-1, 1] and
`labels` (B,).
"""

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
from PIL import Image

from ..data.mnist import MNIST_5K, mnist_5k_dataset

GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class TrainingData:
    """A dataset ready for a DataLoader, with what the model builder needs to know about it."""

    dataset: "object"
    num_channels: int
    num_classes: Optional[int]


def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.startswith(".") or os.path.exists(name)


def load_raw_dataset(dataset_name: Optional[str], train_data_dir: Optional[str]):
    """Load the training split of the requested source as a `datasets.Dataset`."""
    import datasets

    if dataset_name == MNIST_5K:
        return mnist_5k_dataset()
    if train_data_dir is not None:
        return datasets.load_dataset("imagefolder", data_dir=train_data_dir, split="train")

    if _looks_like_path(dataset_name):
        if not os.path.exists(dataset_name):
            raise ValueError(f"--dataset_name {dataset_name!r} does not exist; pass mnist-5k or an existing path.")
        if os.path.exists(os.path.join(dataset_name, "dataset_info.json")) or os.path.exists(
            os.path.join(dataset_name, "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(dataset_name)
        else:
            loaded = datasets.load_dataset(dataset_name)
    else:
        loaded = datasets.load_dataset(dataset_name)

    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"dataset {dataset_name!r} has no 'train' split; its splits are {list(loaded)}.")
        loaded = loaded["train"]
    return loaded


def _fit_image(image: Image.Image, resolution: int, pad_small: bool, center_crop: bool = True) -> Image.Image:
    """Zero-pad an image that fits (when `pad_small`), else resize its short side and crop.

    The crop is centred, or at a random position when `center_crop` is False.
    """
    width, height = image.size
    if pad_small and width <= resolution and height <= resolution:
        canvas = Image.new(image.mode, (resolution, resolution))
        canvas.paste(image, ((resolution - width) // 2, (resolution - height) // 2))
        return canvas

    scale = resolution / min(width, height)
    resized = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), Image.BICUBIC)
    spare_x, spare_y = resized.width - resolution, resized.height - resolution
    if center_crop:
        left, top = spare_x // 2, spare_y // 2
    else:
        left = int(torch.randint(spare_x + 1, ()))
        top = int(torch.randint(spare_y + 1, ()))
    return resized.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image, mode: str, resolution: int, pad_small: bool, center_crop: bool = True) -> torch.Tensor:
    """Convert a PIL image to a float tensor (C, resolution, resolution) in [-1, 1]."""
    fitted = _fit_image(image.convert(mode), resolution, pad_small, center_crop)
    pixels = np.asarray(fitted, dtype=np.float32) / 127.5 - 1
    if pixels.ndim == 2:
        pixels = pixels[None]
    else:
        pixels = pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def make_transform(
    image_column: str,
    label_column: Optional[str],
    mode: str,
    resolution: int,
    pad_small: bool,
    random_flip: bool,
    center_crop: bool = True,
) -> Callable[[Dict], Dict]:
    """Build a batched `datasets` transform producing `pixel_values` and, if labelled, `labels`."""

    def transform(batch: Dict) -> Dict:
        pixels = [image_to_tensor(image, mode, resolution, pad_small, center_crop) for image in batch[image_column]]
        if random_flip:
            pixels = [p.flip(-1) if torch.rand(()) < 0.5 else p for p in pixels]
        output = {"pixel_values": pixels}
        if label_column is not None:
            output["labels"] = [int(label) for label in batch[label_column]]
        return output

    return transform


def collate(examples) -> Dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
    if "index" in examples[0]:
        batch["indices"] = torch.tensor([example["index"] for example in examples], dtype=torch.long)
    return batch


def _count_classes(dataset, label_column: str) -> int:
    feature = dataset.features[label_column]
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    labels = np.asarray(dataset[label_column])
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            f"column {label_column!r} must hold non-negative integer class labels; got dtype {labels.dtype}. "
            "Pass --label_column none for unconditional training."
        )
    return int(labels.max()) + 1


def prepare_training_data(args) -> TrainingData:
    """Load, check and transform the dataset named by the parsed arguments."""
    dataset = load_raw_dataset(args.dataset_name, args.train_data_dir)
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))

    columns = dataset.column_names
    if args.image_column not in columns:
        raise ValueError(f"image column {args.image_column!r} not found; the dataset has {columns}. Set --image_column.")
    label_column = None if args.label_column.lower() == "none" else args.label_column
    if label_column is not None and label_column not in columns:
        raise ValueError(
            f"label column {label_column!r} not found; the dataset has {columns}. Set --label_column, "
            "or --label_column none for unconditional training."
        )
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty.")

    first = dataset[0][args.image_column]
    if not isinstance(first, Image.Image):
        raise ValueError(f"column {args.image_column!r} contains {type(first).__name__} values, not images; set --image_column.")
    mode = "L" if first.mode in GRAYSCALE_MODES else "RGB"
    num_classes = _count_classes(dataset, label_column) if label_column is not None else None

    pad_small = args.dataset_name == MNIST_5K
    transform = make_transform(
        args.image_column, label_column, mode, args.resolution, pad_small, args.random_flip, args.center_crop
    )
    return TrainingData(dataset.with_transform(transform), num_channels=1 if mode == "L" else 3, num_classes=num_classes)


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose examples also carry their `index`, which keys their random draws."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict:
        example = dict(self.dataset[index])
        example["index"] = index
        return example


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch) alone.

    Every process and every resumed run gets the same order for an epoch, which accelerate then
    splits across processes batch by batch. `set_epoch` selects the permutation.
    """

    def __init__(self, num_examples: int, seed: int):
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples
