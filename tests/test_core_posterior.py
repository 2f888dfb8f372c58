import numpy as np
import pytest
import torch

from diffusers_ext.core.posterior import (
    ddim_sigma,
    ddim_step,
    learned_range_log_variance,
    posterior_mean,
    posterior_mean_coefficients,
    posterior_variance,
    transition_variance,
)
from diffusers_ext.core.schedule import alphas_cumprod_from_betas, make_betas

ALPHABAR = alphas_cumprod_from_betas(make_betas("linear", 1000)).numpy()


def gaussian_conditioning(x_t, x0, alphabar_t, alphabar_s):
    """Mean and variance of x_s given (x_t, x0) from the joint Gaussian of the forward chain."""
    var_s = 1 - alphabar_s
    var_t = 1 - alphabar_t
    cov = np.sqrt(alphabar_t / alphabar_s) * var_s
    mean = np.sqrt(alphabar_s) * x0 + cov / var_t * (x_t - np.sqrt(alphabar_t) * x0)
    return mean, var_s - cov**2 / var_t


@pytest.mark.parametrize("t,s", [(1, 0), (500, 499), (999, 998), (999, 0), (700, 300), (40, 20)])
def test_posterior_matches_gaussian_conditioning(t, s):
    rng = np.random.default_rng(t)
    x0, x_t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    expected_mean, expected_var = gaussian_conditioning(x_t, x0, ALPHABAR[t], ALPHABAR[s])

    mean = posterior_mean(torch.from_numpy(x_t), torch.from_numpy(x0), float(ALPHABAR[t]), float(ALPHABAR[s]))
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-10, atol=1e-12)
    assert posterior_variance(float(ALPHABAR[t]), float(ALPHABAR[s])).item() == pytest.approx(expected_var, rel=1e-10)


def test_adjacent_step_is_ddpm_equation():
    """s = t - 1: the coefficients of Ho et al. 2020, equation 7."""
    betas = make_betas("linear", 1000).numpy()
    t = 250
    coef_x0, coef_xt = posterior_mean_coefficients(float(ALPHABAR[t]), float(ALPHABAR[t - 1]))
    assert coef_x0.item() == pytest.approx(np.sqrt(ALPHABAR[t - 1]) * betas[t] / (1 - ALPHABAR[t]), rel=1e-10)
    assert coef_xt.item() == pytest.approx(np.sqrt(1 - betas[t]) * (1 - ALPHABAR[t - 1]) / (1 - ALPHABAR[t]), rel=1e-10)
    assert posterior_variance(float(ALPHABAR[t]), float(ALPHABAR[t - 1])).item() == pytest.approx(
        (1 - ALPHABAR[t - 1]) / (1 - ALPHABAR[t]) * betas[t], rel=1e-10
    )
    assert transition_variance(float(ALPHABAR[t]), float(ALPHABAR[t - 1])).item() == pytest.approx(betas[t], rel=1e-9)


def test_data_level_has_mean_x0_and_zero_variance():
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean = posterior_mean(x_t, x0, float(ALPHABAR[10]), 1.0)
    torch.testing.assert_close(mean, x0, rtol=0, atol=1e-15)
    assert posterior_variance(float(ALPHABAR[10]), 1.0).item() == 0.0


@pytest.mark.parametrize("t,s", [(999, 979), (500, 0), (20, 0)])
def test_ddim_eta_one_is_the_posterior(t, s):
    """DDIM with eta = 1 has exactly the posterior's mean and variance (Song et al. 2021)."""
    rng = np.random.default_rng(s)
    x0, eps = torch.from_numpy(rng.normal(size=(2, 5))), torch.from_numpy(rng.normal(size=(2, 5)))
    alphabar_t, alphabar_s = float(ALPHABAR[t]), float(ALPHABAR[s])
    x_t = np.sqrt(alphabar_t) * x0 + np.sqrt(1 - alphabar_t) * eps

    sigma = ddim_sigma(alphabar_t, alphabar_s, eta=1.0)
    assert sigma.item() ** 2 == pytest.approx(posterior_variance(alphabar_t, alphabar_s).item(), rel=1e-12)
    torch.testing.assert_close(
        ddim_step(x0, eps, alphabar_s, sigma), posterior_mean(x_t, x0, alphabar_t, alphabar_s), rtol=1e-10, atol=1e-12
    )


def test_ddim_eta_zero_is_deterministic():
    x0, eps = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    alphabar_s = 0.6
    sigma = ddim_sigma(0.3, alphabar_s, eta=0.0)
    assert sigma.item() == 0.0
    expected = np.sqrt(alphabar_s) * x0 + np.sqrt(1 - alphabar_s) * eps
    torch.testing.assert_close(ddim_step(x0, eps, alphabar_s, sigma, noise=torch.randn(3)), expected)


def test_ddim_step_adds_scaled_noise():
    x0, eps, noise = (torch.randn(4, dtype=torch.float64) for _ in range(3))
    sigma = ddim_sigma(0.2, 0.5, eta=0.5)
    difference = ddim_step(x0, eps, 0.5, sigma, noise) - ddim_step(x0, eps, 0.5, sigma)
    torch.testing.assert_close(difference, sigma * noise)


def test_ddim_eta_out_of_range():
    with pytest.raises(ValueError, match="eta=1.5 is outside"):
        ddim_sigma(0.2, 0.5, eta=1.5)


def test_posterior_rejects_reversed_levels():
    with pytest.raises(ValueError, match="alphabar_s must be at least alphabar_t"):
        posterior_variance(0.5, 0.2)


def test_learned_range_endpoints():
    alphabar_t, alphabar_s = float(ALPHABAR[600]), float(ALPHABAR[580])
    lower = np.log(posterior_variance(alphabar_t, alphabar_s).item())
    upper = np.log(transition_variance(alphabar_t, alphabar_s).item())
    values = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    result = learned_range_log_variance(values, alphabar_t, alphabar_s).numpy()
    np.testing.assert_allclose(result, [lower, upper, (lower + upper) / 2], rtol=1e-12)
