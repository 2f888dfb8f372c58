"""Sample a class-conditional pipeline at several guidance scales, write a grid and score it.

    python -m diffusers_ext.evaluation.class_grid --pipeline runs/mnist-cfg --guidance_scales 1 3

The grid has one row per class and one panel per guidance scale. Every panel starts from the
same initial noise, so columns are comparable across panels. Each sample is scored by a digit
classifier trained on the bundled real digits at the pipeline's resolution. The share it labels
as the requested class is the "label accuracy" written to the metrics file.
"""

import argparse
import json
import os
import time
from typing import List, Optional, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging, make_image_grid
from PIL import Image, ImageDraw

from ..data.mnist import mnist_5k_dataset
from ..training.data import image_to_tensor
from .digit_classifier import label_accuracy, train_digit_classifier

logger = logging.get_logger(__name__)


def sample_classes(
    pipeline,
    num_classes: int,
    samples_per_class: int,
    guidance_scale: float,
    num_inference_steps: int,
    seed: int,
    batch_size: int = 500,
    **pipeline_kwargs,
):
    """Images (N, C, H, W) in [0, 1] and labels (N,), `samples_per_class` for each class in order.

    One generator seeded with `seed` draws all initial noise, so two calls that differ only in
    `guidance_scale` start from the same noise. An unconditional unet without classifier guidance
    ignores the labels: it samples `len(labels)` images, so scoring them against the labels gives
    the chance-level baseline.
    """
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    unguided = pipeline.unet.config.num_class_embeds is None and not pipeline_kwargs.get("classifier_scale")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    images = []
    for batch in labels.split(batch_size):
        request = {"batch_size": len(batch)} if unguided else {"class_labels": batch.tolist()}
        output = pipeline(
            **request,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
            **pipeline_kwargs,
        )
        images.append(output.images.cpu())
    return torch.cat(images), labels


def class_rows_grid(images: torch.Tensor, num_classes: int, columns: int) -> Image.Image:
    """Build a grid whose row c shows the first `columns` images of class c (`images` sorted by class)."""
    per_class = images.shape[0] // num_classes
    chosen = torch.cat([images[c * per_class : c * per_class + columns] for c in range(num_classes)])
    pixels = (chosen.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    tiles = [Image.fromarray(p.squeeze(-1) if mode == "L" else p, mode=mode) for p in pixels]
    return make_image_grid(tiles, rows=num_classes, cols=columns)


def side_by_side(panels: Sequence[Image.Image], titles: Sequence[str], scale: int = 2, gap: int = 8) -> Image.Image:
    """Panels upscaled by `scale` (nearest neighbour) next to each other, each under its title."""
    panels = [panel.convert("RGB").resize((panel.width * scale, panel.height * scale), Image.NEAREST) for panel in panels]
    header = 16
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, header + max(panel.height for panel in panels)), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for panel, title in zip(panels, titles):
        draw.text((left + 2, 2), title, fill="black")
        canvas.paste(panel, (left, header))
        left += panel.width + gap
    return canvas


def reference_digits(resolution: int, channels: int):
    """The bundled digits preprocessed as the training entry point does for this resolution."""
    dataset = mnist_5k_dataset()
    mode = "L" if channels == 1 else "RGB"
    images = torch.stack([image_to_tensor(image, mode, resolution, pad_small=True) for image in dataset["image"]])
    return images, torch.tensor(dataset["label"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="Pipeline folder written by the training entry point.")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--samples_per_class", type=int, default=50, help="Samples per class that are scored.")
    parser.add_argument("--grid_columns", type=int, default=10, help="Samples per class shown in the grid.")
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--eta", type=float, default=None, help="Override the scheduler's eta (1 ancestral, 0 DDIM).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="PNG path; default <pipeline>/samples_grid.png.")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.grid_columns > args.samples_per_class:
        raise ValueError("--grid_columns cannot exceed --samples_per_class.")
    import diffusers_ext  # noqa: F401  (registers the pipeline class with diffusers)

    pipeline = DiffusionPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    if args.eta is not None:
        pipeline.scheduler.register_to_config(eta=args.eta)
    unet_config = pipeline.unet.config
    if unet_config.num_class_embeds is None:
        raise ValueError(f"{args.pipeline} contains an unconditional unet; a per-class grid needs class labels.")
    num_classes = unet_config.num_class_embeds - 1
    if num_classes != 10:
        raise ValueError(
            f"{args.pipeline} has {num_classes} classes; the scoring classifier is trained on the 10 bundled digits."
        )

    start = time.monotonic()
    real_images, real_labels = reference_digits(unet_config.sample_size, unet_config.in_channels)
    classifier, report = train_digit_classifier(real_images, real_labels, seed=args.seed)
    print(f"digit classifier: {report.held_out_accuracy:.1%} on {report.num_held_out} held-out real digits")

    panels, metrics = [], {"classifier_held_out_accuracy": report.held_out_accuracy, "scales": {}}
    for scale in args.guidance_scales:
        scale_start = time.monotonic()
        images, labels = sample_classes(
            pipeline, num_classes, args.samples_per_class, scale, args.num_inference_steps, args.seed
        )
        accuracy = label_accuracy(classifier, images * 2 - 1, labels)
        seconds = time.monotonic() - scale_start
        metrics["scales"][str(scale)] = {"label_accuracy": accuracy, "num_samples": len(labels), "seconds": seconds}
        print(f"guidance scale {scale:g}: label accuracy {accuracy:.1%} over {len(labels)} samples ({seconds:.0f} s)")
        panels.append(class_rows_grid(images, num_classes, args.grid_columns))

    output = args.output or os.path.join(args.pipeline, "samples_grid.png")
    side_by_side(panels, [f"guidance scale {scale:g}" for scale in args.guidance_scales]).save(output)
    metrics.update(
        num_inference_steps=args.num_inference_steps,
        eta=pipeline.scheduler.config.get("eta"),
        seconds=time.monotonic() - start,
        grid=output,
    )
    metrics_path = os.path.splitext(output)[0] + "_metrics.json"
    with open(metrics_path, "w") as handle:
        json.dump(metrics, handle, indent=2)
    print(f"grid written to {output}; metrics to {metrics_path}")
    return metrics


if __name__ == "__main__":
    main()
