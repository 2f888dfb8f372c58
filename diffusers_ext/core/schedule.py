"""Variance-preserving noise schedules: betas, alphabar, SNR and the forward marginal.

Notation (Ho et al. 2020): alpha_t = 1 - beta_t, alphabar_t = prod_{i <= t} alpha_i,
x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps and SNR(t) = alphabar_t / (1 - alphabar_t).
Timestep indices run from 0 to T - 1 as in diffusers; the data level x_0 has alphabar = 1 and
is addressed by index -1 where a function takes indices.

Every schedule is computed in float64; callers cast where they need float32.
"""

import math
from typing import Optional, Sequence, Union

import torch

from ._tensors import as_float_tensor, cast_like

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def cosine_betas(num_train_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule alphabar(t) = cos^2(((t / T + s) / (1 + s)) pi / 2).

    Nichol & Dhariwal 2021, equation 17, with s = `offset`; each beta is capped at `max_beta`
    so that the last steps stay finite. Shape (T,), float64.
    """

    def alphabar(fraction: float) -> float:
        return math.cos((fraction + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [
        min(1 - alphabar((i + 1) / num_train_timesteps) / alphabar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Optional[Union[Sequence[float], torch.Tensor]] = None,
) -> torch.Tensor:
    """Build the betas of a named schedule, or take `trained_betas` as given. Shape (T,), float64.

    The names and formulas are those of diffusers' DDPMScheduler: "linear" (Ho et al. 2020),
    "scaled_linear" (linear in sqrt(beta), used by latent diffusion), "squaredcos_cap_v2"
    (cosine) and "sigmoid" (a logistic ramp from beta_start to beta_end over [-6, 6]).
    """
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float64).flatten()
        if betas.numel() != num_train_timesteps:
            raise ValueError(
                f"trained_betas has {betas.numel()} entries but num_train_timesteps is {num_train_timesteps}; "
                "pass one beta per training timestep."
            )
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train_timesteps)
    elif beta_schedule == "sigmoid":
        ramp = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64))
        betas = ramp * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(
            f"beta_schedule={beta_schedule!r} is not supported; use one of {BETA_SCHEDULES} or pass trained_betas."
        )

    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError("every beta must lie in (0, 1]; check beta_start, beta_end or trained_betas.")
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that alphabar_{T-1} = 0 while alphabar_0 is kept (Lin et al. 2024, Algorithm 1).

    sqrt(alphabar) is shifted so its last value is 0 and scaled so its first value is unchanged;
    betas are then recovered from the ratios of consecutive alphabar. Shape (T,), float64.
    """
    sqrt_alphabar = torch.cumprod(1 - betas.to(torch.float64), dim=0).sqrt()
    first, last = sqrt_alphabar[0].clone(), sqrt_alphabar[-1].clone()

    sqrt_alphabar = (sqrt_alphabar - last) * first / (first - last)

    alphabar = sqrt_alphabar**2
    alphas = torch.cat([alphabar[:1], alphabar[1:] / alphabar[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alphabar_t = prod_{i <= t} (1 - beta_i). Shape (T,), in the dtype of `betas`."""
    return torch.cumprod(1 - betas, dim=0)


def snr(alphabar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alphabar / (1 - alphabar); infinite at alphabar = 1, zero at alphabar = 0."""
    return alphabar / (1 - alphabar)


def alphabar_at(alphas_cumprod: torch.Tensor, timesteps: Union[int, torch.Tensor]) -> torch.Tensor:
    """Look up alphabar at timestep indices; index -1 is the data level, alphabar = 1.

    `timesteps` is an int or an integer tensor of any shape; the result has its shape and the
    dtype and device of `alphas_cumprod`.
    """
    index = torch.as_tensor(timesteps, device=alphas_cumprod.device).long()
    T = alphas_cumprod.shape[0]
    if bool(((index < -1) | (index >= T)).any()):
        raise ValueError(f"timesteps must lie in [-1, {T - 1}] for a schedule of {T} steps, got {timesteps}.")

    one = torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    return torch.where(index >= 0, alphas_cumprod[index.clamp(min=0)], one)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphabar_t: Union[float, torch.Tensor]) -> torch.Tensor:
    """Sample the forward marginal q(x_t | x_0): x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise.

    `alphabar_t` broadcasts against `x0` (a float, or shape (B, 1, ..., 1)); the coefficients are
    computed in its dtype and cast to the sample's.
    """
    alphabar_t = as_float_tensor(alphabar_t)
    gamma = cast_like(alphabar_t.sqrt(), x0)
    sigma = cast_like((1 - alphabar_t).sqrt(), x0)
    return gamma * x0 + sigma * noise
