"""NoisyClassifier: a time-conditioned image classifier p(c | x_t, t) for classifier guidance."""

from typing import Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import get_down_block

from ..hub_mixin import HubCardMixin


class NoisyClassifier(HubCardMixin, ModelMixin, ConfigMixin):
    """Classifier of noisy images: the downsampling half of a UNet2DModel and a pooled linear head.

    Dhariwal & Nichol 2021 (section 4.1) classify x_t with the encoder of their diffusion UNet
    and condition it on t, so its gradient grad_x log p(c | x_t, t) can guide sampling at every
    noise level. This network uses diffusers' UNet building blocks: sinusoidal timestep
    embedding, `DownBlock2D` residual blocks that take the embedding, global average pooling.

    Args:
        sample_size: side of the square input in pixels.
        in_channels: image channels.
        num_classes: number of classes; `forward` returns one logit per class.
        block_out_channels: width of each resolution level; each level but the last halves the size.
        layers_per_block: residual blocks per level.
        norm_num_groups: group-norm groups; must divide every width.
        num_train_timesteps: length of the noise schedule the classifier is trained on, which
            bounds the timesteps it accepts.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        widths = list(block_out_channels)
        embedding_dim = 4 * widths[0]
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], embedding_dim)

        self.down_blocks = nn.ModuleList()
        for level, width in enumerate(widths):
            self.down_blocks.append(
                get_down_block(
                    "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=widths[max(level - 1, 0)],
                    out_channels=width,
                    temb_channels=embedding_dim,
                    add_downsample=level < len(widths) - 1,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    downsample_padding=1,
                    attention_head_dim=8,
                )
            )
        self.head = nn.Sequential(
            nn.GroupNorm(norm_num_groups, widths[-1]),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )

    def forward(self, sample: torch.Tensor, timestep: Union[int, float, torch.Tensor]) -> torch.Tensor:
        """Logits of p(c | x_t, t), shape (B, num_classes), for x_t of shape (B, C, H, W).

        `timestep` is the noise-schedule index t, a number or one value per sample (B,).
        """
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        embedding = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))

        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            hidden, _ = block(hidden, embedding)
        return self.head(hidden)
