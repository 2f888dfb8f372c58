import math

import numpy as np
import pytest
import torch

from diffusers_ext.core.langevin import annealed_step_size, langevin_step, snr_step_size, temperature_at
from diffusers_ext.evaluation.gaussian_mixture import GaussianMixture

MIXTURE = GaussianMixture(means=[[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], stds=[0.1, 0.2, 0.15], weights=[0.2, 0.3, 0.5])


def test_langevin_step_closed_form():
    generator = torch.Generator().manual_seed(0)
    x, score, noise = (torch.randn(3, 2, generator=generator, dtype=torch.float64) for _ in range(3))
    delta = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    expected = x + delta[:, None] * score + torch.sqrt(2 * delta[:, None] * 0.5) * noise
    torch.testing.assert_close(langevin_step(x, score, delta, noise, temperature=0.5), expected)


def test_zero_temperature_is_gradient_ascent():
    """At T = 0 the update is x + delta grad log p, which climbs log p to its mode."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    score = MIXTURE.score(x, 1.0, 0.3)
    torch.testing.assert_close(langevin_step(x, score, 0.01, noise, temperature=0.0), x + 0.01 * score)

    log_probs = [MIXTURE.log_prob(x, 1.0, 0.3)]
    for _ in range(200):
        x = langevin_step(x, MIXTURE.score(x, 1.0, 0.3), 0.01, torch.randn(5, 2, generator=generator).double(), 0.0)
        log_probs.append(MIXTURE.log_prob(x, 1.0, 0.3))
    increments = torch.stack(log_probs).diff(dim=0)
    assert bool((increments >= -1e-12).all())
    torch.testing.assert_close(MIXTURE.score(x, 1.0, 0.3), torch.zeros_like(x), atol=1e-6, rtol=0)


def test_negative_temperature_rejected():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="temperature=-1 is negative"):
        langevin_step(x, x, 0.1, x, temperature=-1)


def test_snr_step_size_closed_form():
    generator = torch.Generator().manual_seed(2)
    score = torch.randn(4, 3, 2, 2, generator=generator)
    noise = torch.randn(4, 3, 2, 2, generator=generator)
    delta = snr_step_size(score, noise, snr=0.16, alpha=0.9)
    score_norm = score.reshape(4, -1).double().norm(dim=1)
    noise_norm = noise.reshape(4, -1).double().norm(dim=1)
    expected = 2 * 0.9 * (0.16 * noise_norm / score_norm) ** 2
    np.testing.assert_allclose(delta.numpy(), expected.numpy(), rtol=1e-5)


def test_snr_step_size_is_per_sample():
    """A sample's step does not depend on the other samples in the batch."""
    generator = torch.Generator().manual_seed(3)
    score = torch.randn(3, 8, generator=generator)
    noise = torch.randn(3, 8, generator=generator)
    alone = snr_step_size(score[:1], noise[:1], snr=0.1)
    scaled_neighbours = score.clone()
    scaled_neighbours[1:] *= 100
    in_batch = snr_step_size(scaled_neighbours, noise, snr=0.1)
    torch.testing.assert_close(in_batch[:1], alone)


def test_annealed_step_size():
    assert annealed_step_size(1.0, 0.01, 2e-5).item() == pytest.approx(2e-5 * 1e4)
    assert annealed_step_size(0.01, 0.01, 2e-5).item() == pytest.approx(2e-5)


def test_temperature_schedules():
    assert temperature_at(0, 5, 1.0, 0.0, "linear") == 1.0
    assert temperature_at(2, 5, 1.0, 0.0, "linear") == pytest.approx(0.5)
    assert temperature_at(4, 5, 1.0, 0.0, "linear") == 0.0
    assert temperature_at(2, 5, 1.0, 0.01, "geometric") == pytest.approx(0.1)
    assert temperature_at(3, 5, 0.7, None) == 0.7
    with pytest.raises(ValueError, match="geometric temperature schedule needs positive ends"):
        temperature_at(1, 5, 1.0, 0.0, "geometric")


def test_langevin_at_fixed_level_reaches_that_level():
    """Langevin with the exact score of one noise level samples that level's mixture.

    The chains start far from equilibrium; after mixing, their mean, covariance and mode
    weights agree with the noisy mixture within sampling error. E[p(k | x)] = w_k under the
    mixture, so mean responsibilities estimate the mode weights without bias.
    """
    alphabar = 0.3
    gamma, sigma = math.sqrt(alphabar), math.sqrt(1 - alphabar)
    generator = torch.Generator().manual_seed(4)
    n = 20000
    x = 2 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    for _ in range(600):
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x = langevin_step(x, MIXTURE.score(x, gamma, sigma), 0.02, noise)

    reference, _ = MIXTURE.sample(200000, torch.Generator().manual_seed(5))
    reference = gamma * reference + sigma * torch.randn(200000, 2, generator=generator, dtype=torch.float64)
    standard_error = (reference.var(0) / n).sqrt()
    assert bool(((x.mean(0) - reference.mean(0)).abs() < 5 * standard_error).all())
    np.testing.assert_allclose(torch.cov(x.T).numpy(), torch.cov(reference.T).numpy(), atol=0.03)

    weights = MIXTURE.class_log_posterior(x, gamma, sigma).exp().mean(0)
    np.testing.assert_allclose(weights.numpy(), MIXTURE.weights.numpy(), atol=0.02)
