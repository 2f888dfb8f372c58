"""Per-timestep loss weights for any prediction target.

Every weighting except "uniform" is defined as a weight w(t) on the x0 error ||x0_hat - x0||^2
and carried to the model's target by the exact relations (a = alphabar_t, SNR = a / (1 - a)):

    ||x0_hat - x0||^2 = ||eps_hat - eps||^2 / SNR = (1 - a) ||v_hat - v||^2
                      = (1 - a)^2 / a ||score_hat - score||^2

so the returned weight multiplies the plain MSE of whatever the model predicts.

    uniform   1 on the target itself (Ho et al. 2020 "simple" loss when the target is epsilon)
    snr       w = SNR(t); equals uniform epsilon-MSE for every target
    min_snr   w = min(SNR(t), gamma) (Hang et al. 2023)
    elbo      w = (SNR(t-1) - SNR(t)) / 2, the ELBO term L_{t-1} of Ho et al. 2020 as an x0 loss
              with the posterior variance (Kingma et al. 2021 write it as this SNR difference);
              at t = 0, w = 1 / (2 beta_0), the Gaussian decoder -log p(x_0 | x_1) with variance beta_0
"""

import torch

from .parameterization import check_prediction_type
from .schedule import alphabar_at, snr

WEIGHTINGS = ("uniform", "elbo", "snr", "min_snr")
TARGETS = ("epsilon", "sample", "v_prediction", "score")


def x0_error_per_target_error(alphabar: torch.Tensor, target: str) -> torch.Tensor:
    """Factor f with ||x0_hat - x0||^2 = f ||target_hat - target||^2 at fixed x_t.

    Infinite where alphabar = 0 for the "epsilon" and "score" targets, whose errors carry no
    information about x0 there.
    """
    check_prediction_type(target, TARGETS)
    if target == "sample":
        return torch.ones_like(alphabar)
    if target == "v_prediction":
        return 1 - alphabar
    if target == "epsilon":
        return (1 - alphabar) / alphabar
    return (1 - alphabar) ** 2 / alphabar


def elbo_x0_weight(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x0-error weight of the ELBO term at each timestep: (SNR(t-1) - SNR(t)) / 2, or 1 / (2 beta_0) at t = 0."""
    alphabar = alphabar_at(alphas_cumprod, timesteps)
    previous = timesteps.clamp(min=1) - 1
    snr_gap = snr(alphabar_at(alphas_cumprod, previous)) - snr(alphabar)
    decoder = 1 / (2 * (1 - alphabar))
    return torch.where(timesteps > 0, snr_gap / 2, decoder)


def loss_weight(
    weighting: str,
    alphas_cumprod: torch.Tensor,
    timesteps: torch.Tensor,
    target: str,
    min_snr_gamma: float = 5.0,
) -> torch.Tensor:
    """Weights that multiply the per-sample MSE of `target` under the chosen weighting.

    Args:
        weighting: "uniform", "elbo", "snr" or "min_snr".
        alphas_cumprod: alphabar for every training timestep, shape (T,).
        timesteps: integer timestep of each sample, shape (B,).
        target: the model's prediction type, "epsilon", "sample", "v_prediction" or "score".
        min_snr_gamma: the cap gamma of "min_snr".

    Returns:
        Shape (B,), the dtype of `alphas_cumprod`, on the device of `timesteps`. Computed in float64.

    Raises:
        ValueError: for an unknown weighting or target, or where the weight is infinite
            ("elbo" with an epsilon or score target at alphabar = 0).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is not supported; use one of {WEIGHTINGS}.")
    check_prediction_type(target, TARGETS)

    table = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)
    timesteps = timesteps.long()
    alphabar = alphabar_at(table, timesteps)

    if weighting == "uniform":
        weights = torch.ones_like(alphabar)
    else:
        factor = x0_error_per_target_error(alphabar, target)
        snr_weight = {
            "sample": snr(alphabar),
            "epsilon": torch.ones_like(alphabar),
            "v_prediction": alphabar,
            "score": 1 - alphabar,
        }[target]  # SNR(t) * factor, written without the 0 * inf at alphabar = 0

        if weighting == "snr":
            weights = snr_weight
        elif weighting == "min_snr":
            weights = torch.minimum(snr_weight, min_snr_gamma * factor)
        else:
            weights = elbo_x0_weight(table, timesteps) * factor

    if not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"{weighting} weighting of a {target!r} target is infinite at alphabar = 0 (zero terminal SNR); "
            "use prediction_type 'v_prediction' or 'sample' with this weighting."
        )
    return weights.to(alphas_cumprod.dtype)


def dsm_weight(sigmas: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = sigma^2 for denoising score matching (Song & Ermon 2019).

    With it, lambda(sigma) ||s_theta(x + sigma z, sigma) + z / sigma||^2 equals the epsilon-MSE
    ||eps_hat - z||^2 for eps_hat = -sigma s_theta.
    """
    return sigmas**2
