"""Sampling grids over the training timesteps: spacing rules and validation of custom grids."""

from typing import Sequence

import numpy as np

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def spaced_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """Place a descending grid of `num_inference_steps` training-timestep indices.

    The three rules of Lin et al. 2024, Table 2, with diffusers' rounding, so grids match
    DDPMScheduler and DDIMScheduler entry for entry:

        linspace  round(linspace(0, T - 1, n))
        leading   arange(n) * (T // n) + steps_offset
        trailing  round(arange(T, 0, -T / n)) - 1   (starts at T - 1)

    Returns an int64 array of shape (n,), largest first.
    """
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
    if num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} exceeds num_train_timesteps={num_train_timesteps}; "
            "a sampler cannot take more steps than the model was trained on."
        )

    if timestep_spacing == "linspace":
        grid = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1]
    elif timestep_spacing == "leading":
        step_ratio = num_train_timesteps // num_inference_steps
        grid = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1] + steps_offset
    elif timestep_spacing == "trailing":
        step_ratio = num_train_timesteps / num_inference_steps
        grid = np.round(np.arange(num_train_timesteps, 0, -step_ratio)) - 1
    else:
        raise ValueError(f"timestep_spacing={timestep_spacing!r} is not supported; use one of {TIMESTEP_SPACINGS}.")

    grid = grid.astype(np.int64)
    if grid[0] >= num_train_timesteps:
        raise ValueError(
            f"'leading' spacing with steps_offset={steps_offset} and {num_inference_steps} steps reaches timestep "
            f"{grid[0]}, past the last training timestep {num_train_timesteps - 1}; use fewer steps, "
            "steps_offset=0 or timestep_spacing='trailing'."
        )
    return grid


def validate_timesteps(timesteps: Sequence[int], num_train_timesteps: int) -> np.ndarray:
    """Check a custom grid: integers, strictly descending, within [0, T - 1]. Returns int64 (n,)."""
    grid = np.asarray(timesteps)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D list of integers, got shape {grid.shape}.")
    if not np.all(np.equal(np.mod(grid, 1), 0)):
        raise ValueError(f"timesteps must be integers (training-timestep indices), got {grid.tolist()}.")

    grid = grid.astype(np.int64)
    if np.any(np.diff(grid) >= 0):
        raise ValueError(f"timesteps must be strictly descending, got {grid.tolist()}.")
    if grid[0] >= num_train_timesteps or grid[-1] < 0:
        raise ValueError(
            f"timesteps must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps={num_train_timesteps}), "
            f"got {grid[0]} to {grid[-1]}."
        )
    return grid
