"""Construction of the networks the training entry point trains."""

from diffusers import UNet2DModel


def build_unet(args, num_channels: int, num_classes, time_embedding_type: str = "positional") -> UNet2DModel:
    """Build a UNet2DModel for `num_channels` images, with num_classes + 1 class embeddings when conditional.

    The extra last embedding is the null class used for classifier-free guidance. Sizes come
    from --model_config when given, else from --block_out_channels, --layers_per_block,
    --attention_levels and --norm_num_groups. `time_embedding_type="fourier"` makes a network
    conditioned on a noise level sigma (Gaussian Fourier features of log sigma), whose output
    UNet2DModel divides by sigma, as score models need.
    """
    num_class_embeds = None if num_classes is None else num_classes + 1
    if args.model_config is not None:
        config = UNet2DModel.load_config(args.model_config)
        config.update(
            sample_size=args.resolution,
            in_channels=num_channels,
            out_channels=num_channels,
            num_class_embeds=num_class_embeds,
            time_embedding_type=time_embedding_type,
        )
        return UNet2DModel.from_config(config)

    channels = list(args.block_out_channels)
    downsampling = 2 ** (len(channels) - 1)
    if args.resolution % downsampling:
        raise ValueError(
            f"--resolution {args.resolution} is not divisible by {downsampling}, the total downsampling of "
            f"{len(channels)} levels (--block_out_channels {channels}); change either."
        )
    bad_widths = [width for width in channels if width % args.norm_num_groups]
    if bad_widths:
        raise ValueError(f"--norm_num_groups {args.norm_num_groups} must divide every block width; {bad_widths} do not.")
    bad_levels = [level for level in args.attention_levels if not 0 <= level < len(channels)]
    if bad_levels:
        raise ValueError(f"--attention_levels {bad_levels} are outside 0..{len(channels) - 1}.")

    down = ["AttnDownBlock2D" if level in args.attention_levels else "DownBlock2D" for level in range(len(channels))]
    up = ["AttnUpBlock2D" if block == "AttnDownBlock2D" else "UpBlock2D" for block in reversed(down)]
    return UNet2DModel(
        sample_size=args.resolution,
        in_channels=num_channels,
        out_channels=num_channels,
        block_out_channels=channels,
        layers_per_block=args.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        num_class_embeds=num_class_embeds,
        norm_num_groups=args.norm_num_groups,
        attention_head_dim=8,
        time_embedding_type=time_embedding_type,
    )
