"""Loaders for the real datasets that ship inside Python packages (no download at run time)."""

from .mnist import MNIST_5K, mnist_5k_arrays, mnist_5k_dataset

__all__ = ["MNIST_5K", "mnist_5k_arrays", "mnist_5k_dataset"]
