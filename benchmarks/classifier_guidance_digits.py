"""Classifier guidance on the bundled digits: label accuracy as a function of classifier_scale.

    python benchmarks/classifier_guidance_digits.py --denoiser_minutes 6 --classifier_minutes 3

Trains an unconditional denoiser (no labels, the classic setting) and a NoisyClassifier on the
same noise schedule, then samples 30 images per requested digit at several classifier scales
with 25 PosteriorScheduler steps. A separate clean-image digit classifier, trained on the real
digits, scores how many samples show the requested digit. When guidance works, that share rises
with the scale. With `--cfg_pipeline` (a class-conditional pipeline such as `make demo`'s) it
also measures classifier guidance on top of classifier-free guidance. Writes
benchmarks/results/classifier_guidance_digits.{md,json,png}.
"""

import argparse
import json
import os
import time

from diffusers import DiffusionPipeline
from results_io import result_path, write_results

import diffusers_ext  # noqa: F401
from diffusers_ext import NoisyClassifier
from diffusers_ext.evaluation.class_grid import class_rows_grid, reference_digits, sample_classes, side_by_side
from diffusers_ext.evaluation.digit_classifier import label_accuracy, train_digit_classifier
from diffusers_ext.training import main as training_main

SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)


def train(task: str, minutes: float, output_dir: str, *extra: str) -> None:
    training_main.main(
        [
            "--task", task, "--dataset_name", "mnist-5k", "--resolution", "28", "--train_batch_size", "64",
            "--max_train_minutes", str(minutes), "--output_dir", output_dir, "--logging_steps", "200", *extra,
        ]
    )  # fmt: skip


def measure(pipeline, scorer, scales, guidance_scale, samples_per_class, seed=0):
    rows, panels = {}, []
    for scale in scales:
        start = time.monotonic()
        images, labels = sample_classes(
            pipeline, 10, samples_per_class, guidance_scale, 25, seed, classifier_scale=scale
        )
        rows[scale] = {"label_accuracy": label_accuracy(scorer, images * 2 - 1, labels), "seconds": time.monotonic() - start}
        print(f"guidance_scale {guidance_scale:g}, classifier_scale {scale:g}: {rows[scale]['label_accuracy']:.1%}", flush=True)
        panels.append(class_rows_grid(images, 10, min(8, samples_per_class)))
    return rows, panels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--denoiser_minutes", type=float, default=6.0)
    parser.add_argument("--classifier_minutes", type=float, default=3.0)
    parser.add_argument("--run_dir", default="runs/classifier-guidance")
    parser.add_argument("--samples_per_class", type=int, default=30)
    parser.add_argument("--cfg_pipeline", default=None, help="Also guide this class-conditional pipeline.")
    args = parser.parse_args()

    denoiser_dir = os.path.join(args.run_dir, "denoiser")
    classifier_dir = os.path.join(args.run_dir, "classifier")
    if not os.path.exists(os.path.join(denoiser_dir, "model_index.json")):
        train("denoiser", args.denoiser_minutes, denoiser_dir, "--label_column", "none", "--use_ema")
    if not os.path.exists(os.path.join(classifier_dir, "config.json")):
        train("classifier", args.classifier_minutes, classifier_dir)

    classifier = NoisyClassifier.from_pretrained(classifier_dir)
    real_images, real_labels = reference_digits(28, 1)
    scorer, report = train_digit_classifier(real_images, real_labels)
    with open(os.path.join(classifier_dir, "accuracy_by_noise_level.json")) as handle:
        noisy_accuracy = json.load(handle)["accuracy"]

    results = {"scorer_held_out_accuracy": report.held_out_accuracy, "noisy_classifier_accuracy": noisy_accuracy}
    pipeline = DiffusionPipeline.from_pretrained(denoiser_dir, classifier=classifier)
    pipeline.set_progress_bar_config(disable=True)
    results["unconditional"], panels = measure(pipeline, scorer, SCALES, 1.0, args.samples_per_class)
    titles = [f"classifier scale {scale:g}" for scale in SCALES]

    if args.cfg_pipeline:
        conditional = DiffusionPipeline.from_pretrained(args.cfg_pipeline, classifier=classifier)
        conditional.set_progress_bar_config(disable=True)
        results["cfg_scale_1"], _ = measure(conditional, scorer, (0.0, 1.0, 2.0), 1.0, args.samples_per_class)

    side_by_side(panels, titles).save(result_path("classifier_guidance_digits.png"))
    write_results("classifier_guidance_digits", results, render(results, args))


def render(results, args) -> str:
    lines = [
        "# Classifier guidance on the bundled digits",
        "",
        f"Command: `python benchmarks/classifier_guidance_digits.py --denoiser_minutes {args.denoiser_minutes:g} "
        f"--classifier_minutes {args.classifier_minutes:g}"
        + (f" --cfg_pipeline {args.cfg_pipeline}" if args.cfg_pipeline else "")
        + f"`. {args.samples_per_class} samples per digit, "
        "25 ancestral PosteriorScheduler steps. Label accuracy: the share of samples a clean digit classifier "
        f"(held-out accuracy {results['scorer_held_out_accuracy']:.1%}) reads as the requested digit.",
        "",
        "NoisyClassifier held-out accuracy by noise level: "
        + ", ".join(f"{band} {value:.0%}" for band, value in results["noisy_classifier_accuracy"].items()),
        "",
        "| classifier_scale | unconditional denoiser |" + (" class-conditional, guidance_scale 1 |" if "cfg_scale_1" in results else ""),
        "| --- | --- |" + (" --- |" if "cfg_scale_1" in results else ""),
    ]
    for scale, row in results["unconditional"].items():
        line = f"| {scale:g} | {row['label_accuracy']:.1%} |"
        if "cfg_scale_1" in results:
            other = results["cfg_scale_1"].get(scale)
            line += f" {other['label_accuracy']:.1%} |" if other else " |"
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
