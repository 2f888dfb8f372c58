"""Predictor-corrector against predictor-only sampling at equal model evaluations, with an exact score.

    python benchmarks/pc_vs_predictor.py            # defaults against predictor-only
    python benchmarks/pc_vs_predictor.py --sweep    # also every corrector setting in the grid below

The data are Gaussian mixtures, whose noisy score is a closed form (GaussianMixtureScoreModel),
so every difference between samplers is discretization error, not model error. Each sampler
draws 20,000 points through GuidedDiffusionPipeline with a budget of E model evaluations:
predictor-only takes E PosteriorScheduler steps; predictor-corrector with K corrector steps per
level takes n levels with n + K (n - 1) <= E. The figure is the sliced 2-Wasserstein distance
to 20,000 fresh data points, averaged over seeds. The table also gives the distance between two
independent data sets of that size, the floor no sampler can beat. Results go to
benchmarks/results/pc_vs_predictor.{md,json}.
"""

import argparse
import itertools
import json
import os
import time

import torch

import diffusers_ext  # noqa: F401
from diffusers_ext import GuidedDiffusionPipeline, PosteriorScheduler, PredictorCorrectorScheduler
from diffusers_ext.evaluation.gaussian_mixture import GaussianMixtureScoreModel
from diffusers_ext.evaluation.metrics import sliced_wasserstein
from results_io import result_path, write_results

BUDGETS = (25, 50, 100)


def mixtures():
    """Two test distributions: a 2-D mixture of unequal modes and a 16-D mixture of 8 modes."""
    generator = torch.Generator().manual_seed(0)
    return {
        "2-D, 3 modes": dict(means=[[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], stds=[0.1, 0.2, 0.15], weights=[0.2, 0.3, 0.5]),
        "16-D, 8 modes": dict(
            means=(0.35 * torch.randn(8, 16, generator=generator, dtype=torch.float64)).tolist(),
            stds=(0.05 + 0.1 * torch.rand(8, generator=generator, dtype=torch.float64)).tolist(),
            weights=(0.5 + torch.rand(8, generator=generator, dtype=torch.float64)).tolist(),
        ),
    }


def predictor_levels(budget: int, corrector_steps: int) -> int:
    """Largest n with n + K (n - 1) <= budget."""
    return (budget + corrector_steps) // (corrector_steps + 1)


def sample(model, scheduler, num_levels: int, num_samples: int, seed: int) -> torch.Tensor:
    pipeline = GuidedDiffusionPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    null_class = model.config.num_class_embeds - 1
    images = pipeline(
        class_labels=[null_class] * num_samples,
        num_inference_steps=num_levels,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images
    return images.reshape(num_samples, -1)


def distance(model, scheduler, num_levels, num_samples, seeds) -> float:
    values = []
    for seed in seeds:
        samples = sample(model, scheduler, num_levels, num_samples, seed)
        reference, _ = model.mixture.sample(num_samples, torch.Generator().manual_seed(1000 + seed))
        values.append(sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(seed)))
    return sum(values) / len(values)


def floor(model, num_samples, seeds) -> float:
    values = []
    for seed in seeds:
        first, _ = model.mixture.sample(num_samples, torch.Generator().manual_seed(seed))
        second, _ = model.mixture.sample(num_samples, torch.Generator().manual_seed(1000 + seed))
        values.append(sliced_wasserstein(first, second, generator=torch.Generator().manual_seed(seed)))
    return sum(values) / len(values)


def corrector_settings(sweep: bool):
    """(label, scheduler kwargs) for each predictor-corrector variant measured."""
    defaults = PredictorCorrectorScheduler()
    settings = [(f"PC defaults (K={defaults.config.corrector_steps}, {describe(defaults.config)})", {})]
    if sweep:
        for K, snr in itertools.product((1, 2), (0.05, 0.1, 0.16, 0.25, 0.3)):
            settings.append((f"K={K}, snr={snr}", dict(corrector_steps=K, snr=snr)))
        for K, step_size in itertools.product((1, 2), (0.1, 0.3, 0.5, 1.0)):
            settings.append((f"K={K}, step_size={step_size}", dict(corrector_steps=K, step_size=step_size)))
    return settings


def describe(config) -> str:
    if config.step_size is not None:
        return f"step_size={config.step_size}"
    return f"snr={config.snr}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="Also measure a grid of corrector settings.")
    parser.add_argument("--num_samples", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timestep_spacing", default="leading")
    parser.add_argument("--render_only", action="store_true", help="Rewrite the .md from the saved .json.")
    args = parser.parse_args()
    if args.render_only:
        with open(result_path("pc_vs_predictor.json")) as handle:
            results = json.load(handle)
        args.num_samples, args.seeds, args.sweep = results["num_samples"], results["seeds"], True
        for rows in results["mixtures"].values():
            for label, values in rows.items():
                if label != "floor":
                    rows[label] = {int(budget): value for budget, value in values.items()}
        with open(result_path("pc_vs_predictor.md"), "w") as handle:
            handle.write(render(results, args))
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    seeds = range(args.seeds)

    base = PosteriorScheduler(clip_sample=False, timestep_spacing=args.timestep_spacing)
    table = base._alphas_cumprod_f64.tolist()
    results = {"num_samples": args.num_samples, "seeds": args.seeds, "mixtures": {}}
    start = time.monotonic()
    for name, mixture in mixtures().items():
        model = GaussianMixtureScoreModel(**mixture, alphas_cumprod=table, prediction_type="epsilon")
        rows = {"floor": floor(model, args.num_samples, seeds)}
        rows["predictor only (PosteriorScheduler, eta=1)"] = {
            budget: distance(model, base, budget, args.num_samples, seeds) for budget in BUDGETS
        }
        for label, kwargs in corrector_settings(args.sweep):
            scheduler = PredictorCorrectorScheduler(clip_sample=False, timestep_spacing=args.timestep_spacing, **kwargs)
            K = scheduler.config.corrector_steps
            rows[label] = {
                budget: distance(model, scheduler, predictor_levels(budget, K), args.num_samples, seeds)
                for budget in BUDGETS
            }
            print(name, label, {b: round(v, 4) for b, v in rows[label].items()}, flush=True)
        results["mixtures"][name] = rows
    results["seconds"] = time.monotonic() - start

    write_results("pc_vs_predictor", results, render(results, args))


def render(results, args) -> str:
    lines = [
        "# Predictor-corrector against predictor-only sampling",
        "",
        f"Command: `python benchmarks/pc_vs_predictor.py{' --sweep' if args.sweep else ''}`; "
        f"{args.num_samples} samples, mean over {args.seeds} seeds, `timestep_spacing={args.timestep_spacing}`, "
        "exact mixture score, epsilon parameterization. Sliced 2-Wasserstein distance to fresh data "
        "(lower is better) at equal model evaluations.",
        "",
    ]
    for name, rows in results["mixtures"].items():
        lines += [f"## {name}", "", f"Floor (two independent data sets): {rows['floor']:.4f}", ""]
        lines += ["| sampler | " + " | ".join(f"{b} evaluations" for b in BUDGETS) + " |"]
        lines += ["| --- |" + " --- |" * len(BUDGETS)]
        for label, values in rows.items():
            if label == "floor":
                continue
            lines.append(f"| {label} | " + " | ".join(f"{values[b]:.4f}" for b in BUDGETS) + " |")
        lines.append("")
    lines += [
        "## Reading the tables",
        "",
        "The defaults are the setting that wins on the 16-D mixture at all three budgets. In 16 "
        "dimensions the norms ||xi|| and ||score|| of the snr rule concentrate, so the step size is "
        "nearly the same for every sample, and larger targets (0.2 to 0.25) beat Song et al.'s 0.16.",
        "",
        "In 2 dimensions both norms fluctuate from sample to sample: a sample near a mode centre has "
        "a small score and gets a large step. A step size that depends on the state breaks the "
        "Langevin chain's balance with p_t, so the snr rule is biased there at every budget, while "
        "a fixed step (`step_size`, in units of the level's noise variance) is not. No fixed step "
        "beats predictor-only sampling at all three budgets in 2-D either: with an exact score the "
        "ancestral predictor is already accurate, and halving its steps costs about what the "
        "correction gains.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
