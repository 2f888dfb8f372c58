"""Conversions between the four things a diffusion model can predict.

For a fixed noisy sample x_t = gamma x0 + sigma eps, with gamma = sqrt(alphabar_t) and
sigma = sqrt(1 - alphabar_t), each prediction is an affine function of the others:

    epsilon       eps
    sample        x0 = (x_t - sigma eps) / gamma
    v_prediction  v = gamma eps - sigma x0            (Salimans & Ho 2022)
    score         grad log p_t(x_t) = -eps / sigma = (gamma x0 - x_t) / sigma^2

Where gamma = 0 (zero terminal SNR) eps says nothing about x0, and where sigma = 0 x0 says
nothing about eps; conversions that would divide by zero raise ValueError instead of
returning inf or NaN.
"""

import torch

from ._tensors import Scalar, as_float_tensor, cast_like

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")


def check_prediction_type(prediction_type: str, allowed=PREDICTION_TYPES) -> None:
    """Raise ValueError naming the allowed values if `prediction_type` is not one of them."""
    if prediction_type not in allowed:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; use one of {tuple(allowed)}.")


def velocity(x0: torch.Tensor, eps: torch.Tensor, alphabar_t: Scalar) -> torch.Tensor:
    """v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x0, the v-prediction target."""
    alphabar_t = as_float_tensor(alphabar_t)
    gamma = cast_like(alphabar_t.sqrt(), x0)
    sigma = cast_like((1 - alphabar_t).sqrt(), x0)
    return gamma * eps - sigma * x0


def _require_nonzero(coefficient: torch.Tensor, source: str, target: str, reason: str) -> None:
    if bool((coefficient == 0).any()):
        raise ValueError(f"converting {source!r} to {target!r} is undefined here: {reason}")


def _zero_signal(source: str) -> str:
    return (
        f"alphabar_t = 0 (zero terminal SNR), where x_t is pure noise and a {source!r} prediction carries "
        "no information about x0. Train and sample such schedules with prediction_type 'v_prediction' "
        "or 'sample'."
    )


def _zero_noise(source: str) -> str:
    return (
        f"alphabar_t = 1, where x_t = x0 and a {source!r} prediction carries no information about the "
        "noise (the score is unbounded there). Use timesteps with alphabar_t < 1."
    )


def _to_epsilon(model_output, sample, gamma, sigma, source, target):
    if source == "epsilon":
        return model_output
    if source == "v_prediction":
        return sigma * sample + gamma * model_output
    _require_nonzero(sigma, source, target, _zero_noise(source))
    if source == "sample":
        return (sample - gamma * model_output) / sigma
    return -sigma * model_output  # score


def _to_sample(model_output, sample, gamma, sigma, source, target):
    if source == "sample":
        return model_output
    if source == "v_prediction":
        return gamma * sample - sigma * model_output
    _require_nonzero(gamma, source, target, _zero_signal(source))
    if source == "epsilon":
        return (sample - sigma * model_output) / gamma
    _require_nonzero(sigma, source, target, _zero_noise(source))
    return (sample + sigma**2 * model_output) / gamma  # score


def convert(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alphabar_t: Scalar,
    source: str,
    target: str,
) -> torch.Tensor:
    """Convert a model prediction from one parameterization to another.

    Args:
        model_output: the prediction, shape (B, C, H, W) or any shape of `sample`.
        sample: the noisy input x_t the prediction was made for, same shape.
        alphabar_t: alphabar at each item's timestep; a float, or a tensor broadcastable to
            `sample` such as shape (B, 1, 1, 1). Coefficients are computed in its dtype
            (float64 for Python floats) and cast to the sample's dtype.
        source, target: each one of "epsilon", "sample", "v_prediction", "score".

    Returns:
        The prediction in the `target` parameterization, shape and dtype of `model_output`.

    Raises:
        ValueError: for an unknown parameterization, or where the conversion divides by zero
            (an "epsilon" or "score" source at alphabar_t = 0, a "sample" source or any
            "score" side at alphabar_t = 1).
    """
    check_prediction_type(source)
    check_prediction_type(target)
    if source == target:
        return model_output

    alphabar_t = as_float_tensor(alphabar_t)
    gamma = cast_like(alphabar_t.sqrt(), sample)
    sigma = cast_like((1 - alphabar_t).sqrt(), sample)

    if target == "epsilon":
        return _to_epsilon(model_output, sample, gamma, sigma, source, target)
    if target == "sample":
        return _to_sample(model_output, sample, gamma, sigma, source, target)
    if target == "score":
        _require_nonzero(sigma, source, target, _zero_noise(source))
        return -_to_epsilon(model_output, sample, gamma, sigma, source, target) / sigma

    eps = _to_epsilon(model_output, sample, gamma, sigma, source, target)
    x0 = _to_sample(model_output, sample, gamma, sigma, source, target)
    return gamma * eps - sigma * x0
