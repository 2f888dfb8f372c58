"""Guidance: classifier-free combination and classifier-gradient shifts.

Bayes' rule for the conditional score, grad log p(x_t | c) = grad log p(x_t) + s grad log p(c | x_t),
gives both forms. Classifier-free guidance (Ho & Salimans 2022) replaces the classifier term with
the difference of a conditional and an unconditional prediction of one model:

    D_guided = D_uncond + S (D_cond - D_uncond)

Because every parameterization is affine in the others for fixed x_t, guiding epsilon, x0, v or
score predictions gives the same result. Classifier guidance (Dhariwal & Nichol 2021) shifts the
ancestral mean by s * variance * gradient, or the noise prediction by -s * sigma_t * gradient on
deterministic steps.
"""

from typing import Callable

import torch

from ._tensors import Scalar, as_float_tensor, cast_like


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """uncond + S (cond - uncond): S = 1 is the conditional model, S = 0 the unconditional one."""
    return uncond + guidance_scale * (cond - uncond)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Rescale a guided prediction towards the per-sample standard deviation of the conditional one.

    Lin et al. 2024, section 3.4: guided * std(cond) / std(guided), blended with the unscaled
    prediction by `guidance_rescale` in [0, 1]; 0 returns `guided` unchanged. Standard
    deviations are taken per sample over all non-batch dimensions.
    """
    if guidance_rescale == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guidance_rescale * guided * ratio + (1 - guidance_rescale) * guided


def shift_mean(mean: torch.Tensor, variance: torch.Tensor, gradient: torch.Tensor, scale: float) -> torch.Tensor:
    """Ancestral-step classifier guidance: mean + scale * variance * grad log p(c | x_t).

    Dhariwal & Nichol 2021, Algorithm 1. `variance` is the step's noise variance, a scalar or a
    tensor broadcastable to `mean`.
    """
    return mean + scale * cast_like(as_float_tensor(variance), mean) * gradient


def shift_epsilon(eps: torch.Tensor, alphabar_t: Scalar, gradient: torch.Tensor, scale: float) -> torch.Tensor:
    """Deterministic-step classifier guidance: eps - scale * sqrt(1 - alphabar_t) * grad log p(c | x_t).

    Dhariwal & Nichol 2021, Algorithm 2 (equation 14).
    """
    sigma = cast_like((1 - as_float_tensor(alphabar_t)).sqrt(), eps)
    return eps - scale * sigma * gradient


def classifier_log_prob_gradient(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor,
) -> torch.Tensor:
    """grad_x log p(c | x_t, t) of a classifier returning logits (B, classes), by autograd.

    Gradients are taken with respect to the sample only, so the classifier's weights receive no
    `.grad`, and the graph is freed before returning. Works inside `torch.no_grad()`. The
    log-softmax is computed in float32 at least; the result has the sample's shape and dtype.
    """
    with torch.enable_grad():
        x = sample.detach().requires_grad_(True)
        logits = classifier(x, timestep)
        log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        selected = log_probs.gather(1, class_labels.reshape(-1, 1).to(log_probs.device)).sum()
        (gradient,) = torch.autograd.grad(selected, x)
    return gradient.to(sample.dtype)
