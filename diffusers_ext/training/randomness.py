"""Random draws tied to each training example, so runs agree across process counts and resumes.

The noise, noise level and condition dropout of an example depend only on (seed, epoch, dataset
index), not on which process or micro-batch the example lands in or on how many steps ran
before. A data-parallel run therefore computes the same loss as a single-process run with the
same global batch, gradient accumulation gets the same draws as one large batch, and a run
resumed from a checkpoint repeats the draws of the run it continues.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

# Columns of `ExampleDraws.uniforms`.
TIMESTEP, DROPOUT, NOISE_LEVEL = 0, 1, 2


@dataclass
class ExampleDraws:
    """Per-example draws for one batch: `noise` (B, *sample_shape), `uniforms` (B, 3) in [0, 1)."""

    noise: torch.Tensor
    uniforms: torch.Tensor

    def timesteps(self, num_train_timesteps: int) -> torch.Tensor:
        """Uniform integer timesteps in [0, T - 1], shape (B,)."""
        steps = (self.uniforms[:, TIMESTEP] * num_train_timesteps).long()
        return steps.clamp(max=num_train_timesteps - 1)

    def dropped(self, probability: float) -> torch.Tensor:
        """Boolean (B,): whether each example's condition is replaced by the null class."""
        return self.uniforms[:, DROPOUT] < probability

    def log_uniform(self, low: float, high: float) -> torch.Tensor:
        """Values log-uniform in [low, high], shape (B,)."""
        log_low, log_high = np.log(low), np.log(high)
        return torch.exp(log_low + self.uniforms[:, NOISE_LEVEL] * (log_high - log_low))

    def to(self, device) -> "ExampleDraws":
        return ExampleDraws(self.noise.to(device), self.uniforms.to(device))


class ExampleRandomness:
    """Source of `ExampleDraws`, seeded per example from (seed, epoch, index) with numpy's SeedSequence."""

    def __init__(self, seed: int):
        self.seed = seed

    def generator(self, epoch: int, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def draw(self, indices: Sequence[int], epoch: int, sample_shape: Tuple[int, ...]) -> ExampleDraws:
        """Draws for the examples at dataset `indices` in `epoch`, on the CPU in float32 / float64."""
        noise, uniforms = [], []
        for index in indices:
            generator = self.generator(epoch, int(index))
            uniforms.append(torch.rand(3, generator=generator, dtype=torch.float64))
            noise.append(torch.randn(sample_shape, generator=generator))
        return ExampleDraws(torch.stack(noise), torch.stack(uniforms))
