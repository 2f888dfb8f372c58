"""Small tensor helpers shared by the core math modules."""

from typing import Union

import torch

Scalar = Union[float, torch.Tensor]


def as_float_tensor(value: Scalar) -> torch.Tensor:
    """Return `value` as a floating tensor; Python numbers become float64 CPU scalars.

    Schedule coefficients are computed in this dtype and cast to the sample's dtype only when
    they multiply a sample, so a float64 alphabar keeps its precision through the formulas.
    """
    if torch.is_tensor(value):
        return value if value.is_floating_point() else value.to(torch.float64)
    return torch.tensor(value, dtype=torch.float64)


def cast_like(coefficient: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Move a coefficient to the device and dtype of `sample`."""
    return coefficient.to(device=sample.device, dtype=sample.dtype)


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so that per-sample values of shape (B,) broadcast
    against a batch of shape (B, C, H, W) (or any `ndim`)."""
    missing = ndim - values.ndim
    if missing < 0:
        raise ValueError(f"values has {values.ndim} dimensions, more than the target {ndim}.")
    return values.reshape(values.shape + (1,) * missing)
