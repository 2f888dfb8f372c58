import numpy as np
import pytest
import torch
from conftest import make_tiny_unet
from diffusers import DDIMScheduler

from diffusers_ext import (
    AnnealedLangevinScheduler,
    GuidedDiffusionPipeline,
    NoisyClassifier,
    PosteriorScheduler,
    PredictorCorrectorScheduler,
)
from diffusers_ext.core.guidance import classifier_log_prob_gradient
from diffusers_ext.core.parameterization import convert
from diffusers_ext.evaluation.gaussian_mixture import GaussianMixtureClassifier, GaussianMixtureScoreModel

MIXTURE = dict(means=[[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], stds=[0.1, 0.2, 0.15], weights=[0.2, 0.3, 0.5])
TABLE = PosteriorScheduler()._alphas_cumprod_f64.tolist()


def exact_models(prediction_type="epsilon", conditional=False):
    unet = GaussianMixtureScoreModel(**MIXTURE, alphas_cumprod=TABLE, prediction_type=prediction_type, conditional=conditional)
    return unet, GaussianMixtureClassifier(**MIXTURE, alphas_cumprod=TABLE)


def guided_samples(scheduler, steps, prediction_type="epsilon", per_class=400, **call):
    unet, classifier = exact_models(prediction_type, conditional=call.pop("conditional", False))
    pipeline = GuidedDiffusionPipeline(unet=unet, scheduler=scheduler, classifier=classifier)
    pipeline.set_progress_bar_config(disable=True)
    labels = torch.arange(3).repeat_interleave(per_class)
    output = pipeline(
        labels, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent", **call
    )
    x = output.images.reshape(-1, 2)
    return unet.mixture.class_log_posterior(x).argmax(dim=1), labels


def test_gradient_matches_bayes_rule():
    """grad log p(c | x_t) = grad log p(x_t | c) - grad log p(x_t) for the exact posterior."""
    unet, classifier = exact_models()
    x = torch.randn(12, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(3).repeat(4)
    t = torch.tensor(300)
    gradient = classifier_log_prob_gradient(classifier, x, t, labels).reshape(12, 2)

    alphabar = torch.tensor(TABLE[300], dtype=torch.float64)
    gamma, sigma = alphabar.sqrt(), (1 - alphabar).sqrt()
    flat = x.reshape(12, 2)
    expected = unet.mixture.score(flat, gamma, sigma, labels) - unet.mixture.score(flat, gamma, sigma)
    torch.testing.assert_close(gradient, expected)


def test_gradient_leaves_weights_alone():
    classifier = NoisyClassifier(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8, 16), norm_num_groups=4)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        gradient = classifier_log_prob_gradient(classifier, x, torch.tensor(10), torch.tensor([0, 2]))
    assert gradient.shape == x.shape
    assert all(parameter.grad is None for parameter in classifier.parameters())
    assert gradient.abs().sum() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_deterministic_guidance_samples_requested_component(prediction_type):
    scheduler = PosteriorScheduler(eta=0.0, clip_sample=False, prediction_type=prediction_type)
    components, labels = guided_samples(scheduler, 50, prediction_type, classifier_scale=1.0)
    assert torch.equal(components, labels)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ancestral_guidance_samples_requested_component(prediction_type):
    scheduler = PosteriorScheduler(eta=1.0, clip_sample=False, prediction_type=prediction_type)
    components, labels = guided_samples(scheduler, 200, prediction_type, classifier_scale=1.0)
    assert torch.equal(components, labels)


def test_corrector_guidance_samples_requested_component():
    scheduler = PredictorCorrectorScheduler(clip_sample=False, step_size=0.3)
    components, labels = guided_samples(scheduler, 200, classifier_scale=1.0)
    assert torch.equal(components, labels)


def test_diffusers_scheduler_guidance_samples_requested_component():
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    components, labels = guided_samples(scheduler, 50, classifier_scale=1.0)
    assert torch.equal(components, labels)


def test_without_guidance_modes_follow_weights():
    """The same unconditional sampler without the classifier ignores the labels: a control for the tests above."""
    scheduler = PosteriorScheduler(eta=0.0, clip_sample=False)
    unet, _ = exact_models()
    pipeline = GuidedDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    x = pipeline(batch_size=1200, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="latent")
    components = unet.mixture.class_log_posterior(x.images.reshape(-1, 2)).argmax(dim=1)
    np.testing.assert_allclose(torch.bincount(components, minlength=3).numpy() / 1200, [0.2, 0.3, 0.5], atol=0.04)


def test_guidance_with_cfg_together():
    scheduler = PosteriorScheduler(eta=0.0, clip_sample=False)
    components, labels = guided_samples(scheduler, 50, conditional=True, guidance_scale=2.0, classifier_scale=0.5)
    assert torch.equal(components, labels)


def test_ancestral_step_shifts_mean_by_variance():
    scheduler = PosteriorScheduler(eta=1.0, clip_sample=False)
    scheduler.set_timesteps(20)
    t, s = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    output = torch.randn_like(x)
    gradient = torch.randn_like(x)
    plain = scheduler.step(output, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
    guided = scheduler.step(output, t, x, generator=torch.Generator().manual_seed(3), classifier_gradient=gradient)
    variance = scheduler.step_variance(t, s)
    torch.testing.assert_close(guided.prev_sample - plain, variance * gradient)


def test_deterministic_step_shifts_noise_prediction():
    scheduler = PosteriorScheduler(eta=0.0, clip_sample=False)
    scheduler.set_timesteps(20)
    t = int(scheduler.timesteps[3])
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    output, gradient = torch.randn_like(x), torch.randn_like(x)
    sigma = (1 - scheduler._alphabar(t)).sqrt()
    shifted_output = scheduler.step(output - sigma * gradient, t, x).prev_sample
    torch.testing.assert_close(scheduler.step(output, t, x, classifier_gradient=gradient).prev_sample, shifted_output)


def test_corrector_step_adds_score_term():
    scheduler = PredictorCorrectorScheduler(corrector_steps=1, step_size=0.2, temperature=0.0, clip_sample=False)
    scheduler.set_timesteps(5)
    t = int(scheduler.timesteps[1])
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    output, gradient = torch.randn_like(x), torch.randn_like(x)
    guided, _ = scheduler.corrector_step(output, t, x, temperature=0.0, classifier_gradient=gradient)
    alphabar = scheduler._alphabar(t)
    score = convert(output, x, alphabar, "epsilon", "score")
    torch.testing.assert_close(guided, x + 0.2 * (1 - alphabar) * (score + gradient))


def tiny_classifier(**overrides):
    config = dict(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8, 16), norm_num_groups=4)
    config.update(overrides)
    return NoisyClassifier(**config)


def test_noisy_classifier_round_trip(tmp_path):
    classifier = tiny_classifier()
    classifier.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = NoisyClassifier.from_pretrained(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    timesteps = torch.tensor([0, 500, 999])
    logits = classifier(x, timesteps)
    assert logits.shape == (3, 3)
    torch.testing.assert_close(loaded(x, timesteps), logits)
    assert not torch.allclose(classifier(x, 0), classifier(x, 999))  # the timestep matters


def test_noisy_classifier_guides_tiny_unet():
    pipeline = GuidedDiffusionPipeline(unet=make_tiny_unet(), scheduler=PosteriorScheduler(), classifier=tiny_classifier())
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline([0, 2], num_inference_steps=3, guidance_scale=2.0, classifier_scale=3.0, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert all(parameter.grad is None for parameter in pipeline.classifier.parameters())


@pytest.mark.parametrize(
    "classifier,message",
    [
        (tiny_classifier(sample_size=16), "classifier takes 16-pixel inputs but the unet makes 8-pixel samples"),
        (tiny_classifier(in_channels=3), "classifier takes 3 channels but the unet makes 1"),
        (tiny_classifier(num_classes=5), "classifier has 5 classes but the unet has 3"),
        (tiny_classifier(num_train_timesteps=500), "trained on a 500-step noise schedule"),
        (tiny_classifier().to("meta"), "classifier is on meta but the unet is on cpu"),
    ],
)
def test_mismatched_classifier_rejected(classifier, message):
    pipeline = GuidedDiffusionPipeline(unet=make_tiny_unet(), scheduler=PosteriorScheduler(), classifier=classifier)
    with pytest.raises(ValueError, match=message):
        pipeline([0], num_inference_steps=2, classifier_scale=1.0)


def test_missing_classifier_rejected():
    pipeline = GuidedDiffusionPipeline(unet=make_tiny_unet(), scheduler=PosteriorScheduler())
    with pytest.raises(ValueError, match="the pipeline has no classifier"):
        pipeline([0], num_inference_steps=2, classifier_scale=1.0)


def test_unconditional_guidance_needs_labels():
    pipeline = GuidedDiffusionPipeline(
        unet=make_tiny_unet(num_class_embeds=None), scheduler=PosteriorScheduler(), classifier=tiny_classifier()
    )
    with pytest.raises(ValueError, match="classifier guidance needs class_labels"):
        pipeline(batch_size=2, num_inference_steps=2, classifier_scale=1.0)


def test_ve_scheduler_rejected():
    pipeline = GuidedDiffusionPipeline(unet=make_tiny_unet(), scheduler=AnnealedLangevinScheduler(), classifier=tiny_classifier())
    with pytest.raises(ValueError, match="needs a variance-preserving scheduler"):
        pipeline([0], num_inference_steps=2, classifier_scale=1.0)
