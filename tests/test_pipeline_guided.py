import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_unet
from diffusers import DDIMScheduler
from PIL import Image

from diffusers_ext import GuidedDiffusionPipeline, PosteriorScheduler
from diffusers_ext.core.guidance import classifier_free_guidance


def make_pipeline(unet=None, **scheduler_kwargs):
    pipeline = GuidedDiffusionPipeline(unet=unet or make_tiny_unet(), scheduler=PosteriorScheduler(**scheduler_kwargs))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class ForwardRecorder:
    """Records the batch size and class labels of every unet forward pass."""

    def __init__(self, unet):
        self.calls = []
        unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append((args[0].shape[0], kwargs.get("class_labels")))


def test_output_types():
    pipeline = make_pipeline()
    generator = torch.Generator().manual_seed(0)
    pil = pipeline([0, 1], num_inference_steps=3, generator=generator).images
    array = pipeline([0, 1], num_inference_steps=3, generator=generator, output_type="np").images
    tensor = pipeline([0, 1], num_inference_steps=3, generator=generator, output_type="pt").images
    assert isinstance(pil[0], Image.Image)
    assert pil[0].size == (8, 8)
    assert pil[0].mode == "L"
    assert array.shape == (2, 8, 8, 1)
    assert array.min() >= 0
    assert array.max() <= 1
    assert tensor.shape == (2, 1, 8, 8)


def test_generator_reproducible():
    pipeline = make_pipeline()
    first = pipeline([0, 2], 4, guidance_scale=2.0, generator=torch.Generator().manual_seed(7), output_type="np")
    second = pipeline([0, 2], 4, guidance_scale=2.0, generator=torch.Generator().manual_seed(7), output_type="np")
    third = pipeline([0, 2], 4, guidance_scale=2.0, generator=torch.Generator().manual_seed(8), output_type="np")
    np.testing.assert_array_equal(first.images, second.images)
    assert not np.array_equal(first.images, third.images)


def test_scale_one_runs_only_conditional_pass():
    pipeline = make_pipeline()
    recorder = ForwardRecorder(pipeline.unet)
    pipeline([0, 1, 2], num_inference_steps=4, guidance_scale=1.0, output_type="np")
    assert len(recorder.calls) == 4
    assert all(batch == 3 and labels.tolist() == [0, 1, 2] for batch, labels in recorder.calls)


def test_guidance_batches_both_passes():
    pipeline = make_pipeline()
    recorder = ForwardRecorder(pipeline.unet)
    pipeline([0, 1, 2], num_inference_steps=4, guidance_scale=3.0, output_type="np")
    assert len(recorder.calls) == 4
    assert all(batch == 6 and labels.tolist() == [0, 1, 2, 3, 3, 3] for batch, labels in recorder.calls)


def test_guided_prediction_combines_both_passes():
    pipeline = make_pipeline()
    latents, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(500), torch.tensor([0, 2])
    cond = pipeline.unet(latents, t, class_labels=labels).sample
    uncond = pipeline.unet(latents, t, class_labels=torch.tensor([3, 3])).sample
    guided = pipeline.predict(latents, t, labels, guidance_scale=4.0)
    torch.testing.assert_close(guided, classifier_free_guidance(cond, uncond, 4.0), rtol=1e-4, atol=1e-5)


def test_scale_zero_is_unconditional():
    pipeline = make_pipeline()
    latents, t = torch.randn(2, 1, 8, 8), torch.tensor(10)
    uncond = pipeline.unet(latents, t, class_labels=torch.tensor([3, 3])).sample
    torch.testing.assert_close(pipeline.predict(latents, t, torch.tensor([0, 1]), 0.0), uncond)


def test_learned_variance_half_not_guided():
    pipeline = make_pipeline(make_tiny_unet(out_channels=2), variance_type="learned_range")
    latents, t, labels = torch.randn(1, 1, 8, 8), torch.tensor(300), torch.tensor([1])
    cond = pipeline.unet(latents, t, class_labels=labels).sample
    guided = pipeline.predict(latents, t, labels, guidance_scale=5.0)
    assert guided.shape == (1, 2, 8, 8)
    torch.testing.assert_close(guided[:, 1:], cond[:, 1:])
    images = pipeline([1], num_inference_steps=3, guidance_scale=5.0, output_type="np").images
    assert images.shape == (1, 8, 8, 1)


def test_unconditional_unet_with_batch_size():
    pipeline = make_pipeline(make_tiny_unet(num_class_embeds=None))
    images = pipeline(batch_size=3, num_inference_steps=2, output_type="np").images
    assert images.shape == (3, 8, 8, 1)


def test_callback_can_replace_latents():
    pipeline = make_pipeline()
    seen = []

    def callback(pipe, step, timestep, callback_kwargs):
        seen.append((step, int(timestep), callback_kwargs["latents"].shape))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    images = pipeline([0], num_inference_steps=3, callback_on_step_end=callback, output_type="pt").images
    assert [step for step, _, _ in seen] == [0, 1, 2]
    assert seen[0][2] == (1, 1, 8, 8)
    torch.testing.assert_close(images, torch.full_like(images, 0.5))


def test_custom_timesteps():
    pipeline = make_pipeline()
    recorder = ForwardRecorder(pipeline.unet)
    pipeline([0], timesteps=[900, 400, 50], output_type="np")
    assert len(recorder.calls) == 3
    assert pipeline.scheduler.timesteps.tolist() == [900, 400, 50]


def test_runs_with_diffusers_scheduler():
    pipeline = GuidedDiffusionPipeline(make_tiny_unet(), DDIMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline([0, 1], num_inference_steps=3, guidance_scale=2.0, output_type="np").images.shape == (2, 8, 8, 1)


@pytest.mark.parametrize(
    "call,message",
    [
        ({"class_labels": [0, 4]}, r"class_labels must lie in \[0, 3\]"),
        ({"class_labels": None}, "class_labels is required"),
        ({"class_labels": [0], "output_type": "mask"}, "output_type='mask' is not supported"),
        ({"class_labels": [0], "classifier_scale": 1.0}, "has no classifier"),
        ({"class_labels": [0, 1], "generator": [torch.Generator()]}, "got 1 generators for a batch of 2"),
        ({"class_labels": [0], "latents": torch.zeros(1, 1, 4, 4)}, r"latents has shape \(1, 1, 4, 4\)"),
    ],
)
def test_invalid_calls(call, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        make_pipeline()(num_inference_steps=2, **call)


def test_guidance_needs_conditional_unet():
    pipeline = make_pipeline(make_tiny_unet(num_class_embeds=None))
    with pytest.raises(ValueError, match="needs a class-conditional unet with a null class"):
        pipeline(batch_size=1, num_inference_steps=2, guidance_scale=3.0)


def test_save_and_load_in_fresh_process(tmp_path):
    pipeline = make_pipeline(eta=0.0)
    expected = pipeline([1, 2], 3, guidance_scale=2.5, generator=torch.Generator().manual_seed(0), output_type="np")
    pipeline.save_pretrained(tmp_path)
    np.save(tmp_path / "expected.npy", expected.images)

    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "GuidedDiffusionPipeline"
    assert index["scheduler"] == ["diffusers_ext", "PosteriorScheduler"]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()

    script = f"""
import numpy as np, torch
import diffusers_ext
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r})
assert type(pipe).__name__ == "GuidedDiffusionPipeline", type(pipe)
assert type(pipe.scheduler).__name__ == "PosteriorScheduler", type(pipe.scheduler)
pipe.set_progress_bar_config(disable=True)
images = pipe([1, 2], 3, guidance_scale=2.5, generator=torch.Generator().manual_seed(0), output_type="np").images
np.testing.assert_allclose(images, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
"""
    # one thread, as in the test process, so that float reductions run in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
