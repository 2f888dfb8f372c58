import itertools

import numpy as np
import pytest
import torch

from diffusers_ext.core.parameterization import PREDICTION_TYPES, convert, velocity


def closed_forms(x0, eps, alphabar):
    """Every parameterization of one (x0, eps) pair, in float64 numpy."""
    gamma, sigma = np.sqrt(alphabar), np.sqrt(1 - alphabar)
    x_t = gamma * x0 + sigma * eps
    return x_t, {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": gamma * eps - sigma * x0,
        "score": -eps / sigma,
    }


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 2, 3, 3))
    eps = rng.normal(size=(5, 2, 3, 3))
    alphabar = rng.uniform(0.01, 0.99, size=(5, 1, 1, 1))
    return x0, eps, alphabar


@pytest.mark.parametrize("source,target", list(itertools.product(PREDICTION_TYPES, PREDICTION_TYPES)))
def test_convert_matches_closed_form(pair, source, target):
    x0, eps, alphabar = pair
    x_t, forms = closed_forms(x0, eps, alphabar)
    result = convert(
        torch.from_numpy(forms[source]), torch.from_numpy(x_t), torch.from_numpy(alphabar), source, target
    )
    np.testing.assert_allclose(result.numpy(), forms[target], rtol=1e-9, atol=1e-9)


def test_convert_scalar_alphabar(pair):
    x0, eps, _ = pair
    x_t, forms = closed_forms(x0, eps, 0.3)
    result = convert(torch.from_numpy(forms["epsilon"]), torch.from_numpy(x_t), 0.3, "epsilon", "v_prediction")
    np.testing.assert_allclose(result.numpy(), forms["v_prediction"], rtol=1e-9, atol=1e-12)


def test_convert_keeps_float32(pair):
    x0, eps, alphabar = pair
    x_t, forms = closed_forms(x0, eps, alphabar)
    result = convert(
        torch.from_numpy(forms["epsilon"]).float(), torch.from_numpy(x_t).float(), 0.5, "epsilon", "sample"
    )
    assert result.dtype == torch.float32


def test_tweedie_score_of_gaussian_data():
    """E[x0 | x_t] of Gaussian data, converted to a score, is the exact score of the noisy marginal."""
    mu, s2, alphabar = 0.7, 0.3**2, 0.4
    gamma = np.sqrt(alphabar)
    x_t = np.linspace(-3, 3, 13)
    marginal_var = alphabar * s2 + 1 - alphabar
    posterior_mean_x0 = mu + gamma * s2 / marginal_var * (x_t - gamma * mu)
    exact_score = -(x_t - gamma * mu) / marginal_var

    score = convert(torch.from_numpy(posterior_mean_x0), torch.from_numpy(x_t), alphabar, "sample", "score")
    np.testing.assert_allclose(score.numpy(), exact_score, rtol=1e-12)


def test_velocity_closed_form(pair):
    x0, eps, alphabar = pair
    _, forms = closed_forms(x0, eps, alphabar)
    v = velocity(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(alphabar))
    np.testing.assert_allclose(v.numpy(), forms["v_prediction"], rtol=1e-12)


@pytest.mark.parametrize("source,target", [("epsilon", "sample"), ("epsilon", "v_prediction"), ("score", "sample")])
def test_zero_terminal_snr_raises(source, target):
    x = torch.ones(2, 1, 2, 2)
    with pytest.raises(ValueError, match="alphabar_t = 0"):
        convert(x, x, torch.tensor([0.0, 0.5]).reshape(2, 1, 1, 1), source, target)


@pytest.mark.parametrize("source,target", [("sample", "epsilon"), ("sample", "score"), ("epsilon", "score")])
def test_no_noise_raises(source, target):
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="alphabar_t = 1"):
        convert(x, x, 1.0, source, target)


def test_v_source_defined_at_zero_snr():
    v = torch.full((1, 1, 2, 2), 0.25)
    x_t = torch.full((1, 1, 2, 2), 3.0)
    assert torch.equal(convert(v, x_t, 0.0, "v_prediction", "sample"), -v)
    assert torch.equal(convert(v, x_t, 0.0, "v_prediction", "epsilon"), x_t)


def test_unknown_parameterization():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="prediction_type='noise' is not supported"):
        convert(x, x, 0.5, "noise", "sample")
