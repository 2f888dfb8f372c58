"""Classifier guidance inside a pipeline: compatibility checks, the gradient, and how a step applies it.

Schedulers of this package take the scaled gradient s * grad log p(c | x_t) in `step` and apply
it as their step type requires (mean shift on stochastic steps, noise-prediction shift on
deterministic ones, an added score term on Langevin steps). For any other diffusers scheduler
the pipeline shifts the noise prediction itself, eps' = eps - s sqrt(1 - alphabar_t) grad,
the conditional-score form that holds for every sampler driven by the model's score
(Dhariwal & Nichol 2021, Algorithm 2).
"""

import inspect
from typing import Optional

import torch

from ..core.guidance import classifier_log_prob_gradient, shift_epsilon
from ..core.parameterization import convert


def scheduler_applies_gradient(scheduler) -> bool:
    """Return whether the scheduler's `step` takes a `classifier_gradient` argument."""
    return "classifier_gradient" in inspect.signature(scheduler.step).parameters


def _config_value(module, name: str):
    config = getattr(module, "config", None)
    return None if config is None else getattr(config, name, None)


def check_classifier(classifier, unet, scheduler, labels: Optional[torch.Tensor]) -> None:
    """Reject a classifier that cannot guide this unet and scheduler, before any sampling work."""
    if classifier is None:
        raise ValueError(
            "classifier_scale is non-zero but the pipeline has no classifier; pass classifier=NoisyClassifier(...) "
            "when building the pipeline or to from_pretrained."
        )
    if labels is None:
        raise ValueError("classifier guidance needs class_labels: the class each image is guided towards.")
    classifier_device, unet_device = getattr(classifier, "device", None), getattr(unet, "device", None)
    if classifier_device is not None and unet_device is not None and classifier_device != unet_device:
        raise ValueError(
            f"classifier is on {classifier_device} but the unet is on {unet_device}; move both with pipeline.to(device)."
        )
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise ValueError(
            f"{type(scheduler).__name__} has no alphas_cumprod: classifier guidance here needs a "
            "variance-preserving scheduler such as PosteriorScheduler or PredictorCorrectorScheduler."
        )

    unet_size, classifier_size = _config_value(unet, "sample_size"), _config_value(classifier, "sample_size")
    if classifier_size is not None and classifier_size != unet_size:
        raise ValueError(f"classifier takes {classifier_size}-pixel inputs but the unet makes {unet_size}-pixel samples.")
    unet_channels, classifier_channels = _config_value(unet, "in_channels"), _config_value(classifier, "in_channels")
    if classifier_channels is not None and classifier_channels != unet_channels:
        raise ValueError(f"classifier takes {classifier_channels} channels but the unet makes {unet_channels}.")

    num_classes = _config_value(classifier, "num_classes")
    unet_classes = _config_value(unet, "num_class_embeds")
    if num_classes is not None and unet_classes is not None and unet_classes - 1 != num_classes:
        raise ValueError(
            f"classifier has {num_classes} classes but the unet has {unet_classes - 1} (plus its null class); "
            "both must use the same labels."
        )
    if num_classes is not None and bool((labels.cpu() >= num_classes).any()):
        raise ValueError(f"class_labels must lie in [0, {num_classes - 1}] for the classifier, got {labels.tolist()}.")

    classifier_steps = _config_value(classifier, "num_train_timesteps")
    scheduler_steps = _config_value(scheduler, "num_train_timesteps")
    if classifier_steps is not None and scheduler_steps is not None and classifier_steps != scheduler_steps:
        raise ValueError(
            f"classifier was trained on a {classifier_steps}-step noise schedule but the scheduler has "
            f"{scheduler_steps} steps; train the classifier on the denoiser's schedule."
        )



def guidance_gradient(classifier, scheduler, latents, timestep, labels, scale: float) -> torch.Tensor:
    """s * grad log p(c | x_t, t), taken at the model input x_t = scheduler.scale_model_input(latents, t)."""
    model_input = scheduler.scale_model_input(latents, timestep)
    return scale * classifier_log_prob_gradient(classifier, model_input, timestep, labels)


def shift_noise_prediction(scheduler, model_output, latents, timestep, gradient) -> torch.Tensor:
    """eps' = eps - sqrt(1 - alphabar_t) * gradient on a model output of the scheduler's prediction type.

    Only the first C channels (the prediction) change when the model also outputs variances.
    """
    alphabar = scheduler.alphas_cumprod[int(timestep)].double()
    if alphabar == 0:
        return model_output
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    channels = latents.shape[1]
    prediction, rest = model_output[:, :channels], model_output[:, channels:]
    x_t = scheduler.scale_model_input(latents, timestep)

    eps = convert(prediction, x_t, alphabar, prediction_type, "epsilon")
    shifted = convert(shift_epsilon(eps, alphabar, gradient, 1.0), x_t, alphabar, "epsilon", prediction_type)
    return torch.cat([shifted, rest], dim=1)
