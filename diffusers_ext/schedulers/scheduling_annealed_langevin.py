"""AnnealedLangevinScheduler: NCSN annealed Langevin dynamics for score models with VE noise."""

from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..core._tensors import append_dims
from ..core.langevin import annealed_step_size, langevin_step
from ..core.parameterization import check_prediction_type
from .scheduling_posterior import PosteriorSchedulerOutput


class AnnealedLangevinScheduler(SchedulerMixin, ConfigMixin):
    """Annealed Langevin dynamics over a geometric sequence of noise levels (Song & Ermon 2019, Algorithm 1).

    The model is a score network s(x, sigma) ~ grad log p_sigma(x) for variance-exploding noise
    x = x_0 + sigma z. `timesteps` contains the noise levels sigma_1 > ... > sigma_L themselves,
    each repeated `steps_per_level` times, so a pipeline evaluates the model once per entry with
    the level's sigma as its timestep. Each entry takes the step

        x <- x + (a_i / 2) s(x, sigma_i) + sqrt(a_i) z,   a_i = epsilon sigma_i^2 / sigma_L^2

    and, with `denoise_final`, the last entry instead returns the Tweedie estimate
    x + sigma_L^2 s(x, sigma_L) (Song & Ermon 2020, section 3.3, "denoising").

    Args:
        sigma_min: sigma_L, the smallest noise level.
        sigma_max: sigma_1, the largest noise level; initial samples are N(0, sigma_max^2 I).
        steps_per_level: Langevin steps K at each level; also `order`.
        epsilon: step-size constant of a_i. NCSN's 2e-5 goes with K = 100 steps per level; with
            the default K = 5 and 25 levels a digits score model gave noise at 2e-5 and its best
            samples at 1e-4 (benchmarks/score_model_digits.py).
        prediction_type: "score", the only parameterization for VE score models here.
        sigma_data: if set, `scale_model_input` divides x by sqrt(sigma^2 + sigma_data^2) so the
            network receives inputs of unit scale (Karras et al. 2022, c_in); the model must be
            trained with the same scaling. None passes x unchanged, as NCSN did.
        denoise_final: replace the last Langevin step by the denoising step.
    """

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 20.0,
        steps_per_level: int = 5,
        epsilon: float = 1e-4,
        prediction_type: str = "score",
        sigma_data: Optional[float] = 0.5,
        denoise_final: bool = True,
    ):
        check_prediction_type(prediction_type, ("score",))
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        if steps_per_level < 1:
            raise ValueError(f"steps_per_level={steps_per_level} must be at least 1.")
        if epsilon <= 0:
            raise ValueError(f"epsilon={epsilon} must be positive.")
        self.init_noise_sigma = sigma_max
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._step_index = None
        self._begin_index = None

    @property
    def order(self) -> int:
        """Entries of `timesteps` per noise level: `steps_per_level` Langevin steps."""
        return self.config.steps_per_level

    def geometric_sigmas(self, num_levels: int) -> torch.Tensor:
        """sigma_1 = sigma_max > ... > sigma_L = sigma_min, equally spaced in log, float64 (L,)."""
        return torch.exp(
            torch.linspace(np.log(self.config.sigma_max), np.log(self.config.sigma_min), num_levels, dtype=torch.float64)
        )

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        sigmas: Optional[List[float]] = None,
    ) -> None:
        """Use `num_inference_steps` geometric noise levels, or the descending `sigmas` given."""
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("pass exactly one of num_inference_steps or sigmas to set_timesteps.")
        if sigmas is not None:
            levels = torch.as_tensor(sigmas, dtype=torch.float64)
            if levels.ndim != 1 or levels.numel() == 0 or bool((levels <= 0).any()) or bool((levels.diff() >= 0).any()):
                raise ValueError(f"sigmas must be positive and strictly descending, got {list(sigmas)}.")
        else:
            if num_inference_steps < 1:
                raise ValueError(f"num_inference_steps={num_inference_steps} must be at least 1.")
            levels = self.geometric_sigmas(num_inference_steps)

        self.num_inference_steps = len(levels)
        self.sigmas = levels
        self.timesteps = levels.repeat_interleave(self.config.steps_per_level).float().to(device)
        self._step_index = None
        self._begin_index = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at entry `begin_index` of `timesteps` (diffusers' img2img pipelines call this)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Union[float, torch.Tensor, None] = None) -> torch.Tensor:
        """x / sqrt(sigma^2 + sigma_data^2) when `sigma_data` is set; `timestep` is sigma, a float or (B,)."""
        if self.config.sigma_data is None:
            return sample
        if timestep is None:
            raise ValueError("scale_model_input needs the noise level sigma as timestep when sigma_data is set.")
        sigma = torch.as_tensor(timestep, dtype=torch.float64, device=sample.device)
        if sigma.ndim == 1:
            sigma = append_dims(sigma, sample.ndim)
        scale = (sigma**2 + self.config.sigma_data**2).rsqrt()
        return sample * scale.to(sample.dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x_0 + sigma noise, where `timesteps` are the noise levels sigma, shape (B,)."""
        sigma = append_dims(torch.as_tensor(timesteps, device=original_samples.device), original_samples.ndim)
        return original_samples + sigma.to(original_samples.dtype) * noise

    def _level(self, timestep: Union[float, torch.Tensor]) -> Tuple[int, float]:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                (positions,) = np.nonzero(np.isclose(self.timesteps.cpu().numpy(), float(timestep), rtol=1e-6))
                if positions.size == 0:
                    raise ValueError(f"timestep {float(timestep)} is not a noise level of scheduler.timesteps.")
                self._step_index = int(positions[0])
        index = self._step_index
        if index >= len(self.timesteps):
            raise ValueError("step was called after the last entry of scheduler.timesteps; call set_timesteps again.")
        if not np.isclose(float(self.timesteps[index]), float(timestep), rtol=1e-6):
            raise ValueError(
                f"step was called with timestep {float(timestep)} but the next entry of scheduler.timesteps is "
                f"{float(self.timesteps[index])}; step through scheduler.timesteps in order, once per entry."
            )
        level = index // self.config.steps_per_level
        return index, float(self.sigmas[level])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ) -> Union[PosteriorSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """Take one annealed Langevin step with the score `model_output` at the current noise level.

        Returns `PosteriorSchedulerOutput(prev_sample, pred_original_sample)`, the second being the
        Tweedie estimate x + sigma^2 s of the clean sample.
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps before step.")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}.")
        index, sigma = self._level(timestep)
        denoised = sample + sigma**2 * model_output

        last = index == len(self.timesteps) - 1
        if last and self.config.denoise_final:
            prev_sample = denoised
        else:
            a = annealed_step_size(sigma, self.config.sigma_min, self.config.epsilon)
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = langevin_step(sample, model_output, a / 2, noise)
        self._step_index += 1

        if not return_dict:
            return prev_sample, denoised
        return PosteriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
