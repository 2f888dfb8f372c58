"""The training entry point: `accelerate launch -m diffusers_ext.train ...` or `diffusers-ext-train ...`."""

import json
import logging
import math
import os
import time
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..pipelines import GuidedDiffusionPipeline
from ..schedulers import PosteriorScheduler
from .args import parse_args
from .data import collate, prepare_training_data
from .losses import denoiser_loss, drop_labels
from .models import build_unet

logger = get_logger(__name__, log_level="INFO")


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or the gradient norm is NaN or infinite; nothing is saved after it."""


def build_scheduler(args) -> PosteriorScheduler:
    """Build the noise schedule used for training; it is saved with the pipeline for sampling."""
    return PosteriorScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        rescale_betas_zero_snr=args.rescale_betas_zero_snr,
        clip_sample=True,
        eta=1.0,
    )


def _check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise NonFiniteLossError(
            f"loss {loss.item()} / gradient norm {grad_norm.item()} at step {step} is not finite; training "
            "stopped before the optimizer step, so no corrupted weights were saved. Lower --learning_rate, "
            "set --max_grad_norm, or train with --mixed_precision no."
        )


def _time_is_up(accelerator: Accelerator, start: float, max_minutes: Optional[float]) -> bool:
    """Return whether any process has passed the time bound, the same value on every process."""
    if max_minutes is None:
        return False
    passed = torch.tensor(float(time.monotonic() - start > 60 * max_minutes), device=accelerator.device)
    return bool(accelerator.reduce(passed, reduction="sum") > 0)


def save_pipeline(args, unet: UNet2DModel, scheduler: PosteriorScheduler, ema: Optional[EMAModel]) -> str:
    """Write the pipeline folder (EMA weights when kept) and the training arguments to --output_dir."""
    if ema is not None:
        ema.copy_to(unet.parameters())
    pipeline = GuidedDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(args.output_dir, safe_serialization=True)
    with open(os.path.join(args.output_dir, "training_args.json"), "w") as handle:
        json.dump(vars(args), handle, indent=2, sort_keys=True)
    return args.output_dir


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    data = prepare_training_data(args)
    torch.manual_seed(args.seed)  # identical initial weights on every process
    unet = build_unet(args, data.num_channels, data.num_classes)
    scheduler = build_scheduler(args)
    null_class = None if data.num_classes is None else data.num_classes
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            power=args.ema_power,
            model_cls=UNet2DModel,
            model_config=unet.config,
        )

    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataloader = torch.utils.data.DataLoader(
        data.dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        collate_fn=collate,
        drop_last=len(data.dataset) >= args.train_batch_size * accelerator.num_processes,
    )
    total_steps = args.max_train_steps or 0
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    if args.report_to:
        accelerator.init_trackers("diffusers-ext", config={k: str(v) for k, v in vars(args).items()})

    logger.info(
        f"training a {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M-parameter unet on "
        f"{len(data.dataset)} images ({data.num_classes or 'no'} classes), {accelerator.num_processes} process(es), "
        f"batch {args.train_batch_size} per process"
    )
    progress = tqdm(
        total=args.max_train_steps, disable=not accelerator.is_local_main_process, desc="training", unit="step"
    )
    start = time.monotonic()
    global_step, running_loss = 0, 0.0
    done = False
    while not done:
        for batch in dataloader:
            with accelerator.accumulate(unet):
                labels = batch.get("labels")
                if labels is not None:
                    labels = drop_labels(labels, args.cond_drop_prob, null_class)
                loss, _, _ = denoiser_loss(
                    unet,
                    scheduler,
                    batch["pixel_values"],
                    labels,
                    args.prediction_type,
                    args.loss_weighting,
                    args.snr_gamma,
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                    grad_norm = accelerator.clip_grad_norm_(unet.parameters(), max_norm)
                    _check_finite(loss.detach(), torch.as_tensor(grad_norm), global_step + 1)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if ema is not None:
                ema.step(unet.parameters())
            running_loss += loss.item()
            progress.update(1)
            if global_step % args.logging_steps == 0:
                logs = {"loss": running_loss / args.logging_steps, "lr": lr_scheduler.get_last_lr()[0]}
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log(logs, step=global_step)
                running_loss = 0.0

            out_of_steps = args.max_train_steps is not None and global_step >= args.max_train_steps
            if out_of_steps or _time_is_up(accelerator, start, args.max_train_minutes):
                done = True
                break
    progress.close()

    accelerator.wait_for_everyone()
    minutes = (time.monotonic() - start) / 60
    logger.info(f"trained {global_step} steps in {minutes:.1f} minutes")
    if accelerator.is_main_process:
        save_pipeline(args, accelerator.unwrap_model(unet), scheduler, ema)
        logger.info(f"pipeline saved to {args.output_dir}")
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    main()
