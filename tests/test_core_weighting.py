import numpy as np
import pytest
import torch

from diffusers_ext.core.parameterization import convert
from diffusers_ext.core.schedule import alphas_cumprod_from_betas, make_betas, rescale_zero_terminal_snr
from diffusers_ext.core.weighting import TARGETS, WEIGHTINGS, dsm_weight, loss_weight

BETAS = make_betas("linear", 1000)
ALPHABAR = alphas_cumprod_from_betas(BETAS)


def test_elbo_equation_equals_snr_difference():
    """alphabar_{t-1} beta_t^2 / (2 sigma_q^2 (1 - alphabar_t)^2) = (SNR(t-1) - SNR(t)) / 2."""
    betas, alphabar = BETAS.numpy(), ALPHABAR.numpy()
    t = np.arange(1, 1000)
    sigma_q2 = betas[t] * (1 - alphabar[t - 1]) / (1 - alphabar[t])
    equation_b1 = alphabar[t - 1] * betas[t] ** 2 / (2 * sigma_q2 * (1 - alphabar[t]) ** 2)

    weights = loss_weight("elbo", ALPHABAR, torch.from_numpy(t), "sample").numpy()
    np.testing.assert_allclose(weights, equation_b1, rtol=1e-9)
    snr = alphabar / (1 - alphabar)
    np.testing.assert_allclose(weights, (snr[t - 1] - snr[t]) / 2, rtol=1e-9)


def test_elbo_at_first_step_is_decoder_term():
    weight = loss_weight("elbo", ALPHABAR, torch.tensor([0]), "sample")
    assert weight.item() == pytest.approx(1 / (2 * BETAS[0].item()), rel=1e-12)


@pytest.mark.parametrize("weighting", WEIGHTINGS[1:])
@pytest.mark.parametrize("target", TARGETS)
def test_weight_gives_same_loss_for_every_target(weighting, target):
    """w_target ||target error||^2 equals w_sample ||x0 error||^2 for one fixed prediction."""
    rng = np.random.default_rng(1)
    timesteps = torch.tensor([0, 3, 100, 500, 999])
    alphabar = ALPHABAR[timesteps].reshape(-1, 1)
    x0, eps = torch.from_numpy(rng.normal(size=(5, 8))), torch.from_numpy(rng.normal(size=(5, 8)))
    x_t = alphabar.sqrt() * x0 + (1 - alphabar).sqrt() * eps
    x0_hat = x0 + 0.1 * torch.from_numpy(rng.normal(size=(5, 8)))

    truth = convert(x0, x_t, alphabar, "sample", target)
    prediction = convert(x0_hat, x_t, alphabar, "sample", target)
    target_loss = loss_weight(weighting, ALPHABAR, timesteps, target) * (prediction - truth).pow(2).sum(1)
    x0_loss = loss_weight(weighting, ALPHABAR, timesteps, "sample") * (x0_hat - x0).pow(2).sum(1)
    np.testing.assert_allclose(target_loss.numpy(), x0_loss.numpy(), rtol=1e-8)


def test_min_snr_matches_hang_et_al():
    timesteps = torch.arange(0, 1000, 37)
    alphabar = ALPHABAR[timesteps].numpy()
    snr = alphabar / (1 - alphabar)
    gamma = 5.0
    eps_weight = loss_weight("min_snr", ALPHABAR, timesteps, "epsilon", gamma).numpy()
    v_weight = loss_weight("min_snr", ALPHABAR, timesteps, "v_prediction", gamma).numpy()
    np.testing.assert_allclose(eps_weight, np.minimum(snr, gamma) / snr, rtol=1e-10)
    np.testing.assert_allclose(v_weight, np.minimum(snr, gamma) / (snr + 1), rtol=1e-10)


def test_snr_weighting_is_uniform_epsilon():
    timesteps = torch.arange(0, 1000, 50)
    torch.testing.assert_close(loss_weight("snr", ALPHABAR, timesteps, "epsilon"), torch.ones(20, dtype=torch.float64))


def test_uniform_is_one_for_every_target():
    for target in TARGETS:
        assert torch.equal(loss_weight("uniform", ALPHABAR, torch.tensor([5, 900]), target), torch.ones(2).double())


def test_zero_terminal_snr_limits():
    alphabar = alphas_cumprod_from_betas(rescale_zero_terminal_snr(BETAS))
    last = torch.tensor([999])
    assert loss_weight("min_snr", alphabar, last, "epsilon").item() == 1.0
    assert loss_weight("snr", alphabar, last, "score").item() == 1.0
    assert loss_weight("min_snr", alphabar, last, "v_prediction").item() == 0.0


def test_elbo_epsilon_at_zero_snr_raises():
    alphabar = alphas_cumprod_from_betas(rescale_zero_terminal_snr(BETAS))
    with pytest.raises(ValueError, match="infinite at alphabar = 0"):
        loss_weight("elbo", alphabar, torch.tensor([999]), "epsilon")


def test_weights_dtype_follows_table():
    weights = loss_weight("min_snr", ALPHABAR.float(), torch.tensor([1, 2]), "epsilon")
    assert weights.dtype == torch.float32


def test_unknown_weighting():
    with pytest.raises(ValueError, match="weighting='lpips' is not supported"):
        loss_weight("lpips", ALPHABAR, torch.tensor([1]), "epsilon")


def test_dsm_equals_epsilon_mse():
    rng = np.random.default_rng(2)
    sigma = torch.tensor([0.01, 0.5, 10.0], dtype=torch.float64).reshape(3, 1)
    z = torch.from_numpy(rng.normal(size=(3, 6)))
    score = torch.from_numpy(rng.normal(size=(3, 6)))
    dsm = dsm_weight(sigma) * (score + z / sigma).pow(2)
    eps_mse = (-sigma * score - z).pow(2)
    torch.testing.assert_close(dsm, eps_mse)
