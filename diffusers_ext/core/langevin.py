"""Langevin dynamics: the update, its step sizes, and temperature schedules.

    x_{k+1} = x_k + delta grad log p(x_k) + sqrt(2 delta T) xi,   xi ~ N(0, I)

At temperature T = 1 the chain samples p; lowering T towards 0 over the iterations (simulated
annealing) turns the update into gradient ascent on log p. Step sizes are per sample: every
function that takes a batch treats dimension 0 as the batch and never mixes samples.
"""

import math
from typing import Union

import torch

from ._tensors import Scalar, append_dims, as_float_tensor, cast_like

TEMPERATURE_SCHEDULES = ("constant", "linear", "geometric")


def langevin_step(
    sample: torch.Tensor,
    score: torch.Tensor,
    step_size: Scalar,
    noise: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """x + delta score + sqrt(2 delta T) noise.

    Args:
        sample: x, shape (B, ...).
        score: grad log p(x), shape of `sample`.
        step_size: delta, a float or one value per sample, shape (B,).
        noise: xi ~ N(0, I), shape of `sample`.
        temperature: T >= 0; T = 0 is the gradient-ascent step x + delta score.
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is negative; use T >= 0 (1 samples, 0 is gradient ascent).")
    delta = as_float_tensor(step_size)
    if delta.ndim == 1:
        delta = append_dims(delta, sample.ndim)
    delta = cast_like(delta, sample)
    return sample + delta * score + (2 * delta * temperature).sqrt() * noise


def _per_sample_norm(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).norm(dim=1)


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, alpha: Scalar = 1.0) -> torch.Tensor:
    """delta = 2 alpha (r ||xi|| / ||grad log p||)^2, one value per sample, shape (B,).

    Song et al. 2021, Algorithms 4 (VE, alpha = 1) and 5 (VP, alpha = alphabar_t / alphabar_s of
    the step taken on the sampling grid). Norms are taken per sample, so one sample's step never
    depends on the rest of the batch. Computed in float32 at least.
    """
    dtype = torch.promote_types(score.dtype, torch.float32)
    noise_norm = _per_sample_norm(noise.to(dtype))
    score_norm = _per_sample_norm(score.to(dtype)).clamp(min=torch.finfo(dtype).tiny)
    alpha = as_float_tensor(alpha).to(device=score.device, dtype=dtype)
    return 2 * alpha * (snr * noise_norm / score_norm) ** 2


def annealed_step_size(sigma: Scalar, sigma_min: Scalar, epsilon: float) -> torch.Tensor:
    """NCSN's a_i = epsilon sigma_i^2 / sigma_L^2 (Song & Ermon 2019, Algorithm 1).

    Their update x + (a_i / 2) s + sqrt(a_i) z is `langevin_step` with delta = a_i / 2.
    """
    sigma, sigma_min = as_float_tensor(sigma), as_float_tensor(sigma_min)
    return epsilon * sigma**2 / sigma_min**2


def temperature_at(
    index: int, num_steps: int, start: float = 1.0, end: Union[float, None] = None, schedule: str = "linear"
) -> float:
    """Temperature of step `index` of `num_steps`, moving from `start` to `end`.

    "constant" (or end=None) keeps `start`. "linear" interpolates; "geometric" interpolates
    log T and needs both ends positive. The last step has temperature `end`.
    """
    if schedule not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"temperature schedule {schedule!r} is not supported; use one of {TEMPERATURE_SCHEDULES}.")
    if end is None or schedule == "constant" or num_steps <= 1:
        return start
    fraction = index / (num_steps - 1)
    if schedule == "linear":
        return start + fraction * (end - start)
    if start <= 0 or end <= 0:
        raise ValueError(f"a geometric temperature schedule needs positive ends, got {start} and {end}.")
    return math.exp(math.log(start) + fraction * (math.log(end) - math.log(start)))
