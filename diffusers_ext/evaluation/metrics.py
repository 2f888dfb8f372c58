"""Distances between sample sets."""

from typing import Optional

import torch


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, generator: Optional[torch.Generator] = None
) -> float:
    """Sliced 2-Wasserstein distance between two point clouds of equal size (n, d).

    SW_2(x, y)^2 averages, over random unit directions theta, the squared 1-D Wasserstein-2
    distance between the projections <x, theta> and <y, theta>, which for equal sample sizes
    is the mean squared difference of the sorted projections (Bonneel et al. 2015).
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be (n, d) with equal n, got {tuple(x.shape)} and {tuple(y.shape)}.")
    directions = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)

    x_projected = torch.sort(x.double() @ directions, dim=0).values
    y_projected = torch.sort(y.double() @ directions, dim=0).values
    return float((x_projected - y_projected).pow(2).mean().sqrt())
