import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from diffusers_ext.core.schedule import (
    add_noise,
    alphabar_at,
    alphas_cumprod_from_betas,
    make_betas,
    rescale_zero_terminal_snr,
    snr,
)

T = 1000


def numpy_betas(name, start=1e-4, end=0.02):
    if name == "linear":
        return np.linspace(start, end, T)
    if name == "scaled_linear":
        return np.linspace(math.sqrt(start), math.sqrt(end), T) ** 2
    if name == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (end - start) + start
    steps = np.arange(T + 1) / T
    alphabar = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1 - alphabar[1:] / alphabar[:-1], 0.999)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2"])
def test_betas_match_closed_form(name):
    betas = make_betas(name, T)
    assert betas.dtype == torch.float64
    np.testing.assert_allclose(betas.numpy(), numpy_betas(name), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2"])
def test_betas_match_diffusers(name):
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule=name)
    np.testing.assert_allclose(make_betas(name, T).numpy(), reference.betas.double().numpy(), rtol=1e-6, atol=1e-9)
    ours = alphas_cumprod_from_betas(make_betas(name, T))
    np.testing.assert_allclose(ours.numpy(), reference.alphas_cumprod.double().numpy(), rtol=2e-5, atol=1e-8)


def test_trained_betas_used_as_given():
    values = np.linspace(0.001, 0.3, 10)
    np.testing.assert_array_equal(make_betas("linear", 10, trained_betas=values).numpy(), values)


def test_trained_betas_wrong_length():
    with pytest.raises(ValueError, match="trained_betas has 5 entries"):
        make_betas("linear", 10, trained_betas=[0.1] * 5)


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="beta_schedule='laplace' is not supported"):
        make_betas("laplace", T)


def test_alphabar_is_product_of_alphas():
    betas = make_betas("linear", T)
    expected = np.cumprod(1 - numpy_betas("linear"))
    np.testing.assert_allclose(alphas_cumprod_from_betas(betas).numpy(), expected, rtol=1e-12)


def test_zero_terminal_snr_rescale():
    betas = make_betas("scaled_linear", T, 0.00085, 0.012)
    rescaled = rescale_zero_terminal_snr(betas)
    alphabar = alphas_cumprod_from_betas(rescaled)
    original = alphas_cumprod_from_betas(betas)

    assert alphabar[-1].item() == pytest.approx(0.0, abs=1e-20)
    assert alphabar[0].item() == pytest.approx(original[0].item(), rel=1e-12)
    # sqrt(alphabar) is an affine map of the original sqrt(alphabar)
    first, last = original[0].sqrt(), original[-1].sqrt()
    expected = (original.sqrt() - last) * first / (first - last)
    np.testing.assert_allclose(alphabar.sqrt().numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_zero_terminal_snr_matches_diffusers():
    betas = make_betas("scaled_linear", T, 0.00085, 0.012)
    reference = diffusers_rescale(betas.float()).double()
    # diffusers works in float32, where 1 - alphabar_t / alphabar_{t-1} loses about 1e-4 relative.
    np.testing.assert_allclose(rescale_zero_terminal_snr(betas).numpy(), reference.numpy(), rtol=5e-4)


def test_snr_values():
    alphabar = torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=torch.float64)
    np.testing.assert_allclose(snr(alphabar).numpy(), [0.0, 0.25, 1.0, 9.0], rtol=1e-12)


def test_alphabar_at_data_level_is_one():
    table = alphas_cumprod_from_betas(make_betas("linear", T))
    values = alphabar_at(table, torch.tensor([-1, 0, 999]))
    assert values[0].item() == 1.0
    assert values[1].item() == table[0].item()
    assert values[2].item() == table[999].item()


def test_alphabar_at_out_of_range():
    table = alphas_cumprod_from_betas(make_betas("linear", T))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[-1, 999\]"):
        alphabar_at(table, 1000)


def test_add_noise_closed_form():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    alphabar = torch.tensor([0.9, 0.5, 0.1, 0.0], dtype=torch.float64).reshape(4, 1, 1, 1)
    expected = np.sqrt(alphabar.numpy()) * x0.numpy() + np.sqrt(1 - alphabar.numpy()) * noise.numpy()
    np.testing.assert_allclose(add_noise(x0, noise, alphabar).numpy(), expected, rtol=1e-12)
