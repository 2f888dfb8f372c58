"""GuidedDiffusionPipeline: pixel-space sampling with classifier-free and classifier guidance."""

import inspect
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import UNet2DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ..core.guidance import classifier_free_guidance, rescale_guidance
from ..hub_mixin import HubCardMixin
from .classifier_guidance import check_classifier, guidance_gradient, scheduler_applies_gradient, shift_noise_prediction

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class GuidedDiffusionPipeline(HubCardMixin, DiffusionPipeline):
    """Sampling from a `UNet2DModel` with classifier-free guidance and classifier guidance.

    Classifier-free guidance (Ho & Salimans 2022): the unet's class embedding has
    `num_class_embeds` rows and the last one is the null class, the label the model was trained
    on when the condition was dropped. With guidance scale S, each step combines the conditional
    and null-class predictions as uncond + S (cond - uncond), from one batched forward pass.

    Classifier guidance (Dhariwal & Nichol 2021): with `classifier_scale` s, each step adds
    s * grad log p(c | x_t, t) of the noise-aware `classifier`, by autograd with the weights
    untouched. The schedulers of this package apply it as their step type requires; for other
    schedulers the pipeline shifts the noise prediction. It works with an unconditional unet
    (guidance from the classifier alone) and together with classifier-free guidance.

    Args:
        unet: a `UNet2DModel` predicting what `scheduler.config.prediction_type` names, either
            class-conditional (`num_class_embeds` set, last index null) or unconditional.
        scheduler: any diffusers scheduler; `PosteriorScheduler` by default in saved pipelines.
        classifier: optional noise-aware classifier p(c | x_t, t), such as `NoisyClassifier`,
            called as classifier(x_t, t) and returning logits (B, classes).
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier"]
    # "latents" is diffusers' name for the sample being denoised; here it is in pixel space.
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, classifier=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    @property
    def null_class(self) -> Optional[int]:
        """Index of the null class (the last class embedding), or None for an unconditional unet."""
        num_class_embeds = self.unet.config.num_class_embeds
        return None if num_class_embeds is None else num_class_embeds - 1

    def _prepare_labels(self, class_labels, batch_size: Optional[int], device, classifier_scale: float):
        """Return (labels passed to the unet, labels the classifier guides towards); either may be None."""
        if self.null_class is None:
            if class_labels is not None:
                if classifier_scale == 0:
                    raise ValueError(
                        "class_labels were given but the unet is unconditional (unet.config.num_class_embeds is None) "
                        "and classifier_scale is 0; pass batch_size instead, or guide with a classifier."
                    )
                targets = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
                if bool((targets < 0).any()):
                    raise ValueError(f"class_labels must be non-negative, got {targets.tolist()}.")
                return None, targets
            if batch_size is None or batch_size < 1:
                raise ValueError(f"an unconditional unet needs a positive batch_size, got {batch_size!r}.")
            return None, None

        if class_labels is None:
            raise ValueError("class_labels is required for a class-conditional unet, e.g. class_labels=[0, 1, 2].")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        num_class_embeds = self.unet.config.num_class_embeds
        if bool(((labels < 0) | (labels >= num_class_embeds)).any()):
            raise ValueError(
                f"class_labels must lie in [0, {num_class_embeds - 1}] for this unet "
                f"({num_class_embeds - 1} classes plus the null class {self.null_class}), got {labels.tolist()}."
            )
        labels = labels.to(device)
        return labels, labels

    def check_inputs(self, guidance_scale, output_type, callback_on_step_end_tensor_inputs) -> None:
        if guidance_scale != 1 and self.null_class is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional unet with a null class, but "
                "unet.config.num_class_embeds is None; use guidance_scale=1 with this unet."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}.")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from {self._callback_tensor_inputs}."
            )

    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        labels: Optional[torch.Tensor],
        guidance_scale: float,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """Compute the model output at one step, with classifier-free guidance applied.

        Scale 1 runs only the conditional pass and scale 0 only the null-class pass; any other
        scale batches both into one forward pass. For learned-variance models (output with twice
        the input channels) only the prediction half is guided and the conditional variance kept.
        """
        model_input = self.scheduler.scale_model_input(latents, timestep)
        if labels is None:
            return self.unet(model_input, timestep).sample
        if guidance_scale == 1:
            return self.unet(model_input, timestep, class_labels=labels).sample
        null_labels = torch.full_like(labels, self.null_class)
        if guidance_scale == 0:
            return self.unet(model_input, timestep, class_labels=null_labels).sample

        output = self.unet(
            torch.cat([model_input, model_input]), timestep, class_labels=torch.cat([labels, null_labels])
        ).sample
        cond, uncond = output.chunk(2)

        channels = latents.shape[1]
        cond_prediction, cond_rest = cond[:, :channels], cond[:, channels:]
        guided = classifier_free_guidance(cond_prediction, uncond[:, :channels], guidance_scale)
        guided = rescale_guidance(guided, cond_prediction, guidance_rescale)
        return torch.cat([guided, cond_rest], dim=1)

    def _step_kwargs(self, generator) -> dict:
        accepts_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if accepts_generator else {}

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor, None] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        classifier_scale: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        batch_size: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
        guidance_rescale: float = 0.0,
        latents: Optional[torch.Tensor] = None,
    ) -> Union[ImagePipelineOutput, tuple]:
        """Generate images of the requested classes.

        Args:
            class_labels: one class index per image (0 to num_class_embeds - 2; the last index is
                the null class, which samples unconditionally). Required for a conditional unet.
            num_inference_steps: number of sampling steps; ignored when `timesteps` is given.
            guidance_scale: classifier-free guidance scale S; 1 is the plain conditional model.
            classifier_scale: scale s of classifier guidance; needs a `classifier` component.
                With an unconditional unet, `class_labels` name the classes to guide towards.
            generator: torch generator(s) that make the result reproducible; a list gives one per image.
            output_type: "pil" (list of PIL images), "np" (array (B, H, W, C) in [0, 1]),
                "pt" (tensor (B, C, H, W) in [0, 1]) or "latent" (the final sample as it is,
                (B, C, H, W), without rescaling or clipping).
            return_dict: return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end: called as callback(pipeline, step_index, timestep, callback_kwargs)
                after each step; it may return {"latents": tensor} to replace the current sample.
            callback_on_step_end_tensor_inputs: tensors passed in callback_kwargs ("latents").
            batch_size: number of images for an unconditional unet (no class labels).
            timesteps: custom descending grid of training timesteps, passed to `set_timesteps`.
            guidance_rescale: rescale of the guided prediction, Lin et al. 2024, section 3.4.
            latents: initial noise of shape (B, C, H, W) instead of drawing it from `generator`.

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple holding the images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(guidance_scale, output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels, targets = self._prepare_labels(class_labels, batch_size, device, classifier_scale)
        if classifier_scale != 0:
            check_classifier(self.classifier, self.unet, self.scheduler, targets)
        batch = targets.shape[0] if targets is not None else batch_size
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch} images; pass one per image.")

        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {shape}.")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

        step_kwargs = self._step_kwargs(generator)
        gradient_in_step = classifier_scale != 0 and scheduler_applies_gradient(self.scheduler)
        timesteps = self.scheduler.timesteps
        # Schedulers with order k evaluate the model k times per step; the bar counts steps, as
        # diffusers' own pipelines do.
        order = getattr(self.scheduler, "order", 1)
        num_steps = getattr(self.scheduler, "num_inference_steps", None) or len(timesteps)
        with self.progress_bar(total=num_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                model_output = self.predict(latents, t, labels, guidance_scale, guidance_rescale)
                extra = {}
                if classifier_scale != 0:
                    gradient = guidance_gradient(self.classifier, self.scheduler, latents, t, targets, classifier_scale)
                    if gradient_in_step:
                        extra["classifier_gradient"] = gradient
                    else:
                        model_output = shift_noise_prediction(self.scheduler, model_output, latents, t, gradient)
                latents = self.scheduler.step(model_output, t, latents, **step_kwargs, **extra).prev_sample

                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)

                if i == len(timesteps) - 1 or (i + 1) % order == 0:
                    progress_bar.update()

        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(latents, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
