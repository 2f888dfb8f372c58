import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.training_utils import compute_snr

from diffusers_ext import PosteriorScheduler
from diffusers_ext.core.parameterization import convert
from diffusers_ext.core.posterior import posterior_mean, posterior_variance

MU, DATA_VAR = 0.3, 0.25


def gaussian_oracle(scheduler, sample, timestep, prediction_type, mu=MU, data_var=DATA_VAR):
    """The exact E[eps | x_t] for data ~ N(mu, data_var), in the requested parameterization."""
    alphabar = scheduler.alphas_cumprod[int(timestep)].double()
    marginal_var = alphabar * data_var + 1 - alphabar
    eps = (1 - alphabar).sqrt() * (sample.double() - alphabar.sqrt() * mu) / marginal_var
    return convert(eps, sample.double(), alphabar, "epsilon", prediction_type).float()


def point_mass_oracle(scheduler, sample, timestep, x0=0.5):
    """The exact noise prediction when all data equals `x0`."""
    alphabar = scheduler._alphas_cumprod_f64[int(timestep)]
    return ((sample.double() - alphabar.sqrt() * x0) / (1 - alphabar).sqrt()).float()


def run_chain(
    scheduler, x_T, prediction_type, generator=None, num_inference_steps=50, oracle=None, num_steps_taken=None, **step_kwargs
):
    oracle = oracle or gaussian_oracle
    scheduler.set_timesteps(num_inference_steps)
    sample = x_T.clone()
    for t in scheduler.timesteps[:num_steps_taken]:
        output = oracle(scheduler, sample, t, prediction_type)
        sample = scheduler.step(output, t, sample, generator=generator, **step_kwargs).prev_sample
    return sample


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_eta_zero_matches_ddim(spacing, prediction_type):
    ddim = DDIMScheduler(timestep_spacing=spacing, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True)
    ours = PosteriorScheduler.from_config(ddim.config, eta=0.0)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    expected = run_chain(ddim, x_T, prediction_type)
    torch.testing.assert_close(run_chain(ours, x_T, prediction_type), expected, rtol=0, atol=1e-5)


def wide_data_oracle(scheduler, sample, timestep, prediction_type):
    """Data ~ N(0.8, 1): x0 estimates often leave [-1, 1], so clipping changes them."""
    return gaussian_oracle(scheduler, sample, timestep, prediction_type, mu=0.8, data_var=1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clipped_eta_zero_matches_ddim_clipped_output(prediction_type):
    """With clipping, eps_hat is re-derived from the clipped x0_hat: DDIM's use_clipped_model_output=True."""
    ddim = DDIMScheduler(prediction_type=prediction_type, clip_sample=True, set_alpha_to_one=True)
    ours = PosteriorScheduler.from_config(ddim.config, eta=0.0)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    for steps in (20, 40, 50):  # parts of the path where clipping is active, and the whole path
        chain = dict(oracle=wide_data_oracle, num_steps_taken=steps)
        clipped_ddim = run_chain(ddim, x_T, prediction_type, use_clipped_model_output=True, **chain)
        result = run_chain(ours, x_T, prediction_type, **chain)
        torch.testing.assert_close(result, clipped_ddim, rtol=0, atol=1e-5)

    default_ddim = run_chain(ddim, x_T, prediction_type, oracle=wide_data_oracle, num_steps_taken=40)
    result = run_chain(ours, x_T, prediction_type, oracle=wide_data_oracle, num_steps_taken=40)
    assert (result - default_ddim).abs().max() > 0.1  # clipping did change the path


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ancestral_matches_ddpm_with_shared_noise(variance_type, prediction_type):
    """Both schedulers draw the step noise in the same order, so equal seeds give equal chains."""
    ddpm = DDPMScheduler(variance_type=variance_type, prediction_type=prediction_type)
    ours = PosteriorScheduler.from_config(ddpm.config)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    expected = run_chain(ddpm, x_T, prediction_type, torch.Generator().manual_seed(2))
    result = run_chain(ours, x_T, prediction_type, torch.Generator().manual_seed(2))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


def test_learned_range_matches_ddpm():
    ddpm = DDPMScheduler(variance_type="learned_range")
    ours = PosteriorScheduler.from_config(ddpm.config)
    ddpm.set_timesteps(20)
    ours.set_timesteps(20)
    sample = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    output = torch.cat([torch.randn_like(sample), torch.rand_like(sample) * 2 - 1], dim=1)
    for t in ddpm.timesteps[:-1]:
        expected = ddpm.step(output, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
        result = ours.step(output, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, PosteriorScheduler])
def test_ancestral_step_mean_and_variance(scheduler_cls):
    """One ancestral step from t = 500 to s = 480 has the posterior's mean and variance."""
    scheduler = scheduler_cls(clip_sample=False)
    scheduler.set_timesteps(50)
    t, s = 500, 480
    x_t = torch.full((40000, 1, 1, 1), 0.8)
    output = torch.full_like(x_t, 0.2)
    prev = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(4)).prev_sample.double()

    alphabar_t = scheduler.alphas_cumprod[t].double()
    alphabar_s = scheduler.alphas_cumprod[s].double()
    x0 = convert(output.double()[:1], x_t.double()[:1], alphabar_t, "epsilon", "sample")
    mean = posterior_mean(x_t.double()[:1], x0, alphabar_t, alphabar_s).item()
    variance = posterior_variance(alphabar_t, alphabar_s).item()

    standard_error = (variance / prev.numel()) ** 0.5
    assert abs(prev.mean().item() - mean) < 5 * standard_error
    assert prev.var().item() == pytest.approx(variance, rel=0.03)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,steps", [("linspace", 7), ("trailing", 10), ("leading", 13)])
def test_respaced_chain_keeps_forward_marginals(eta, spacing, steps):
    """With an exact model of point-mass data, every level s of the chain is distributed as q(x_s | x0).

    This holds only if each step uses the posterior between the grid's actual neighbours.
    """
    x0 = 0.5
    scheduler = PosteriorScheduler(eta=eta, timestep_spacing=spacing, clip_sample=False)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(5)
    alphabar_T = scheduler._alphas_cumprod_f64[int(scheduler.timesteps[0])]
    noise = torch.randn(20000, 1, 1, 1, generator=generator, dtype=torch.float64)
    sample = (alphabar_T.sqrt() * x0 + (1 - alphabar_T).sqrt() * noise).float()

    for t in scheduler.timesteps[:-1]:
        s = scheduler.previous_timestep(t)
        sample = scheduler.step(point_mass_oracle(scheduler, sample, t), t, sample, generator=generator).prev_sample
        alphabar_s = scheduler._alphas_cumprod_f64[s].item()
        values = sample.double()
        assert values.mean().item() == pytest.approx(alphabar_s**0.5 * x0, abs=5 * ((1 - alphabar_s) / 20000) ** 0.5)
        assert values.var().item() == pytest.approx(1 - alphabar_s, rel=0.05)


def test_last_step_lands_on_x0():
    scheduler = PosteriorScheduler.from_config(DDIMScheduler(set_alpha_to_one=False).config)
    scheduler.set_timesteps(10)
    sample = torch.randn(2, 1, 4, 4)
    t = scheduler.timesteps[-1]
    output = scheduler.step(torch.randn_like(sample), t, sample, generator=torch.Generator().manual_seed(0))
    assert torch.equal(output.prev_sample, output.pred_original_sample)


def test_foreign_set_alpha_to_one_is_not_applied():
    config = DDIMScheduler(set_alpha_to_one=False).config
    scheduler = PosteriorScheduler.from_config(config)
    assert scheduler.previous_timestep(scheduler.timesteps[-1]) == -1


def test_ddpm_config_keeps_its_values():
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", variance_type="fixed_large")
    ours = PosteriorScheduler.from_config(ddpm.config)
    assert ours.config.prediction_type == "v_prediction"
    assert ours.variance_type == "fixed_large"
    assert ours.config.eta == 1.0
    torch.testing.assert_close(ours.alphas_cumprod, ddpm.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_save_and_load_round_trip(tmp_path):
    scheduler = PosteriorScheduler(eta=0.3, beta_schedule="scaled_linear", timestep_spacing="trailing")
    scheduler.save_pretrained(tmp_path)
    loaded = PosteriorScheduler.from_pretrained(tmp_path)

    def public(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}

    assert public(loaded.config) == public(scheduler.config)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_grids_match_diffusers(spacing, steps):
    ddpm = DDPMScheduler(timestep_spacing=spacing)
    ours = PosteriorScheduler(timestep_spacing=spacing)
    ddpm.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ddpm.timesteps)


def test_custom_timesteps_used_as_given():
    scheduler = PosteriorScheduler()
    scheduler.set_timesteps(timesteps=[999, 500, 10])
    assert scheduler.timesteps.tolist() == [999, 500, 10]
    assert [scheduler.previous_timestep(t) for t in (999, 500, 10)] == [500, 10, -1]
    assert scheduler.num_inference_steps == 3


def test_linspace_steps_to_actual_next_entry():
    scheduler = PosteriorScheduler(timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    grid = scheduler.timesteps.tolist()
    assert [scheduler.previous_timestep(t) for t in grid] == grid[1:] + [-1]


def test_add_noise_and_velocity_match_ddpm():
    ddpm, ours = DDPMScheduler(), PosteriorScheduler()
    x0, noise = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    timesteps = torch.tensor([0, 1, 10, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), ddpm.add_noise(x0, noise, timesteps))
    torch.testing.assert_close(ours.get_velocity(x0, noise, timesteps), ddpm.get_velocity(x0, noise, timesteps))


def test_compute_snr_reads_alphas_cumprod():
    scheduler = PosteriorScheduler()
    assert scheduler.alphas_cumprod.dtype == torch.float32
    timesteps = torch.tensor([10, 500])
    # diffusers accumulates alphabar in float32; ours is accumulated in float64, then cast
    torch.testing.assert_close(compute_snr(scheduler, timesteps), compute_snr(DDPMScheduler(), timesteps), rtol=1e-4, atol=0)


def test_learned_variance_is_log_variance():
    scheduler = PosteriorScheduler(variance_type="learned")
    values = torch.full((1, 1, 2, 2), -3.0)
    torch.testing.assert_close(scheduler.step_variance(500, 480, values), values.exp())


def test_missing_variance_channels_fall_back():
    scheduler = PosteriorScheduler(variance_type="learned_range")
    scheduler.set_timesteps(10)
    sample = torch.randn(1, 1, 2, 2)
    t = scheduler.timesteps[0]
    first = scheduler.step(torch.zeros_like(sample), t, sample, generator=torch.Generator().manual_seed(0))
    fixed = PosteriorScheduler(variance_type="fixed_small")
    fixed.set_timesteps(10)
    second = fixed.step(torch.zeros_like(sample), t, sample, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first.prev_sample, second.prev_sample)


def test_step_output_tuple():
    scheduler = PosteriorScheduler()
    scheduler.set_timesteps(5)
    sample = torch.randn(1, 1, 2, 2)
    prev, x0 = scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample, return_dict=False)
    assert prev.shape == sample.shape
    assert x0.shape == sample.shape


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prediction_type": "noise"}, "prediction_type='noise' is not supported"),
        ({"variance_type": "fixed_medium"}, "variance_type='fixed_medium' is not supported"),
        ({"eta": -0.1}, "eta=-0.1 is outside"),
        ({"timestep_spacing": "cosine"}, "timestep_spacing='cosine' is not supported"),
        ({"beta_schedule": "laplace"}, "beta_schedule='laplace' is not supported"),
    ],
)
def test_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PosteriorScheduler(**kwargs)


def test_too_many_steps():
    with pytest.raises(ValueError, match="num_inference_steps=1001 exceeds num_train_timesteps=1000"):
        PosteriorScheduler().set_timesteps(1001)


def test_leading_offset_past_last_timestep():
    with pytest.raises(ValueError, match="reaches timestep 1000"):
        PosteriorScheduler(steps_offset=1).set_timesteps(1000)


@pytest.mark.parametrize(
    "timesteps,message",
    [([10, 500], "strictly descending"), ([1000, 5], r"must lie in \[0, 999\]"), ([5.5, 2], "must be integers")],
)
def test_invalid_custom_timesteps(timesteps, message):
    with pytest.raises(ValueError, match=message):
        PosteriorScheduler().set_timesteps(timesteps=timesteps)


def test_both_steps_and_timesteps_rejected():
    with pytest.raises(ValueError, match="exactly one of num_inference_steps or timesteps"):
        PosteriorScheduler().set_timesteps(10, timesteps=[5, 1])


def test_timestep_off_grid():
    scheduler = PosteriorScheduler()
    scheduler.set_timesteps(10)
    sample = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep 37 is not on the sampling grid"):
        scheduler.step(sample, 37, sample)


def test_shape_mismatch_names_learned_variance():
    scheduler = PosteriorScheduler()
    scheduler.set_timesteps(10)
    sample = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="twice the sample's channels"):
        scheduler.step(torch.zeros(1, 6, 2, 2), scheduler.timesteps[0], sample)


def test_default_grid_is_every_training_step():
    scheduler = PosteriorScheduler(num_train_timesteps=10)
    assert scheduler.timesteps.tolist() == list(range(9, -1, -1))
    assert np.all(np.diff(scheduler.timesteps.numpy()) == -1)


def test_thresholding_matches_ddpm():
    ddpm = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    ours = PosteriorScheduler.from_config(ddpm.config)
    x_T = 2 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    expected = run_chain(ddpm, x_T, "epsilon", torch.Generator().manual_seed(7), num_inference_steps=20)
    result = run_chain(ours, x_T, "epsilon", torch.Generator().manual_seed(7), num_inference_steps=20)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
