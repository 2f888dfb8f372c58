"""A score model trained by denoising score matching on the bundled digits, sampled with annealed Langevin.

    python benchmarks/score_model_digits.py --train_minutes 6

Trains `--task score` (class-conditional, with condition dropout) for a bounded time, then
samples 50 images per digit with AnnealedLangevinScheduler at classifier-free guidance scales
1 and 3, and scores them with the clean digit classifier of `make demo`. Writes the grid and
the figures to benchmarks/results/score_model_digits.png and score_model_digits_metrics.json.
"""

import argparse
import os
import time

from results_io import result_path, write_results

from diffusers_ext.evaluation import class_grid
from diffusers_ext.training import main as training_main



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_minutes", type=float, default=6.0)
    parser.add_argument("--output_dir", default="runs/score-digits")
    parser.add_argument("--num_levels", type=int, default=25, help="Noise levels of the annealed sampler.")
    args = parser.parse_args()

    start = time.monotonic()
    if os.path.exists(os.path.join(args.output_dir, "model_index.json")):
        print(f"reusing the model trained earlier in {args.output_dir}")
    else:
        training_main.main(
            [
                "--task", "score", "--dataset_name", "mnist-5k", "--resolution", "28", "--train_batch_size", "64",
                "--max_train_minutes", str(args.train_minutes), "--use_ema", "--output_dir", args.output_dir,
                "--logging_steps", "200",
            ]
        )  # fmt: skip
    training_seconds = time.monotonic() - start

    grid = result_path("score_model_digits.png")
    metrics = class_grid.main(
        [
            "--pipeline", args.output_dir, "--guidance_scales", "1", "3", "--num_inference_steps", str(args.num_levels),
            "--output", grid,
        ]
    )  # fmt: skip
    metrics.update(training_seconds=training_seconds, train_minutes=args.train_minutes)
    write_results("score_model_digits_metrics", metrics)


if __name__ == "__main__":
    main()
