"""Sampling helpers of the digit benchmarks (`diffusers_ext.evaluation.class_grid`)."""

import torch
from conftest import make_tiny_unet

from diffusers_ext import GuidedDiffusionPipeline, PosteriorScheduler
from diffusers_ext.evaluation.class_grid import sample_classes


def tiny_pipeline(num_class_embeds):
    unet = make_tiny_unet(num_class_embeds=num_class_embeds)
    pipeline = GuidedDiffusionPipeline(unet=unet, scheduler=PosteriorScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_sample_classes_conditional_labels_in_order():
    pipeline = tiny_pipeline(num_class_embeds=4)
    images, labels = sample_classes(pipeline, 3, 2, guidance_scale=2.0, num_inference_steps=2, seed=0, batch_size=4)

    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert images.shape == (6, 1, 8, 8)
    expected = pipeline([0, 0, 1, 1], num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    torch.testing.assert_close(images[:4], expected, rtol=0, atol=0)


def test_sample_classes_unconditional_unguided_batch():
    """An unconditional unet without a classifier samples by batch size; the labels are the chance baseline."""
    pipeline = tiny_pipeline(num_class_embeds=None)
    images, labels = sample_classes(pipeline, 2, 3, guidance_scale=1.0, num_inference_steps=2, seed=5)

    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = pipeline(batch_size=6, num_inference_steps=2, output_type="pt",
                        generator=torch.Generator().manual_seed(5)).images  # fmt: skip
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
