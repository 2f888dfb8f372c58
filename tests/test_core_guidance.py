import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from diffusers_ext.core.guidance import classifier_free_guidance, rescale_guidance, shift_epsilon, shift_mean
from diffusers_ext.core.parameterization import PREDICTION_TYPES, convert
from diffusers_ext.core.thresholding import dynamic_threshold


@pytest.fixture
def predictions():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64) for _ in range(3)]


def test_cfg_closed_form(predictions):
    cond, uncond, _ = predictions
    guided = classifier_free_guidance(cond, uncond, 3.0)
    torch.testing.assert_close(guided, 3.0 * cond - 2.0 * uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("target", PREDICTION_TYPES)
def test_cfg_commutes_with_conversion(predictions, target):
    """Guiding epsilon then converting equals converting then guiding, for every target."""
    eps_cond, eps_uncond, x_t = predictions
    alphabar = 0.37
    guided_then_converted = convert(classifier_free_guidance(eps_cond, eps_uncond, 4.0), x_t, alphabar, "epsilon", target)
    converted_then_guided = classifier_free_guidance(
        convert(eps_cond, x_t, alphabar, "epsilon", target), convert(eps_uncond, x_t, alphabar, "epsilon", target), 4.0
    )
    torch.testing.assert_close(guided_then_converted, converted_then_guided, rtol=1e-10, atol=1e-10)


def test_rescale_matches_diffusers(predictions):
    cond, uncond, _ = predictions
    guided = classifier_free_guidance(cond, uncond, 7.5)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), rescale_noise_cfg(guided, cond, 0.7))


def test_rescale_zero_is_identity(predictions):
    cond, uncond, _ = predictions
    guided = classifier_free_guidance(cond, uncond, 7.5)
    assert rescale_guidance(guided, cond, 0.0) is guided


def test_rescale_one_restores_conditional_std(predictions):
    cond, uncond, _ = predictions
    rescaled = rescale_guidance(classifier_free_guidance(cond, uncond, 7.5), cond, 1.0)
    np.testing.assert_allclose(rescaled.std(dim=(1, 2, 3)).numpy(), cond.std(dim=(1, 2, 3)).numpy(), rtol=1e-10)


def test_shift_mean_closed_form(predictions):
    mean, gradient, _ = predictions
    torch.testing.assert_close(shift_mean(mean, 0.04, gradient, 2.0), mean + 0.08 * gradient)


def test_shift_epsilon_closed_form(predictions):
    eps, gradient, _ = predictions
    torch.testing.assert_close(shift_epsilon(eps, 0.75, gradient, 2.0), eps - 2.0 * 0.5 * gradient)


def test_dynamic_threshold_matches_numpy():
    generator = torch.Generator().manual_seed(3)
    x0 = 3 * torch.randn(4, 1, 8, 8, generator=generator)
    flat = x0.reshape(4, -1).numpy()
    scale = np.clip(np.quantile(np.abs(flat), 0.9, axis=1), 1, 2.5)[:, None]
    expected = (np.clip(flat, -scale, scale) / scale).reshape(x0.shape)
    np.testing.assert_allclose(dynamic_threshold(x0, 0.9, 2.5).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dynamic_threshold_matches_diffusers():
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=2.0)
    torch.testing.assert_close(dynamic_threshold(x0, 0.95, 2.0), reference._threshold_sample(x0))
