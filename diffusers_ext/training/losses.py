"""Training losses built from the core math."""

from typing import Optional, Tuple

import torch

from ..core.weighting import loss_weight


def drop_labels(labels: torch.Tensor, drop_prob: float, null_class: int) -> torch.Tensor:
    """Replace each label by `null_class` with probability `drop_prob` (classifier-free guidance training)."""
    if drop_prob == 0:
        return labels
    dropped = torch.rand(labels.shape, device=labels.device) < drop_prob
    return torch.where(dropped, torch.full_like(labels, null_class), labels)


def denoiser_loss(
    unet,
    scheduler,
    pixel_values: torch.Tensor,
    labels: Optional[torch.Tensor],
    prediction_type: str,
    weighting: str,
    snr_gamma: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted denoising loss on a batch of clean images (B, C, H, W) in [-1, 1].

    Draws t uniformly from the training timesteps and eps ~ N(0, I), forms
    x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, and regresses the model output on
    the `prediction_type` target with the per-timestep weight of `weighting`.

    Returns (loss, per-sample MSE (B,), timesteps (B,)); the MSE is unweighted, for logging.
    """
    batch = pixel_values.shape[0]
    noise = torch.randn_like(pixel_values)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=pixel_values.device)
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
    return (weights * per_sample_mse).mean(), per_sample_mse.detach(), timesteps
