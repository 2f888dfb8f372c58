import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

import diffusers_ext  # noqa: F401
from diffusers_ext import AnnealedLangevinScheduler, NoisyClassifier, PosteriorScheduler
from diffusers_ext.core.weighting import loss_weight
from diffusers_ext.training import main as training_main
from diffusers_ext.training.args import parse_args
from diffusers_ext.training.data import prepare_training_data
from diffusers_ext.training.losses import denoiser_loss, drop_labels, score_matching_loss
from diffusers_ext.training.tasks import DenoiserTask

TINY_MODEL = ["--block_out_channels", "8", "16", "--norm_num_groups", "4", "--resolution", "8"]


def tiny_args(output_dir, *extra):
    return [
        "--dataset_name", "mnist-5k", "--max_train_samples", "64", "--train_batch_size", "16",
        "--max_train_steps", "3", "--logging_steps", "1", "--output_dir", str(output_dir), *TINY_MODEL, *extra,
    ]  # fmt: skip


class RecordingUnet(torch.nn.Module):
    """Stands in for a UNet2DModel: records its inputs and predicts zeros."""

    def forward(self, sample, timestep, class_labels=None):
        self.sample, self.timestep = sample, timestep
        return SimpleNamespace(sample=torch.zeros_like(sample))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "elbo"])
def test_denoiser_loss_regresses_on_target(prediction_type, weighting):
    scheduler = PosteriorScheduler(prediction_type=prediction_type)
    unet = RecordingUnet()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(8, 1, 4, 4, generator=generator)
    timesteps = torch.tensor([0, 1, 10, 100, 400, 700, 998, 999])
    loss, per_sample = denoiser_loss(unet, scheduler, x0, None, noise, timesteps, prediction_type, weighting, 5.0)

    assert torch.equal(unet.timestep, timesteps)
    alphabar = scheduler._alphas_cumprod_f64[timesteps].reshape(-1, 1, 1, 1)
    gamma, sigma = alphabar.sqrt(), (1 - alphabar).sqrt()
    torch.testing.assert_close(unet.sample.double(), gamma * x0 + sigma * noise, rtol=1e-5, atol=1e-6)
    target = {"epsilon": noise.double(), "sample": x0.double(), "v_prediction": gamma * noise - sigma * x0}[prediction_type]
    expected_mse = target.pow(2).mean(dim=(1, 2, 3))
    weights = loss_weight(weighting, scheduler.alphas_cumprod.double(), timesteps, prediction_type, 5.0)
    np.testing.assert_allclose(per_sample.numpy(), expected_mse.numpy(), rtol=1e-4)
    assert loss.item() == pytest.approx((weights * expected_mse).mean().item(), rel=1e-4)


def test_score_matching_loss_is_weighted_dsm():
    """With a zero score the loss is lambda(sigma) ||z / sigma||^2 = ||z||^2 per pixel."""
    scheduler = AnnealedLangevinScheduler(sigma_data=0.5)
    unet = RecordingUnet()
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    noise = torch.randn(6, 1, 4, 4)
    sigmas = torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 20.0])
    loss, per_sample = score_matching_loss(unet, scheduler, x0, None, noise, sigmas)

    assert torch.equal(unet.timestep, sigmas)
    scale = (sigmas**2 + 0.25).rsqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(unet.sample, (x0 + sigmas.reshape(-1, 1, 1, 1) * noise) * scale)
    np.testing.assert_allclose(per_sample.numpy(), noise.pow(2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-4)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_drop_labels_where_marked():
    labels = torch.tensor([3, 1, 4, 1])
    dropped = drop_labels(labels, torch.tensor([True, False, False, True]), null_class=10)
    assert dropped.tolist() == [10, 1, 4, 10]


def test_mnist_data_padded_to_32():
    args = parse_args(["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1"])
    data = prepare_training_data(args)
    example = data.dataset[0]
    assert data.num_channels == 1
    assert data.num_classes == 10
    assert example["pixel_values"].shape == (1, 32, 32)
    assert example["pixel_values"].min() == -1
    assert example["pixel_values"].max() <= 1
    border = torch.cat([example["pixel_values"][0, :2].flatten(), example["pixel_values"][0, -2:].flatten()])
    assert torch.all(border == -1)  # the 2-pixel padding is black
    assert example["labels"] == 0


def test_mnist_data_resized_below_28():
    args = parse_args(["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--resolution", "16"])
    assert prepare_training_data(args).dataset[100]["pixel_values"].shape == (1, 16, 16)


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(root / name)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_labels_from_subfolders(tmp_path):
    write_image_folder(tmp_path / "images")
    args = parse_args(["--train_data_dir", str(tmp_path / "images"), "--output_dir", "x", "--max_train_steps", "1",
                       "--resolution", "8"])  # fmt: skip
    data = prepare_training_data(args)
    assert data.num_classes == 2
    assert data.num_channels == 3
    assert sorted(data.dataset[i]["labels"] for i in range(6)) == [0, 0, 0, 1, 1, 1]
    assert data.dataset[0]["pixel_values"].shape == (3, 8, 8)


def test_saved_dataset_with_custom_columns(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((10, 10), 40 * i, dtype=np.uint8)) for i in range(4)]
    datasets.Dataset.from_dict({"picture": images, "digit": [3, 1, 2, 1]}).save_to_disk(tmp_path / "saved")
    args = parse_args(["--dataset_name", str(tmp_path / "saved"), "--image_column", "picture", "--label_column",
                       "digit", "--output_dir", "x", "--max_train_steps", "1", "--resolution", "8"])  # fmt: skip
    data = prepare_training_data(args)
    assert data.num_classes == 4
    assert data.num_channels == 1
    assert data.dataset[0]["labels"] == 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset_name", "./no/such/folder"], "does not exist"),
        (["--dataset_name", "mnist-5k", "--image_column", "img"], "image column 'img' not found"),
        (["--dataset_name", "mnist-5k", "--label_column", "digit"], "label column 'digit' not found"),
    ],
)
def test_bad_data_arguments(argv, message):
    args = parse_args([*argv, "--output_dir", "x", "--max_train_steps", "1"])
    with pytest.raises(ValueError, match=message):
        prepare_training_data(args)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--output_dir", "x", "--max_train_steps", "1"], "pass --dataset_name"),
        (["--dataset_name", "mnist-5k", "--output_dir", "x"], "pass --max_train_steps or --max_train_minutes"),
        (["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_minutes", "1", "--lr_scheduler", "cosine"],
         "decays over --max_train_steps"),
        (["--train_data_dir", "/no/such/dir", "--output_dir", "x", "--max_train_steps", "1"], "is not a directory"),
        (["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--rescale_betas_zero_snr"],
         "needs --prediction_type v_prediction or sample"),
        (["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--report_to", "tensorbored"],
         "'tensorbored' is not an accelerate tracker"),
        (["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--report_to", "tensorboard,all"],
         "'all' already means every installed tracker"),
    ],
)  # fmt: skip
def test_bad_flag_combinations(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value,expected", [("none", None), ("None", None), (" tensorboard ,", "tensorboard")])
def test_report_to_normalized(value, expected):
    args = parse_args(["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--report_to", value])
    assert args.report_to == expected


def test_report_to_uninstalled_tracker_rejected(monkeypatch, capsys):
    """accelerate only warns about a tracker that is not installed; training must not start without its logs."""
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])
    with pytest.raises(SystemExit):
        parse_args(["--dataset_name", "mnist-5k", "--output_dir", "x", "--max_train_steps", "1", "--report_to",
                    "tensorboard"])  # fmt: skip
    assert "'tensorboard': the package is not installed" in capsys.readouterr().err


def test_training_writes_loadable_pipeline(tmp_path):
    output = training_main.main(tiny_args(tmp_path / "run", "--use_ema", "--prediction_type", "v_prediction"))
    pipeline = DiffusionPipeline.from_pretrained(output)
    assert type(pipeline).__name__ == "GuidedDiffusionPipeline"
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.unet.config.num_class_embeds == 11
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline([0, 9], num_inference_steps=2, guidance_scale=3.0, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert json.loads((tmp_path / "run" / "training_args.json").read_text())["use_ema"] is True


def test_score_task_writes_annealed_pipeline(tmp_path):
    output = training_main.main(tiny_args(tmp_path / "run", "--task", "score", "--sigma_max", "10"))
    pipeline = DiffusionPipeline.from_pretrained(output)
    assert type(pipeline.scheduler).__name__ == "AnnealedLangevinScheduler"
    assert pipeline.scheduler.config.sigma_max == 10.0
    assert pipeline.unet.config.time_embedding_type == "fourier"
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline([1, 2], num_inference_steps=3, guidance_scale=2.0, output_type="np").images
    assert images.shape == (2, 8, 8, 1)


def test_classifier_task_writes_classifier_and_report(tmp_path):
    output = training_main.main(tiny_args(tmp_path / "run", "--task", "classifier", "--classifier_eval_fraction", "0.25"))
    classifier = NoisyClassifier.from_pretrained(output)
    assert classifier.config.num_classes == 10
    assert classifier.config.sample_size == 8
    report = json.loads((tmp_path / "run" / "accuracy_by_noise_level.json").read_text())
    assert report["num_held_out"] == 16
    assert len(report["accuracy"]) == 10
    assert all(0 <= value <= 1 for value in report["accuracy"].values())
    assert PosteriorScheduler.from_pretrained(tmp_path / "run" / "scheduler").config.num_train_timesteps == 1000


def test_classifier_task_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="--task classifier needs class labels"):
        training_main.main(tiny_args(tmp_path / "run", "--task", "classifier", "--label_column", "none"))


def test_score_task_rejects_prediction_type(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--task", "score", "--prediction_type", "epsilon", "--dataset_name", "mnist-5k", "--output_dir", "x",
                    "--max_train_steps", "1"])  # fmt: skip
    assert "--prediction_type applies to --task denoiser" in capsys.readouterr().err


def test_non_finite_loss_stops_and_saves_nothing(tmp_path, monkeypatch):
    def nan_loss(self, unet, batch, draws):
        loss = sum(parameter.sum() for parameter in unet.parameters()) * float("nan")
        return loss, loss.detach().reshape(1), torch.zeros(1)

    monkeypatch.setattr(DenoiserTask, "loss", nan_loss)
    with pytest.raises(training_main.NonFiniteLossError, match="at step 1 is not finite"):
        training_main.main(tiny_args(tmp_path / "run"))
    assert not (tmp_path / "run" / "model_index.json").exists()


@pytest.mark.slow
def test_accelerate_launch_console_script(tmp_path):
    """The documented launch line, in a fresh process."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "diffusers_ext.train", *tiny_args(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model_index.json").exists()
    assert "denoiser saved to" in result.stderr


def test_console_script_exit_status(tmp_path):
    """A successful run exits with status 0: setuptools' wrapper exits with the entry point's return value."""
    script = os.path.join(os.path.dirname(sys.executable), "diffusers-ext-train")
    result = subprocess.run([script, *tiny_args(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model_index.json").exists()


def test_console_script_help():
    script = os.path.join(os.path.dirname(sys.executable), "diffusers-ext-train")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--cond_drop_prob" in result.stdout
