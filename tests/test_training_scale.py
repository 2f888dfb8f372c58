"""Training at scale: reproducible randomness, checkpoints and resume, accumulation, precision,
multi-process data parallelism, fine-tuning and logging."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import free_port
from diffusers import DiffusionPipeline, UNet2DModel
from PIL import Image
from safetensors.torch import load_file

import diffusers_ext  # noqa: F401
from diffusers_ext import NoisyClassifier
from diffusers_ext.training import main as training_main
from diffusers_ext.training.checkpoints import (
    complete_checkpoints,
    remove_partial_checkpoints,
    resolve_checkpoint,
)
from diffusers_ext.training.data import EpochShuffleSampler
from diffusers_ext.training.finetune import adapt_class_embedding
from diffusers_ext.training.precision import check_mixed_precision
from diffusers_ext.training.randomness import ExampleRandomness

TINY = ["--block_out_channels", "8", "16", "--norm_num_groups", "4", "--resolution", "8", "--logging_steps", "1"]


def digits_args(output_dir, *extra, samples=64, batch=16, steps=4):
    return [
        "--dataset_name", "mnist-5k", "--max_train_samples", str(samples), "--train_batch_size", str(batch),
        "--max_train_steps", str(steps), "--output_dir", str(output_dir), *TINY, *extra,
    ]  # fmt: skip


def unet_weights(folder):
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def log_records(folder):
    with open(os.path.join(folder, "train_log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def single_thread_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_example_draws_ignore_batch_layout():
    randomness = ExampleRandomness(seed=3)
    together = randomness.draw([5, 9, 2, 7], epoch=1, sample_shape=(1, 4, 4))
    apart = [randomness.draw([index], epoch=1, sample_shape=(1, 4, 4)) for index in (5, 9, 2, 7)]
    torch.testing.assert_close(together.noise, torch.cat([draw.noise for draw in apart]))
    torch.testing.assert_close(together.uniforms, torch.cat([draw.uniforms for draw in apart]))
    other_epoch = randomness.draw([5], epoch=2, sample_shape=(1, 4, 4))
    assert not torch.equal(other_epoch.noise, apart[0].noise)


def test_example_draw_distributions():
    draws = ExampleRandomness(seed=0).draw(list(range(4000)), epoch=0, sample_shape=(2,))
    timesteps = draws.timesteps(1000)
    assert int(timesteps.min()) >= 0
    assert int(timesteps.max()) <= 999
    assert draws.dropped(0.1).float().mean().item() == pytest.approx(0.1, abs=0.015)
    assert draws.noise.std().item() == pytest.approx(1.0, abs=0.03)
    sigmas = draws.log_uniform(0.01, 10.0)
    assert float(sigmas.min()) >= 0.01
    assert float(sigmas.log().mean()) == pytest.approx((np.log(0.01) + np.log(10.0)) / 2, abs=0.1)


def test_epoch_sampler_depends_on_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=1)
    sampler.set_epoch(3)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    again = EpochShuffleSampler(50, seed=1)
    again.set_epoch(3)
    assert list(again) == first
    again.set_epoch(4)
    assert list(again) != first


def make_checkpoint(folder, step):
    os.makedirs(folder / f"checkpoint-{step}")
    (folder / f"checkpoint-{step}" / "training_state.json").write_text(json.dumps({"global_step": step}))


def test_latest_skips_partial_and_incomplete(tmp_path):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 20)
    os.makedirs(tmp_path / ".checkpoint-30.partial")
    os.makedirs(tmp_path / "checkpoint-40")  # no training_state.json: not complete
    assert [os.path.basename(p) for p in complete_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-20"]
    assert resolve_checkpoint(str(tmp_path), "latest").endswith("checkpoint-20")
    remove_partial_checkpoints(str(tmp_path))
    assert not (tmp_path / ".checkpoint-30.partial").exists()


def test_resolve_rejects_incomplete_folder(tmp_path):
    os.makedirs(tmp_path / "checkpoint-40")
    with pytest.raises(ValueError, match="is not a complete checkpoint folder"):
        resolve_checkpoint(str(tmp_path), "checkpoint-40")
    assert resolve_checkpoint(str(tmp_path), "latest") is None


def test_checkpoints_pruned_to_limit(tmp_path):
    run = tmp_path / "run"
    training_main.main(digits_args(run, "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"))
    assert [os.path.basename(p) for p in complete_checkpoints(run)] == ["checkpoint-3", "checkpoint-4"]
    saved = os.listdir(run / "checkpoint-4")
    assert "optimizer.bin" in saved
    assert "training_state.json" in saved


def test_resume_in_process_matches_uninterrupted(tmp_path):
    common = ("--use_ema", "--checkpointing_steps", "3")
    straight = training_main.main(digits_args(tmp_path / "straight", *common, steps=7))
    training_main.main(digits_args(tmp_path / "resumed", *common, steps=3))
    resumed = training_main.main(digits_args(tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest", steps=7))
    expected, result = unet_weights(straight), unet_weights(resumed)
    for name in expected:
        assert torch.equal(result[name], expected[name]), name
    assert [r["loss"] for r in log_records(straight)] == [r["loss"] for r in log_records(resumed)]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL and resumed from its last checkpoint ends with the uninterrupted weights."""
    common = digits_args("{out}", "--use_ema", "--checkpointing_steps", "4", "--checkpoints_total_limit", "2",
                         samples=128, batch=16, steps=14)  # fmt: skip

    def command(output, *extra):
        return [sys.executable, "-m", "diffusers_ext.train", *[a.replace("{out}", str(output)) for a in common], *extra]

    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True, env=single_thread_env(), timeout=600)

    victim = subprocess.Popen(command(tmp_path / "killed"), env=single_thread_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "checkpoint-8").exists():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-8 within 5 minutes"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "model_index.json").exists()

    subprocess.run(command(tmp_path / "killed", "--resume_from_checkpoint", "latest"), check=True,
                   capture_output=True, env=single_thread_env(), timeout=600)  # fmt: skip
    expected, result = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "killed")
    for name in expected:
        assert torch.equal(result[name], expected[name]), name


def test_gradient_accumulation_matches_large_batch(tmp_path):
    large = training_main.main(digits_args(tmp_path / "large", batch=16, steps=3))
    accumulated = training_main.main(digits_args(tmp_path / "accumulated", "--gradient_accumulation_steps", "2",
                                                 batch=8, steps=3))  # fmt: skip
    expected, result = unet_weights(large), unet_weights(accumulated)
    for name in expected:
        torch.testing.assert_close(result[name], expected[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        [r["loss"] for r in log_records(accumulated)], [r["loss"] for r in log_records(large)], rtol=1e-5
    )


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    """Two data-parallel processes (gloo on CPU) keep identical replicas and the single-process loss."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
              "--main_process_port", str(free_port()), "-m", "diffusers_ext.train"]  # fmt: skip
    result = subprocess.run([*launch, *digits_args(tmp_path / "two", batch=8, steps=4)], capture_output=True,
                            text=True, env=single_thread_env(), timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical on all 2 processes" in result.stderr
    assert "2 process(es)" in result.stderr

    single = training_main.main(digits_args(tmp_path / "one", batch=16, steps=4))
    np.testing.assert_allclose(
        [r["loss"] for r in log_records(tmp_path / "two")], [r["loss"] for r in log_records(single)], rtol=1e-5
    )
    expected, result_weights = unet_weights(single), unet_weights(tmp_path / "two")
    for name in expected:
        torch.testing.assert_close(result_weights[name], expected[name], rtol=1e-4, atol=1e-5)


def test_fp16_on_cpu_rejected():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a GPU"):
        check_mixed_precision("fp16")


def test_bf16_trains_on_cpu(tmp_path):
    output = training_main.main(digits_args(tmp_path / "bf16", "--mixed_precision", "bf16", steps=2))
    assert all(np.isfinite(r["loss"]) for r in log_records(output))


def test_finetune_switches_prediction_type(tmp_path):
    base = training_main.main(digits_args(tmp_path / "base", steps=2))
    tuned = training_main.main(
        digits_args(tmp_path / "tuned", "--pretrained_model_name_or_path", str(base), "--prediction_type",
                    "v_prediction", "--learning_rate", "0", "--lr_warmup_steps", "0", steps=1)  # fmt: skip
    )
    pipeline = DiffusionPipeline.from_pretrained(tuned)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    expected, result = unet_weights(base), unet_weights(tuned)
    for name in expected:  # learning rate 0: the weights are the pretrained ones
        assert torch.equal(result[name], expected[name]), name


def test_class_embedding_rule():
    torch.manual_seed(0)
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                  down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    unet = UNet2DModel(**config, num_class_embeds=4)  # 3 classes + null
    old = unet.class_embedding.weight.detach().clone()

    grown = adapt_class_embedding(unet, 5).class_embedding.weight
    assert grown.shape == (6, 4 * 8)
    torch.testing.assert_close(grown[:3], old[:3])
    torch.testing.assert_close(grown[3:], old[3:].expand(3, -1))  # new classes and null start from the old null

    shrunk = adapt_class_embedding(unet, 2).class_embedding.weight
    torch.testing.assert_close(shrunk, torch.cat([old[:2], old[3:]]))

    fresh = adapt_class_embedding(UNet2DModel(**config), 3).class_embedding.weight
    assert fresh.shape == (4, 4 * 8)
    assert torch.count_nonzero(fresh) == 0


def write_image_folder(root, classes):
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(root / name)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_finetune_on_new_classes(tmp_path):
    base = training_main.main(digits_args(tmp_path / "base", steps=1))
    write_image_folder(tmp_path / "images", ["a", "b"])
    tuned = training_main.main(
        ["--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path", str(base),
         "--output_dir", str(tmp_path / "tuned"), "--max_train_steps", "1", "--train_batch_size", "4", *TINY]
    )  # fmt: skip
    assert DiffusionPipeline.from_pretrained(tuned).unet.config.num_class_embeds == 3


def test_finetune_classifier_new_classes(tmp_path):
    base = training_main.main(digits_args(tmp_path / "base", "--task", "classifier", steps=1))
    write_image_folder(tmp_path / "images", ["a", "b", "c"])
    tuned = training_main.main(
        ["--task", "classifier", "--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path",
         str(base), "--output_dir", str(tmp_path / "tuned"), "--max_train_steps", "1", "--train_batch_size", "4",
         "--classifier_eval_fraction", "0.25", *TINY]
    )  # fmt: skip
    assert NoisyClassifier.from_pretrained(tuned).config.num_classes == 3


def test_finetune_resolution_mismatch(tmp_path):
    base = training_main.main(digits_args(tmp_path / "base", steps=1))
    arguments = digits_args(tmp_path / "tuned", "--pretrained_model_name_or_path", str(base), "--resolution", "12", steps=1)
    with pytest.raises(ValueError, match="trained at --resolution 8, not 12"):
        training_main.main(arguments)


def test_training_log_and_tensorboard(tmp_path):
    output = training_main.main(digits_args(tmp_path / "run", "--report_to", "tensorboard", "--validation_epochs", "1",
                                            "--num_validation_images", "4", "--validation_inference_steps", "2",
                                            samples=32, steps=5))  # fmt: skip
    records = log_records(output)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(len(r["loss_by_noise_level"]) == 10 for r in records)
    assert all(r["lr"] > 0 for r in records)
    events = [f for _, _, files in os.walk(os.path.join(output, "logs")) for f in files if "tfevents" in f]
    assert events
    assert len(os.listdir(os.path.join(output, "validation"))) == 2  # epochs of 32 / 16 batches end at steps 2 and 4


def test_random_crop_differs_from_center_crop(tmp_path):
    from types import SimpleNamespace

    from diffusers_ext.training.data import prepare_training_data

    root = tmp_path / "images"
    os.makedirs(root / "only")
    Image.fromarray(np.arange(16 * 12, dtype=np.uint8).reshape(12, 16)).save(root / "only" / "0.png")
    common = dict(dataset_name=None, train_data_dir=str(root), max_train_samples=None, image_column="image",
                  label_column="none", resolution=8, random_flip=False)  # fmt: skip
    center = prepare_training_data(SimpleNamespace(**common, center_crop=True)).dataset
    random = prepare_training_data(SimpleNamespace(**common, center_crop=False)).dataset
    assert torch.equal(center[0]["pixel_values"], center[0]["pixel_values"])
    torch.manual_seed(0)
    crops = {tuple(random[0]["pixel_values"].flatten().tolist()) for _ in range(20)}
    assert len(crops) > 1


def test_dataloader_workers(tmp_path):
    output = training_main.main(digits_args(tmp_path / "run", "--dataloader_num_workers", "1", steps=2))
    assert len(log_records(output)) == 2
