"""The training entry point: `accelerate launch -m diffusers_ext.train ...` or `diffusers-ext-train ...`."""

import gc
import logging
import math
import os
import time
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .args import parse_args
from .checkpoints import (
    TrainingPosition,
    load_position,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .data import EpochShuffleSampler, IndexedDataset, collate, prepare_training_data
from .hub import check_hub_access, push_training_output
from .monitoring import LevelLossMeter, TrainingLog, log_validation_images, replicas_in_sync
from .precision import check_mixed_precision
from .randomness import ExampleRandomness
from .tasks import build_task

logger = get_logger(__name__, log_level="INFO")

# Fewer optimizer steps than this rarely give recognisable samples (MNIST at 28x28, batch 64:
# noise after 85 steps, rough digits after 400, clean ones after 1,200; see docs/results.md).
FEW_STEPS = 500


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or the gradient norm is NaN or infinite; nothing is saved after it."""


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


def launched_without_gpus() -> bool:
    """Return whether several processes were launched on a machine with no GPU.

    `accelerate launch --multi_gpu --num_processes N` starts N processes there too, but accelerate
    1.x only joins them into one data-parallel group (gloo) when the Accelerator is created with
    cpu=True.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    has_gpu = torch.cuda.is_available() or (getattr(torch, "xpu", None) is not None and torch.xpu.is_available())
    return world_size > 1 and not has_gpu


def build_accelerator(args) -> Accelerator:
    return Accelerator(
        cpu=launched_without_gpus(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to.split(",") if args.report_to else None,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )


def build_ema(args, task, model) -> Optional[EMAModel]:
    if not args.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=task.model_cls,
        model_config=model.config,
    )


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    check_mixed_precision(args.mixed_precision)
    accelerator = build_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    hub_repo_id = check_hub_access(accelerator, args)  # rejects a bad token before any work
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        remove_partial_checkpoints(args.output_dir)

    data = prepare_training_data(args)
    task = build_task(args, data)
    torch.manual_seed(args.seed)  # identical initial weights on every process
    model = task.build_model()
    ema = build_ema(args, task, model)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataset = IndexedDataset(task.train_dataset)
    sampler = EpochShuffleSampler(len(dataset), args.seed)
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0,
        collate_fn=collate,
        drop_last=len(dataset) >= args.train_batch_size * accelerator.num_processes,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=(args.max_train_steps or 0) * accelerator.num_processes,
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    if args.report_to:
        accelerator.init_trackers("diffusers-ext", config={k: str(v) for k, v in vars(args).items()})

    position = TrainingPosition()
    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info("no complete checkpoint to resume from; starting a new run")
        else:
            accelerator.load_state(checkpoint)
            position = load_position(checkpoint)
            logger.info(f"resumed from {checkpoint} at step {position.global_step}")
    if position.batches_in_epoch >= len(dataloader):
        position.epoch, position.batches_in_epoch = position.epoch + 1, 0

    logger.info(
        f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter {args.task} on "
        f"{len(dataset)} images ({data.num_classes or 'no'} classes), {accelerator.num_processes} process(es), "
        f"batch {args.train_batch_size} per process, {args.gradient_accumulation_steps} accumulation step(s)"
    )
    randomness = ExampleRandomness(args.seed)
    meter = LevelLossMeter()
    log = TrainingLog(args.output_dir, accelerator)
    progress = tqdm(
        total=args.max_train_steps,
        initial=position.global_step,
        disable=not accelerator.is_local_main_process,
        desc="training",
        unit="step",
    )
    start = time.monotonic()
    running_loss, running_count = 0.0, 0
    done = args.max_train_steps is not None and position.global_step >= args.max_train_steps
    while not done:
        sampler.set_epoch(position.epoch)
        epoch_loader = accelerator.skip_first_batches(dataloader, position.batches_in_epoch)
        for batch in epoch_loader:
            position.batches_in_epoch += 1
            draws = randomness.draw(batch["indices"].tolist(), position.epoch, batch["pixel_values"].shape[1:])
            draws = draws.to(accelerator.device)
            with accelerator.accumulate(model):
                loss, per_sample, levels = task.loss(model, batch, draws)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    _check_finite(loss.detach(), torch.as_tensor(grad_norm), position.global_step + 1)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            meter.add(per_sample, levels)
            running_loss += accelerator.reduce(loss.detach(), reduction="mean").item()
            running_count += 1
            if not accelerator.sync_gradients:
                continue

            position.global_step += 1
            if ema is not None and position.global_step % args.ema_update_interval == 0:
                ema.step(model.parameters())
            progress.update(1)
            if position.global_step % args.logging_steps == 0:
                logs = {"loss": running_loss / running_count, "lr": lr_scheduler.get_last_lr()[0]}
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                log.write(position.global_step, logs, meter.bands(accelerator))
                running_loss, running_count = 0.0, 0

            if args.checkpointing_steps and position.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, position, args.checkpoints_total_limit)

            out_of_steps = args.max_train_steps is not None and position.global_step >= args.max_train_steps
            if out_of_steps or _time_is_up(accelerator, start, args.max_train_minutes):
                done = True
                break
        else:
            position.epoch, position.batches_in_epoch = position.epoch + 1, 0
            if args.validation_epochs and position.epoch % args.validation_epochs == 0:
                log_validation_images(accelerator, task, model, ema, args, position)
    progress.close()

    accelerator.wait_for_everyone()
    minutes = (time.monotonic() - start) / 60
    logger.info(f"trained to step {position.global_step} in {minutes:.1f} minutes")
    if args.max_train_steps is None and position.global_step < FEW_STEPS and args.task != "classifier":
        logger.warning(
            f"only {position.global_step} optimizer steps fit in --max_train_minutes {args.max_train_minutes}; samples "
            "of so short a run are usually noise. Allow more minutes, or bound the run with --max_train_steps instead."
        )
    if accelerator.num_processes > 1 and not replicas_in_sync(accelerator, model):
        raise RuntimeError("model replicas differ between processes after training; nothing was saved.")

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final.parameters())
        task.save(final, args.output_dir)
        logger.info(f"{args.task} saved to {args.output_dir}")
        if args.push_to_hub:
            push_training_output(args, hub_repo_id, position.global_step, device=accelerator.device)

    # Free the DDP wrapper while its gloo process group is still registered. Freed after
    # end_training, its reducer would drop the last reference to the destroyed group while holding
    # the GIL. The group's destructor then waits for a gloo thread that needs the GIL, so the
    # process hangs at exit (seen in about 1 of 3 two-process runs, torch 2.13 on CPU).
    del model, optimizer, dataloader, lr_scheduler
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    return args.output_dir


def cli() -> None:
    """Run `main` as the `diffusers-ext-train` console script, which exits with `cli`'s return value."""
    main()


if __name__ == "__main__":
    cli()
