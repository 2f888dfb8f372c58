import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_unet
from diffusers import DDPMPipeline

from diffusers_ext import AnnealedLangevinScheduler, GuidedDiffusionPipeline, PosteriorScheduler, PredictorCorrectorScheduler
from diffusers_ext.core.parameterization import convert
from diffusers_ext.evaluation.gaussian_mixture import GaussianMixtureScoreModel

MIXTURE = dict(means=[[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], stds=[0.1, 0.2, 0.15], weights=[0.2, 0.3, 0.5])


def mixture_model(prediction_type="epsilon", **kwargs):
    table = PosteriorScheduler()._alphas_cumprod_f64.tolist()
    return GaussianMixtureScoreModel(**MIXTURE, alphas_cumprod=table, prediction_type=prediction_type, **kwargs)


def run_loop(scheduler, model, sample, generator, steps=None):
    if steps is not None:
        scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        output = model(scheduler.scale_model_input(sample, t), t).sample
        sample = scheduler.step(output, t, sample, generator=generator).prev_sample
    return sample


def test_pc_layout_and_order():
    scheduler = PredictorCorrectorScheduler(corrector_steps=2)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [750, 500, 500, 500, 250, 250, 250, 0, 0, 0]
    assert scheduler.order == 3
    assert scheduler.num_inference_steps == 4
    roles = [scheduler.is_corrector_entry(i) for i in range(10)]
    assert roles == [False, True, True, False, True, True, False, True, True, False]


def test_pc_without_correctors_equals_posterior():
    model = mixture_model()
    x_T = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = run_loop(PosteriorScheduler(clip_sample=False), model, x_T, torch.Generator().manual_seed(1), 10)
    result = run_loop(
        PredictorCorrectorScheduler(clip_sample=False, corrector_steps=0), model, x_T, torch.Generator().manual_seed(1), 10
    )
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_corrector_uses_exact_score(prediction_type):
    """At temperature 0 a corrector step is x + delta * grad log p_t(x), for every parameterization."""
    model = mixture_model(prediction_type)
    scheduler = PredictorCorrectorScheduler(
        prediction_type=prediction_type, corrector_steps=1, step_size=0.2, temperature=0.0, clip_sample=False
    )
    scheduler.set_timesteps(5)
    t = int(scheduler.timesteps[1])
    x = torch.randn(16, 2, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    new_x, _ = scheduler.corrector_step(model(x, t).sample, t, x, temperature=0.0)

    alphabar = scheduler._alphabar(t)
    exact_score = model.mixture.score(x.reshape(16, 2), alphabar.sqrt(), (1 - alphabar).sqrt()).reshape(x.shape)
    torch.testing.assert_close(new_x, x + 0.2 * (1 - alphabar) * exact_score)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_snr_step_uses_grid_alpha(spacing):
    """The VP step size takes alpha = alphabar_t / alphabar_s for the grid's next level s."""
    scheduler = PredictorCorrectorScheduler(timestep_spacing=spacing, snr=0.1)
    scheduler.set_timesteps(7)
    t = int(scheduler.timesteps[1])
    s = scheduler.previous_timestep(t)
    score = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    alpha = (scheduler._alphabar(t) / scheduler._alphabar(s)).item()
    assert alpha < 0.95  # a respaced step, far from any single training step's alpha
    expected = 2 * alpha * (0.1 * noise.reshape(2, -1).norm(dim=1) / score.reshape(2, -1).norm(dim=1)) ** 2
    torch.testing.assert_close(scheduler.corrector_step_size(score, noise, t).float(), expected, rtol=1e-5, atol=0)


def test_temperature_schedule_over_correctors():
    scheduler = PredictorCorrectorScheduler(corrector_steps=2, temperature=1.0, final_temperature=0.0)
    scheduler.set_timesteps(3)  # entries: t0, c, c, p, c, c, p
    temperatures = [scheduler.corrector_temperature(i) for i in (1, 2, 4, 5)]
    np.testing.assert_allclose(temperatures, [1.0, 2 / 3, 1 / 3, 0.0])


def test_img2img_begin_index_starts_at_predictor():
    scheduler = PredictorCorrectorScheduler(corrector_steps=2)
    scheduler.set_timesteps(5)
    t_start = 2
    scheduler.set_begin_index(t_start * scheduler.order)
    remaining = scheduler.timesteps[t_start * scheduler.order :]
    sample = torch.randn(1, 1, 4, 4)
    scheduler.step(torch.zeros_like(sample), remaining[0], sample)
    assert scheduler.step_index == t_start * scheduler.order + 1
    assert not scheduler.is_corrector_entry(t_start * scheduler.order)
    assert scheduler.index_for_timestep(remaining[0]) == t_start * scheduler.order


def test_pc_steps_out_of_order_rejected():
    scheduler = PredictorCorrectorScheduler(corrector_steps=1)
    scheduler.set_timesteps(3)
    sample = torch.zeros(1, 1, 2, 2)
    scheduler.step(sample, scheduler.timesteps[0], sample)
    with pytest.raises(ValueError, match="next entry of scheduler.timesteps is"):
        scheduler.step(sample, scheduler.timesteps[0], sample)


def test_pc_runs_in_ddpm_pipeline():
    unet = make_tiny_unet(num_class_embeds=None)
    scheduler = PredictorCorrectorScheduler(corrector_steps=2)
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(int(args[1])))
    images = pipeline(batch_size=2, num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert calls == scheduler.timesteps.tolist()
    assert len(calls) == 4 + 2 * 3


class RecordingBar:
    def __init__(self, total):
        self.total, self.count = total, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.count += n


@pytest.mark.parametrize("scheduler", [PredictorCorrectorScheduler(corrector_steps=2), AnnealedLangevinScheduler(steps_per_level=3)])
def test_progress_bar_counts_steps(scheduler):
    unet = make_tiny_unet()
    pipeline = GuidedDiffusionPipeline(unet=unet, scheduler=scheduler)
    bars = []
    pipeline.progress_bar = lambda total=None, **kwargs: bars.append(RecordingBar(total)) or bars[-1]
    pipeline([0, 1], num_inference_steps=4, output_type="np")
    assert bars[0].total == 4
    assert bars[0].count == 4


def test_pc_samples_mixture_at_modest_budget():
    """Fixed-step correction keeps the mode weights of 2-D data (the snr rule is biased there)."""
    model = mixture_model()
    scheduler = PredictorCorrectorScheduler(clip_sample=False, step_size=0.3)
    pipeline = GuidedDiffusionPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    samples = pipeline([3] * 4000, num_inference_steps=25, generator=torch.Generator().manual_seed(0), output_type="latent")
    x = samples.images.reshape(-1, 2)
    weights = model.mixture.class_log_posterior(x).exp().mean(0)
    np.testing.assert_allclose(weights.numpy(), model.mixture.weights.numpy(), atol=0.04)


def test_annealed_layout():
    scheduler = AnnealedLangevinScheduler(sigma_min=0.01, sigma_max=1.0, steps_per_level=2)
    scheduler.set_timesteps(3)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    assert scheduler.order == 2
    assert scheduler.init_noise_sigma == 1.0


def test_annealed_step_rule():
    scheduler = AnnealedLangevinScheduler(sigma_min=0.1, sigma_max=1.0, steps_per_level=2, epsilon=1e-3, denoise_final=False)
    scheduler.set_timesteps(2)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    score = torch.randn_like(x)
    for index, t in enumerate(scheduler.timesteps):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
        result = scheduler.step(score, t, x, generator=torch.Generator().manual_seed(index)).prev_sample
        sigma = float(t)
        a = 1e-3 * sigma**2 / 0.1**2
        torch.testing.assert_close(result, x + a / 2 * score + math.sqrt(a) * noise)


def test_annealed_final_denoising():
    scheduler = AnnealedLangevinScheduler(sigma_min=0.1, sigma_max=1.0, steps_per_level=1)
    scheduler.set_timesteps(2)
    x, score = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), -3.0)
    scheduler.step(score, scheduler.timesteps[0], x)
    output = scheduler.step(score, scheduler.timesteps[1], x)
    torch.testing.assert_close(output.prev_sample, x + 0.01 * score)


def test_annealed_input_scaling():
    scheduler = AnnealedLangevinScheduler(sigma_data=0.5)
    x = torch.ones(2, 1, 2, 2)
    scaled = scheduler.scale_model_input(x, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(scaled[:, 0, 0, 0], torch.tensor([1 / math.sqrt(1.25), 1 / math.sqrt(9.25)]))
    assert AnnealedLangevinScheduler(sigma_data=None).scale_model_input(x, 2.0) is x


def test_annealed_reaches_data_distribution():
    """Annealed Langevin with the exact VE score ends at the mixture: moments and mode weights."""
    model = GaussianMixtureScoreModel(**MIXTURE, noise="ve", prediction_type="score", sigma_data=0.5)
    scheduler = AnnealedLangevinScheduler(sigma_min=0.01, sigma_max=3.0, steps_per_level=20, epsilon=2e-5, sigma_data=0.5)
    pipeline = GuidedDiffusionPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    n = 10000
    x = pipeline([3] * n, num_inference_steps=30, generator=torch.Generator().manual_seed(6), output_type="latent")
    x = x.images.reshape(n, 2).double()

    reference, _ = model.mixture.sample(200000, torch.Generator().manual_seed(7))
    standard_error = (reference.var(0) / n).sqrt()
    assert bool(((x.mean(0) - reference.mean(0)).abs() < 5 * standard_error).all())
    np.testing.assert_allclose(torch.cov(x.T).numpy(), torch.cov(reference.T).numpy(), atol=0.03)
    weights = model.mixture.class_log_posterior(x).exp().mean(0)
    np.testing.assert_allclose(weights.numpy(), model.mixture.weights.numpy(), atol=0.02)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"corrector_steps": -1}, "corrector_steps=-1 is negative"),
        ({"snr": 0.0}, "snr=0.0 must be positive"),
        ({"step_size": -0.1}, "step_size=-0.1 must be positive"),
        ({"temperature_schedule": "cosine"}, "temperature_schedule='cosine' is not supported"),
    ],
)
def test_pc_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredictorCorrectorScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prediction_type": "epsilon"}, "prediction_type='epsilon' is not supported"),
        ({"sigma_min": 2.0, "sigma_max": 1.0}, "need 0 < sigma_min < sigma_max"),
        ({"steps_per_level": 0}, "steps_per_level=0 must be at least 1"),
    ],
)
def test_annealed_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnealedLangevinScheduler(**kwargs)


def test_pc_config_round_trip(tmp_path):
    scheduler = PredictorCorrectorScheduler(corrector_steps=3, snr=0.05, final_temperature=0.1, eta=0.5)
    scheduler.save_pretrained(tmp_path)
    loaded = PredictorCorrectorScheduler.from_pretrained(tmp_path)
    for key in ("corrector_steps", "snr", "final_temperature", "eta"):
        assert loaded.config[key] == scheduler.config[key]
    assert PosteriorScheduler.from_config(loaded.config).config.eta == 0.5


def test_pc_loads_ddpm_config():
    from diffusers import DDPMScheduler

    scheduler = PredictorCorrectorScheduler.from_config(DDPMScheduler(prediction_type="v_prediction").config)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.corrector_steps == PredictorCorrectorScheduler().config.corrector_steps


def test_score_conversion_matches_mixture_for_v_model():
    model = mixture_model("v_prediction")
    scheduler = PosteriorScheduler(prediction_type="v_prediction")
    x = torch.randn(8, 2, 1, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    alphabar = scheduler._alphabar(400)
    score = convert(model(x, 400).sample, x, alphabar, "v_prediction", "score")
    exact = model.mixture.score(x.reshape(8, 2), alphabar.sqrt(), (1 - alphabar).sqrt()).reshape(x.shape)
    torch.testing.assert_close(score, exact)
