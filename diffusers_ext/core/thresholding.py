"""Limits on a predicted x0: static clipping and dynamic thresholding."""

import torch


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding of Saharia et al. 2022 (Imagen), section 2.3.

    For each sample, s is the `ratio` quantile of |x0| clamped to [1, `max_value`]; x0 is
    clamped to [-s, s] and divided by s. Shape (B, ...) in and out; the quantile is computed
    in float32 because torch.quantile rejects half precision.
    """
    batch = x0.shape[0]
    flat = x0.reshape(batch, -1)
    scale = torch.quantile(flat.abs().float(), ratio, dim=1).clamp(min=1, max=max_value)
    scale = scale.to(x0.dtype).unsqueeze(1)

    return (flat.clamp(-scale, scale) / scale).reshape(x0.shape)
