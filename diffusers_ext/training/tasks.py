"""Training tasks: for each `--task`, its network, noise schedule, loss and saved output.

A task object is built once from the parsed arguments and the training data. The training loop
in `main` only calls `build_model`, `loss` and `save`, so every task shares the loop's
accelerate handling, EMA, checkpointing and logging.
"""

import json
import os
from typing import Dict, Optional, Tuple

import torch
from accelerate.logging import get_logger
from diffusers import UNet2DModel

from ..models import NoisyClassifier
from ..pipelines import GuidedDiffusionPipeline
from ..schedulers import AnnealedLangevinScheduler, PosteriorScheduler
from .finetune import load_pretrained_classifier, load_pretrained_scheduler, load_pretrained_unet
from .losses import denoiser_loss, drop_labels, noisy_classifier_loss, score_matching_loss
from .models import build_unet
from .randomness import ExampleDraws

logger = get_logger(__name__, log_level="INFO")

# (loss, per-sample loss (B,), noise level of each sample in [0, 1] (B,), for logging by level)
LossOutput = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def build_noise_schedule(args) -> PosteriorScheduler:
    """Build the VP forward process of the denoiser (and of a classifier meant to guide it).

    When fine-tuning, the pretrained model's schedule is kept (its `scheduler` subfolder), and
    only the prediction type follows `--prediction_type`.
    """
    if args.pretrained_model_name_or_path:
        return load_pretrained_scheduler(
            args.pretrained_model_name_or_path, PosteriorScheduler, prediction_type=args.prediction_type
        )
    return PosteriorScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        rescale_betas_zero_snr=args.rescale_betas_zero_snr,
        clip_sample=True,
        eta=1.0,
    )


def write_training_args(args, output_dir: str) -> None:
    with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
        json.dump(vars(args), handle, indent=2, sort_keys=True)


class DenoiserTask:
    """A variance-preserving denoiser (epsilon, sample or v_prediction), class-conditional with a null class."""

    model_cls = UNet2DModel

    def __init__(self, args, data):
        self.args = args
        self.data = data
        self.scheduler = build_noise_schedule(args)

    @property
    def train_dataset(self):
        return self.data.dataset

    @property
    def null_class(self) -> Optional[int]:
        """The class index trained for the unconditional prediction: the last embedding row."""
        return self.data.num_classes

    def build_model(self) -> UNet2DModel:
        if self.args.pretrained_model_name_or_path:
            unet = load_pretrained_unet(
                self.args.pretrained_model_name_or_path, self.data.num_channels, self.data.num_classes, self.args.resolution
            )
        else:
            unet = build_unet(self.args, self.data.num_channels, self.data.num_classes)
        self.num_class_embeds = unet.config.num_class_embeds
        return unet

    def model_labels(self, model, batch: Dict[str, torch.Tensor], draws: ExampleDraws) -> Optional[torch.Tensor]:
        """Labels the network receives: dropped to the null class at --cond_drop_prob.

        A conditional network fine-tuned on unlabelled data receives its null class throughout.
        """
        num_class_embeds = self.num_class_embeds
        labels = batch.get("labels")
        if num_class_embeds is None:
            return None
        if labels is None:
            batch_size = batch["pixel_values"].shape[0]
            return torch.full((batch_size,), num_class_embeds - 1, device=batch["pixel_values"].device)
        return drop_labels(labels, draws.dropped(self.args.cond_drop_prob), self.null_class)

    def loss(self, model, batch: Dict[str, torch.Tensor], draws: ExampleDraws) -> LossOutput:
        T = self.scheduler.config.num_train_timesteps
        timesteps = draws.timesteps(T)
        loss, per_sample = denoiser_loss(
            model,
            self.scheduler,
            batch["pixel_values"],
            self.model_labels(model, batch, draws),
            draws.noise.to(batch["pixel_values"].dtype),
            timesteps,
            self.scheduler.config.prediction_type,
            self.args.loss_weighting,
            self.args.snr_gamma,
        )
        return loss, per_sample, timesteps.float() / (T - 1)

    def pipeline(self, model) -> GuidedDiffusionPipeline:
        return GuidedDiffusionPipeline(unet=model, scheduler=self.scheduler)

    def save(self, model, output_dir: str) -> None:
        """Write the pipeline folder and the training arguments."""
        self.pipeline(model).save_pretrained(output_dir, safe_serialization=True)
        write_training_args(self.args, output_dir)


class ScoreTask(DenoiserTask):
    """A variance-exploding score network s(x, sigma) trained by denoising score matching.

    The network is a UNet2DModel with Fourier features of log sigma; the saved pipeline samples
    with `AnnealedLangevinScheduler` over the training range of sigma.
    """

    def __init__(self, args, data):
        self.args = args
        self.data = data
        if args.pretrained_model_name_or_path:
            self.scheduler = load_pretrained_scheduler(args.pretrained_model_name_or_path, AnnealedLangevinScheduler)
        else:
            self.scheduler = AnnealedLangevinScheduler(
                sigma_min=args.sigma_min, sigma_max=args.sigma_max, sigma_data=args.sigma_data
            )

    def build_model(self) -> UNet2DModel:
        if self.args.pretrained_model_name_or_path:
            return super().build_model()
        unet = build_unet(self.args, self.data.num_channels, self.data.num_classes, time_embedding_type="fourier")
        self.num_class_embeds = unet.config.num_class_embeds
        return unet

    def loss(self, model, batch: Dict[str, torch.Tensor], draws: ExampleDraws) -> LossOutput:
        sigma_min, sigma_max = self.scheduler.config.sigma_min, self.scheduler.config.sigma_max
        sigmas = draws.log_uniform(sigma_min, sigma_max).to(batch["pixel_values"].dtype)
        loss, per_sample = score_matching_loss(
            model,
            self.scheduler,
            batch["pixel_values"],
            self.model_labels(model, batch, draws),
            draws.noise.to(batch["pixel_values"].dtype),
            sigmas,
        )
        level = (sigmas.double().log() - torch.tensor(sigma_min).log()) / (
            torch.tensor(sigma_max).log() - torch.tensor(sigma_min).log()
        )
        return loss, per_sample, level.float()


class ClassifierTask:
    """A noise-aware classifier p(c | x_t, t) on the denoiser's forward process, for classifier guidance.

    A random `--classifier_eval_fraction` of the labelled data is held out. After training, the
    classifier's accuracy on it is measured in ten bands of t and written to
    `accuracy_by_noise_level.json`. The output folder loads with `NoisyClassifier.from_pretrained`;
    its `scheduler/` subfolder records the noise schedule it was trained on.
    """

    model_cls = NoisyClassifier
    NUM_BANDS = 10

    def __init__(self, args, data):
        if data.num_classes is None:
            raise ValueError("--task classifier needs class labels; set --label_column to a column of integer labels.")
        self.args = args
        self.data = data
        self.scheduler = build_noise_schedule(args)
        split = data.dataset.train_test_split(test_size=args.classifier_eval_fraction, seed=args.seed)
        self._train, self._eval = split["train"], split["test"]

    @property
    def train_dataset(self):
        return self._train

    def build_model(self) -> NoisyClassifier:
        if self.args.pretrained_model_name_or_path:
            return load_pretrained_classifier(
                self.args.pretrained_model_name_or_path, self.data.num_channels, self.data.num_classes, self.args.resolution
            )
        return NoisyClassifier(
            sample_size=self.args.resolution,
            in_channels=self.data.num_channels,
            num_classes=self.data.num_classes,
            block_out_channels=tuple(self.args.block_out_channels),
            layers_per_block=self.args.layers_per_block,
            norm_num_groups=self.args.norm_num_groups,
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
        )

    def loss(self, model, batch: Dict[str, torch.Tensor], draws: ExampleDraws) -> LossOutput:
        T = self.scheduler.config.num_train_timesteps
        timesteps = draws.timesteps(T)
        loss, per_sample = noisy_classifier_loss(
            model,
            self.scheduler,
            batch["pixel_values"],
            batch["labels"],
            draws.noise.to(batch["pixel_values"].dtype),
            timesteps,
        )
        return loss, per_sample, timesteps.float() / (T - 1)

    @torch.no_grad()
    def accuracy_by_noise_level(self, model, batch_size: int = 256, seed: int = 0) -> Dict[str, float]:
        """Held-out accuracy in ten equal bands of t, each example at a t drawn uniformly within the band."""
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        T = self.scheduler.config.num_train_timesteps
        edges = torch.linspace(0, T, self.NUM_BANDS + 1).long()
        correct = torch.zeros(self.NUM_BANDS)
        total = 0
        device = next(model.parameters()).device
        for start in range(0, len(self._eval), batch_size):
            rows = self._eval[start : start + batch_size]
            images = torch.stack(rows["pixel_values"]).to(device)
            labels = torch.as_tensor(rows["labels"], device=device)
            for band in range(self.NUM_BANDS):
                low, high = int(edges[band]), int(edges[band + 1])
                timesteps = torch.randint(low, high, (images.shape[0],), generator=generator).to(device)
                noise = torch.randn(images.shape, generator=generator).to(device)
                noisy = self.scheduler.add_noise(images, noise, timesteps)
                correct[band] += (model(noisy, timesteps).argmax(dim=1) == labels).sum().item()
            total += images.shape[0]
        model.train(was_training)
        return {f"t={int(edges[b])}-{int(edges[b + 1]) - 1}": float(correct[b] / max(total, 1)) for b in range(self.NUM_BANDS)}

    def pipeline(self, model) -> None:
        return None

    def save(self, model, output_dir: str) -> None:
        """Write the classifier, its noise schedule, the training arguments and the accuracy report."""
        model.save_pretrained(output_dir, safe_serialization=True)
        self.scheduler.save_pretrained(os.path.join(output_dir, "scheduler"))
        write_training_args(self.args, output_dir)
        report = self.accuracy_by_noise_level(model, seed=self.args.seed)
        with open(os.path.join(output_dir, "accuracy_by_noise_level.json"), "w") as handle:
            json.dump({"num_held_out": len(self._eval), "accuracy": report}, handle, indent=2)
        logger.info("held-out accuracy by noise level: " + ", ".join(f"{k} {v:.1%}" for k, v in report.items()))


TASK_CLASSES = {"denoiser": DenoiserTask, "score": ScoreTask, "classifier": ClassifierTask}


def build_task(args, data):
    """Build the task object for `args.task`."""
    return TASK_CLASSES[args.task](args, data)
