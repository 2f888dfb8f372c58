"""Training reports: the loss log, loss by noise level, sample grids and the replica check."""

import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers.utils import make_image_grid

logger = get_logger(__name__, log_level="INFO")


class LevelLossMeter:
    """Per-sample losses accumulated in ten equal bands of noise level (0 = clean, 1 = most noise)."""

    NUM_BANDS = 10

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.NUM_BANDS, dtype=torch.float64)
        self.counts = torch.zeros(self.NUM_BANDS, dtype=torch.float64)

    def add(self, per_sample: torch.Tensor, levels: torch.Tensor) -> None:
        bands = (levels.detach().double().cpu() * self.NUM_BANDS).long().clamp(0, self.NUM_BANDS - 1)
        self.sums.index_add_(0, bands, per_sample.detach().double().cpu())
        self.counts.index_add_(0, bands, torch.ones_like(bands, dtype=torch.float64))

    def bands(self, accelerator) -> List[Optional[float]]:
        """Mean loss per band over all processes since the last call (None for an empty band); resets."""
        totals = accelerator.reduce(torch.stack([self.sums, self.counts]).to(accelerator.device), reduction="sum")
        self.reset()
        sums, counts = totals.cpu()
        return [float(s / c) if c > 0 else None for s, c in zip(sums, counts)]


class TrainingLog:
    """Writes logged values to `train_log.jsonl` in the output folder and to accelerate's trackers.

    Only the main process writes. Loss by noise level goes to trackers as scalars, and to
    TensorBoard also as a histogram whose buckets are the noise-level bands.
    """

    def __init__(self, output_dir: str, accelerator):
        self.accelerator = accelerator
        self.path = os.path.join(output_dir, "train_log.jsonl")

    def write(self, step: int, values: Dict[str, float], band_losses: List[Optional[float]]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, **values, "loss_by_noise_level": band_losses}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

        scalars = dict(values)
        scalars.update({f"loss_by_noise_level/band_{b}": v for b, v in enumerate(band_losses) if v is not None})
        self.accelerator.log(scalars, step=step)
        self._tensorboard_histogram(step, band_losses)

    def _tensorboard_histogram(self, step: int, band_losses: List[Optional[float]]) -> None:
        try:
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        except (ValueError, AttributeError):
            return
        if not hasattr(writer, "add_histogram_raw"):
            return
        losses = np.array([v if v is not None else 0.0 for v in band_losses])
        edges = np.linspace(0.1, 1.0, len(losses))
        writer.add_histogram_raw(
            "loss_by_noise_level",
            min=0.0,
            max=1.0,
            num=len(losses),
            sum=float((losses * edges).sum()),
            sum_squares=float((losses * edges**2).sum()),
            bucket_limits=edges.tolist(),
            bucket_counts=losses.tolist(),
            global_step=step,
        )


@torch.no_grad()
def log_validation_images(accelerator, task, model, ema, args, position) -> Optional[str]:
    """Sample a small grid with the current (EMA) weights, save it as PNG and log it to the trackers."""
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    pipeline = task.pipeline(unwrapped)
    if pipeline is None:
        return None
    if ema is not None:
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
    was_training = unwrapped.training
    unwrapped.eval()
    try:
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        count = args.num_validation_images
        if unwrapped.config.num_class_embeds is not None:
            classes = unwrapped.config.num_class_embeds - 1
            kwargs = {"class_labels": [i % classes for i in range(count)]}
        else:
            kwargs = {"batch_size": count}
        images = pipeline(num_inference_steps=args.validation_inference_steps, generator=generator, output_type="pil", **kwargs).images
    finally:
        unwrapped.train(was_training)
        if ema is not None:
            ema.restore(unwrapped.parameters())

    columns = min(count, 10)
    rows = -(-count // columns)
    grid = make_image_grid(images + [images[-1]] * (rows * columns - count), rows=rows, cols=columns)
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"epoch-{position.epoch:04d}-step-{position.global_step:07d}.png")
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": np.stack([np.asarray(image.convert("RGB")) for image in images])},
                               step=position.global_step, dataformats="NHWC")  # fmt: skip
    logger.info(f"validation grid written to {path}")
    return path


def replicas_in_sync(accelerator, model) -> bool:
    """Return whether all processes have bit-identical parameters (compared by two checksums)."""
    parameters = torch.cat([p.detach().double().flatten() for p in accelerator.unwrap_model(model).parameters()])
    checksum = torch.stack([parameters.sum(), parameters.pow(2).sum()]).unsqueeze(0).to(accelerator.device)
    gathered = accelerator.gather(checksum)
    same = bool((gathered == gathered[0]).all())
    if same:
        logger.info(f"parameters identical on all {accelerator.num_processes} processes")
    return same
