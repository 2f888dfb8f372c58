"""The DDPM posterior q(x_s | x_t, x_0) between any two levels s < t, and the DDIM-eta family.

With alpha_{t|s} = alphabar_t / alphabar_s and beta_{t|s} = 1 - alpha_{t|s} (the transition
from s to t, which skips every step in between):

    mean     = [sqrt(alphabar_s) beta_{t|s} x_0 + sqrt(alpha_{t|s}) (1 - alphabar_s) x_t] / (1 - alphabar_t)
    variance = beta_{t|s} (1 - alphabar_s) / (1 - alphabar_t)

Ho et al. 2020, equations 6-7, for s = t - 1; the general form is what a sampler needs when it
skips steps. The data level has alphabar_s = 1, where the mean is x_0 and the variance 0.

DDIM (Song et al. 2021, equation 12) with sigma = eta * sqrt(posterior variance):

    x_s = sqrt(alphabar_s) x0 + sqrt(1 - alphabar_s - sigma^2) eps + sigma z

eta = 1 is the posterior above; eta = 0 is the deterministic DDIM step.

Arguments named alphabar_* are floats or tensors broadcastable to the samples. Coefficients are
computed in their dtype (float64 for Python floats) and cast to the sample's dtype.
"""

from typing import Optional, Tuple

import torch

from ._tensors import Scalar, as_float_tensor, cast_like


def _check_levels(alphabar_t: torch.Tensor, alphabar_s: torch.Tensor) -> None:
    if bool((alphabar_t >= 1).any()):
        raise ValueError("alphabar_t must be below 1: the posterior starts from a noisy level t > data.")
    if bool((alphabar_s < alphabar_t).any()):
        raise ValueError(
            "alphabar_s must be at least alphabar_t: the posterior q(x_s | x_t, x_0) needs s earlier than t."
        )


def transition_variance(alphabar_t: Scalar, alphabar_s: Scalar) -> torch.Tensor:
    """beta_{t|s} = 1 - alphabar_t / alphabar_s, the variance of q(x_t | x_s) ("fixed_large")."""
    alphabar_t, alphabar_s = as_float_tensor(alphabar_t), as_float_tensor(alphabar_s)
    _check_levels(alphabar_t, alphabar_s)
    return 1 - alphabar_t / alphabar_s


def posterior_variance(alphabar_t: Scalar, alphabar_s: Scalar) -> torch.Tensor:
    """beta_{t|s} (1 - alphabar_s) / (1 - alphabar_t), the variance of q(x_s | x_t, x_0) ("fixed_small")."""
    alphabar_t, alphabar_s = as_float_tensor(alphabar_t), as_float_tensor(alphabar_s)
    return transition_variance(alphabar_t, alphabar_s) * (1 - alphabar_s) / (1 - alphabar_t)


def posterior_mean_coefficients(alphabar_t: Scalar, alphabar_s: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (c_x0, c_xt) with posterior mean = c_x0 x_0 + c_xt x_t."""
    alphabar_t, alphabar_s = as_float_tensor(alphabar_t), as_float_tensor(alphabar_s)
    beta_ts = transition_variance(alphabar_t, alphabar_s)

    coef_x0 = alphabar_s.sqrt() * beta_ts / (1 - alphabar_t)
    coef_xt = (alphabar_t / alphabar_s).sqrt() * (1 - alphabar_s) / (1 - alphabar_t)
    return coef_x0, coef_xt


def posterior_mean(x_t: torch.Tensor, x0: torch.Tensor, alphabar_t: Scalar, alphabar_s: Scalar) -> torch.Tensor:
    """Mean of q(x_s | x_t, x_0); shape of `x_t`."""
    coef_x0, coef_xt = posterior_mean_coefficients(alphabar_t, alphabar_s)
    return cast_like(coef_x0, x_t) * x0 + cast_like(coef_xt, x_t) * x_t


def learned_range_log_variance(model_values: torch.Tensor, alphabar_t: Scalar, alphabar_s: Scalar) -> torch.Tensor:
    """Log-variance interpolated between log posterior variance and log beta_{t|s}.

    Nichol & Dhariwal 2021, equation 15: v in [-1, 1] maps to
    log sigma^2 = (v + 1) / 2 log beta_{t|s} + (1 - v) / 2 log posterior_variance.
    The posterior variance is floored at 1e-20, because it is 0 on a step to the data level.
    """
    log_upper = cast_like(transition_variance(alphabar_t, alphabar_s).log(), model_values)
    log_lower = cast_like(posterior_variance(alphabar_t, alphabar_s).clamp(min=1e-20).log(), model_values)
    fraction = (model_values + 1) / 2
    return fraction * log_upper + (1 - fraction) * log_lower


def ddim_sigma(alphabar_t: Scalar, alphabar_s: Scalar, eta: float) -> torch.Tensor:
    """sigma = eta * sqrt(posterior variance), the noise scale of a DDIM-eta step."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta={eta} is outside [0, 1]; 1 is the ancestral posterior step, 0 deterministic DDIM.")
    return eta * posterior_variance(alphabar_t, alphabar_s).sqrt()


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alphabar_s: Scalar,
    sigma: Scalar,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x_s = sqrt(alphabar_s) x0 + sqrt(1 - alphabar_s - sigma^2) eps + sigma noise.

    With `noise=None` this returns the mean of the step. `sigma` must satisfy
    sigma^2 <= 1 - alphabar_s, as `ddim_sigma` guarantees for eta in [0, 1]; the
    direction coefficient is clamped at 0 against rounding.
    """
    alphabar_s, sigma = as_float_tensor(alphabar_s), as_float_tensor(sigma)
    direction = (1 - alphabar_s - sigma**2).clamp(min=0).sqrt()

    x_s = cast_like(alphabar_s.sqrt(), x0) * x0 + cast_like(direction, x0) * eps
    if noise is not None:
        x_s = x_s + cast_like(sigma, x0) * noise
    return x_s
