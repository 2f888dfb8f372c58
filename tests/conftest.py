import os
import socket

# Tests never reach the Hub; fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

# Each xdist worker runs single-threaded so that two workers on two cores do not oversubscribe.
torch.set_num_threads(1)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now.

    Multi-process tests pass it as accelerate's --main_process_port. Two such tests running at once
    under pytest-xdist would otherwise both rendezvous on the default port 29500 and join each
    other's process group.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_tiny_unet(num_class_embeds=4, channels=1, out_channels=None, sample_size=8, seed=0) -> UNet2DModel:
    """A randomly initialised UNet2DModel small enough for unit tests (about 20k parameters)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
        norm_num_groups=4,
    )


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Let each in-process training run build its own Accelerator (accelerate keeps one per process)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
