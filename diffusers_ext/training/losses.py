"""Training losses built from the core math.

Each loss takes its random inputs (noise, noise levels) as arguments; `training.randomness`
draws them per example, which keeps runs reproducible across process counts and resumes.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..core._tensors import append_dims
from ..core.weighting import dsm_weight, loss_weight


def drop_labels(labels: torch.Tensor, dropped: torch.Tensor, null_class: int) -> torch.Tensor:
    """Replace the labels where `dropped` is True by `null_class` (classifier-free guidance training)."""
    return torch.where(dropped.to(labels.device), torch.full_like(labels, null_class), labels)


def denoiser_loss(
    unet,
    scheduler,
    pixel_values: torch.Tensor,
    labels: Optional[torch.Tensor],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str,
    weighting: str,
    snr_gamma: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weighted denoising loss on clean images x_0 (B, C, H, W) in [-1, 1].

    Forms x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps from the given `noise` and
    `timesteps` (B,) and regresses the model output on the `prediction_type` target with the
    per-timestep weight of `weighting` (`core.weighting.loss_weight`).

    Returns (loss, per-sample unweighted MSE (B,)).
    """
    noisy = scheduler.add_noise(pixel_values, noise, timesteps)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = pixel_values
    else:
        target = scheduler.get_velocity(pixel_values, noise, timesteps)

    prediction = unet(noisy, timesteps, class_labels=labels).sample
    per_sample_mse = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
    weights = loss_weight(weighting, scheduler.alphas_cumprod, timesteps, prediction_type, snr_gamma)
    return (weights.to(per_sample_mse) * per_sample_mse).mean(), per_sample_mse.detach()


def score_matching_loss(
    unet,
    scheduler,
    pixel_values: torch.Tensor,
    labels: Optional[torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Denoising score matching with lambda(sigma) = sigma^2 (Song & Ermon 2019, equation 6).

    With x = x_0 + sigma z, the loss is lambda(sigma) ||s_theta(x, sigma) + z / sigma||^2,
    averaged over pixels and the batch. The network receives `scheduler.scale_model_input(x, sigma)`
    and sigma as its timestep.

    Returns (loss, per-sample weighted error (B,)).
    """
    noisy = scheduler.add_noise(pixel_values, noise, sigmas)
    model_input = scheduler.scale_model_input(noisy, sigmas)
    score = unet(model_input, sigmas, class_labels=labels).sample
    target = -noise / append_dims(sigmas, noise.ndim)
    per_sample = (score.float() - target.float()).pow(2).mean(dim=tuple(range(1, score.ndim)))
    weighted = dsm_weight(sigmas.float()) * per_sample
    return weighted.mean(), weighted.detach()


def noisy_classifier_loss(
    classifier,
    scheduler,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of p(c | x_t, t) on x_t from the denoiser's forward process.

    Returns (loss, per-sample cross-entropy (B,)).
    """
    noisy = scheduler.add_noise(pixel_values, noise, timesteps)
    logits = classifier(noisy, timesteps)
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    return per_sample.mean(), per_sample.detach()
