"""Our schedulers inside diffusers' own pipelines, and the registration that makes saved folders load.

Every model is built from a config (no downloads): a tiny UNet2DModel for DDPMPipeline, and a
tiny UNet2DConditionModel, AutoencoderKL, CLIPTextModel and a CLIP tokenizer written to local
files for the Stable Diffusion pipelines.
"""

import json
import string
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_unet
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import diffusers_ext
from diffusers_ext import GuidedDiffusionPipeline, NoisyClassifier, PosteriorScheduler, PredictorCorrectorScheduler
from diffusers_ext._registration import check_diffusers_version

SCHEDULERS = {
    "posterior-eta1": lambda config: PosteriorScheduler.from_config(config, eta=1.0),
    "posterior-eta0": lambda config: PosteriorScheduler.from_config(config, eta=0.0),
    "predictor-corrector": lambda config: PredictorCorrectorScheduler.from_config(config, corrector_steps=1),
}


class CallCounter:
    def __init__(self, module):
        self.timesteps = []
        module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timesteps.append(int(torch.as_tensor(timestep).reshape(-1)[0]))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in string.ascii_lowercase + string.digits:
        vocab[character] = len(vocab)
        vocab[character + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def stable_diffusion_parts(tokenizer, scheduler):
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
                       num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=16)
    )  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )  # fmt: skip
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def text_to_image(tokenizer, scheduler, **call):
    pipeline = StableDiffusionPipeline(**stable_diffusion_parts(tokenizer, scheduler))
    pipeline.set_progress_bar_config(disable=True)
    counter = CallCounter(pipeline.unet)
    call = {"num_inference_steps": 6, "output_type": "np", **call}
    output = pipeline("a cat", height=16, width=16, generator=torch.Generator().manual_seed(0), **call)
    return output.images, counter, pipeline


@pytest.mark.parametrize("name", SCHEDULERS)
def test_ddpm_pipeline(name):
    pipeline = DDPMPipeline(unet=make_tiny_unet(num_class_embeds=None), scheduler=DDPMScheduler())
    pipeline.scheduler = SCHEDULERS[name](pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    counter = CallCounter(pipeline.unet)
    first = pipeline(batch_size=2, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))
    second = pipeline(batch_size=2, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))
    assert first.images.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(first.images, second.images)
    assert counter.timesteps[: len(pipeline.scheduler.timesteps)] == pipeline.scheduler.timesteps.tolist()


@pytest.mark.parametrize("name", SCHEDULERS)
def test_stable_diffusion(tokenizer, name):
    scheduler = SCHEDULERS[name](DDIMScheduler(steps_offset=1, clip_sample=False).config)
    images, counter, pipeline = text_to_image(tokenizer, scheduler)
    assert images.shape == (1, 16, 16, 3)
    assert np.isfinite(images).all()
    assert counter.timesteps == pipeline.scheduler.timesteps.tolist()


def test_stable_diffusion_eta_zero_equals_ddim(tokenizer):
    config = DDIMScheduler(steps_offset=1, clip_sample=False, set_alpha_to_one=True).config
    expected, _, _ = text_to_image(tokenizer, DDIMScheduler.from_config(config))
    result, _, _ = text_to_image(tokenizer, PosteriorScheduler.from_config(config, eta=0.0))
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


def test_foreign_set_alpha_to_one_false_is_ignored(tokenizer):
    """A DDIM config with set_alpha_to_one=False still ends on x0 with PosteriorScheduler."""
    config = DDIMScheduler(steps_offset=1, clip_sample=False, set_alpha_to_one=False).config
    latents = {"output_type": "latent"}
    ddim_false, _, _ = text_to_image(tokenizer, DDIMScheduler.from_config(config), **latents)
    ddim_true, _, _ = text_to_image(tokenizer, DDIMScheduler.from_config(config, set_alpha_to_one=True), **latents)
    ours, _, _ = text_to_image(tokenizer, PosteriorScheduler.from_config(config, eta=0.0), **latents)
    torch.testing.assert_close(ours, ddim_true, rtol=1e-4, atol=1e-5)
    assert (ours - ddim_false).abs().max() > 1e-3  # DDIM's last step stops short of x0


@pytest.mark.parametrize("name", SCHEDULERS)
def test_stable_diffusion_custom_timesteps(tokenizer, name):
    scheduler = SCHEDULERS[name](DDIMScheduler(steps_offset=1, clip_sample=False).config)
    images, counter, pipeline = text_to_image(tokenizer, scheduler, num_inference_steps=None, timesteps=[901, 601, 301, 1])
    expected_levels = [901, 601, 301, 1]
    assert sorted(set(counter.timesteps), reverse=True) == expected_levels
    assert images.shape == (1, 16, 16, 3)


def test_stable_diffusion_progress_bar_counts_steps(tokenizer):
    scheduler = PredictorCorrectorScheduler.from_config(DDIMScheduler(steps_offset=1, clip_sample=False).config,
                                                        corrector_steps=2)  # fmt: skip
    pipeline = StableDiffusionPipeline(**stable_diffusion_parts(tokenizer, scheduler))
    updates = []

    class Bar:
        def __init__(self, total):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append(n)

    pipeline.progress_bar = lambda total=None, **kwargs: Bar(total)
    pipeline("a cat", num_inference_steps=5, height=16, width=16, output_type="np")
    assert len(updates) == 5


def image_to_image(tokenizer, scheduler, strength=0.5):
    pipeline = StableDiffusionImg2ImgPipeline(**stable_diffusion_parts(tokenizer, scheduler))
    pipeline.set_progress_bar_config(disable=True)
    counter = CallCounter(pipeline.unet)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    output = pipeline("a cat", image=image, strength=strength, num_inference_steps=6, output_type="np",
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    return output.images, counter, pipeline


def test_img2img_eta_zero_equals_ddim(tokenizer):
    config = DDIMScheduler(steps_offset=1, clip_sample=False, set_alpha_to_one=True).config
    expected, _, _ = image_to_image(tokenizer, DDIMScheduler.from_config(config))
    result, counter, _ = image_to_image(tokenizer, PosteriorScheduler.from_config(config, eta=0.0))
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
    assert len(counter.timesteps) == 3  # strength 0.5 of 6 steps


def test_img2img_predictor_corrector_strength(tokenizer):
    """strength keeps the last half of the predictor levels and starts at a predictor entry (order 2)."""
    scheduler = PredictorCorrectorScheduler.from_config(DDIMScheduler(steps_offset=1, clip_sample=False).config)
    images, counter, pipeline = image_to_image(tokenizer, scheduler, strength=0.5)
    levels = pipeline.scheduler._levels.tolist()
    assert counter.timesteps == [levels[3], levels[4], levels[4], levels[5], levels[5]]
    assert images.shape == (1, 16, 16, 3)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_dit_pipeline_learned_variance_stripped(name):
    """DiTPipeline drops the variance channels before step; our schedulers fall back to fixed_small."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_type="ada_norm_zero")  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip
    scheduler = SCHEDULERS[name](DDPMScheduler(variance_type="learned_range", clip_sample=False).config)
    pipeline = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(class_labels=[1, 7], num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 8, 8, 3)
    assert np.isfinite(images).all()
    assert pipeline.scheduler._warned_missing_variance == (scheduler.config.eta > 0)  # eta 0 uses no variance


def test_ddim_pipeline_replaces_any_scheduler():
    """DDIMPipeline converts its scheduler to DDIMScheduler (documented in the README)."""
    pipeline = DDIMPipeline(unet=make_tiny_unet(num_class_embeds=None), scheduler=PosteriorScheduler(eta=0.0))
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"


def test_compatibles_both_ways():
    ours = PosteriorScheduler(eta=0.3, prediction_type="v_prediction")
    assert "DDPMScheduler" in [cls.__name__ for cls in ours.compatibles]
    assert "PredictorCorrectorScheduler" in [cls.__name__ for cls in ours.compatibles]
    assert "PosteriorScheduler" in [cls.__name__ for cls in DDPMScheduler().compatibles]
    converted = DDPMScheduler.from_config(ours.config)
    assert converted.config.prediction_type == "v_prediction"
    assert "eta" not in DDPMScheduler.__init__.__code__.co_varnames  # kept in the config, never applied


def test_classes_registered_in_diffusers():
    import diffusers

    for name in diffusers_ext.__all__:
        assert getattr(diffusers, name) is getattr(diffusers_ext, name)


def test_untested_diffusers_rejected(monkeypatch):
    monkeypatch.delenv("DIFFUSERS_EXT_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(ImportError, match="diffusers 0.50.0 is installed"):
        check_diffusers_version("0.50.0")
    with pytest.raises(ImportError, match="diffusers 0.41.1 is installed"):
        check_diffusers_version("0.41.1")
    check_diffusers_version("0.42.1")
    check_diffusers_version("0.42.3.dev0")
    monkeypatch.setenv("DIFFUSERS_EXT_SKIP_VERSION_CHECK", "1")
    check_diffusers_version("0.50.0")


@pytest.mark.parametrize("scheduler_name", ["PosteriorScheduler", "PredictorCorrectorScheduler", "AnnealedLangevinScheduler"])
def test_saved_entries_name_the_package(tmp_path, scheduler_name):
    scheduler = getattr(diffusers_ext, scheduler_name)()
    classifier = NoisyClassifier(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8, 16), norm_num_groups=4)
    GuidedDiffusionPipeline(make_tiny_unet(), scheduler, classifier=classifier).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers_ext", scheduler_name]
    assert index["classifier"] == ["diffusers_ext", "NoisyClassifier"]

    script = f"""
import diffusers_ext
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r})
print(type(pipe).__name__, type(pipe.scheduler).__name__, type(pipe.classifier).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["GuidedDiffusionPipeline", scheduler_name, "NoisyClassifier"]


def test_scheduler_loads_into_diffusers_pipeline_folder(tmp_path):
    """A DDPMPipeline saved with our scheduler loads back with it in a fresh process."""
    pipeline = DDPMPipeline(unet=make_tiny_unet(num_class_embeds=None), scheduler=PredictorCorrectorScheduler())
    pipeline.save_pretrained(tmp_path)
    script = f"""
import diffusers_ext
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r})
print(type(pipe).__name__, type(pipe.scheduler).__name__, pipe.scheduler.config.corrector_steps)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["DDPMPipeline", "PredictorCorrectorScheduler", "1"]


def test_loading_without_import_says_what_to_do(tmp_path):
    GuidedDiffusionPipeline(make_tiny_unet(), PosteriorScheduler()).save_pretrained(tmp_path)
    script = f"""
from diffusers import DiffusionPipeline
DiffusionPipeline.from_pretrained({str(tmp_path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "GuidedDiffusionPipeline" in result.stderr
