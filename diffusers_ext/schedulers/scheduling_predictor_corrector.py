"""PredictorCorrectorScheduler: PosteriorScheduler predictor steps with Langevin corrector steps.

Song et al. 2021, Algorithms 2 and 5: at every noise level after the first, `corrector_steps`
Langevin steps move x_t towards p_t using the model's score, then the predictor steps to the next
level. Each model evaluation is one entry of `timesteps`, so pipelines that call `step` once per
entry run predictor-corrector sampling without changes.
"""

from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from ..core.langevin import TEMPERATURE_SCHEDULES, langevin_step, snr_step_size, temperature_at
from ..core.parameterization import convert
from ..core._tensors import append_dims
from .scheduling_posterior import PosteriorScheduler, PosteriorSchedulerOutput


class PredictorCorrectorScheduler(PosteriorScheduler):
    """Predictor-corrector sampling for variance-preserving models of any prediction type.

    Layout of `timesteps` for predictor levels t_0 > t_1 > ... > t_{n-1} and K corrector steps:

        t_0, [t_1] * K, t_1, [t_2] * K, t_2, ..., [t_{n-1}] * K, t_{n-1}

    The first level is not corrected, because x_T is drawn from the prior that level's marginal
    already is. Each later group is K Langevin steps at that level followed by the predictor step
    to the next level, the last of which lands on x0_hat. That is n + K (n - 1) model evaluations
    for `num_inference_steps = n`, and `order = K + 1` entries per step, so diffusers pipelines
    count progress and slice img2img grids (`timesteps[t_start * order:]`) as they do for
    HeunDiscreteScheduler.

    Corrector step at level t, with score s = grad log p_t(x_t) converted from the model output:

        x <- x + delta s + sqrt(2 delta T) xi,   xi ~ N(0, I)
        delta = 2 a (snr ||xi|| / ||s||)^2,      a = alphabar_t / alphabar_s

    per sample (Song et al. 2021, Algorithm 5), where s is the next level on the grid; or
    delta = step_size (1 - alphabar_t) when `step_size` is set. T is the temperature.

    The defaults (K = 1, snr = 0.2) come from benchmarks/pc_vs_predictor.py: on a 16-D Gaussian
    mixture with the exact score they beat predictor-only sampling at 25, 50 and 100 model
    evaluations. NOTE: the snr rule makes delta depend on the sample through ||s||, which biases
    the chain where ||s|| varies a lot between samples, as in 2-D data (same benchmark). For
    low-dimensional data use a fixed `step_size`.

    Args (besides those of `PosteriorScheduler`, whose predictor step this uses):
        corrector_steps: Langevin steps K per noise level; 0 gives plain `PosteriorScheduler` sampling.
        snr: target signal-to-noise ratio r of the Langevin step.
        step_size: if set, a fixed step in units of the level's noise variance, replacing `snr`.
        temperature: temperature of the first corrector step; 1 samples p_t.
        final_temperature: temperature of the last corrector step; None keeps `temperature`
            throughout. Lower values anneal towards gradient ascent on log p_t.
        temperature_schedule: "linear" or "geometric" interpolation between the two.
    """

    _compatibles = ["DDPMScheduler", "DDIMScheduler", "PosteriorScheduler"]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        eta: float = 1.0,
        corrector_steps: int = 1,
        snr: float = 0.2,
        step_size: Optional[float] = None,
        temperature: float = 1.0,
        final_temperature: Optional[float] = None,
        temperature_schedule: str = "linear",
    ):
        if corrector_steps < 0:
            raise ValueError(f"corrector_steps={corrector_steps} is negative; use 0 or more.")
        if snr <= 0:
            raise ValueError(f"snr={snr} must be positive.")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"step_size={step_size} must be positive, or None to use snr.")
        if temperature < 0 or (final_temperature is not None and final_temperature < 0):
            raise ValueError(f"temperatures must be >= 0, got {temperature} and {final_temperature}.")
        if temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"temperature_schedule={temperature_schedule!r} is not supported; use one of {TEMPERATURE_SCHEDULES}."
            )
        self._step_index = None
        self._begin_index = None
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            eta=eta,
        )

    @property
    def order(self) -> int:
        """Entries of `timesteps` per predictor step: K corrector evaluations and one predictor evaluation."""
        return self.config.corrector_steps + 1

    def _entries_for_levels(self, levels: np.ndarray) -> np.ndarray:
        K = self.config.corrector_steps
        return np.concatenate([levels[:1], np.repeat(levels[1:], K + 1)])

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Set `num_inference_steps` predictor levels (or custom `timesteps` levels) and their corrector entries."""
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps)
        self._step_index = None
        self._begin_index = None

    @property
    def step_index(self) -> Optional[int]:
        """Index of the next entry of `timesteps` that `step` expects, or None before the first step."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at entry `begin_index` of `timesteps` (diffusers' img2img pipelines call this)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Union[int, torch.Tensor]) -> int:
        """Entry at which stepping starts from `timestep`: the level's predictor entry, its last occurrence.

        A sample handed in at a level is freshly noised to that level's marginal, so it needs no correction.
        """
        (positions,) = np.nonzero(self.timesteps.cpu().numpy() == int(timestep))
        if positions.size == 0:
            raise ValueError(f"timestep {int(timestep)} is not in scheduler.timesteps; call set_timesteps first.")
        return int(positions[-1])

    def is_corrector_entry(self, index: int) -> bool:
        """Return whether entry `index` of `timesteps` is a corrector step (else it is a predictor step)."""
        K = self.config.corrector_steps
        return index > 0 and (index - 1) % (K + 1) < K

    def _corrector_number(self, index: int) -> int:
        """Count the corrector entries before entry `index`."""
        K = self.config.corrector_steps
        if index == 0:
            return 0
        completed_groups, position = divmod(index - 1, K + 1)
        return completed_groups * K + min(position, K)

    def corrector_temperature(self, index: int) -> float:
        """Temperature of the corrector step at entry `index`, on the configured schedule."""
        total = self.config.corrector_steps * (len(self._levels) - 1)
        return temperature_at(
            self._corrector_number(index),
            total,
            self.config.temperature,
            self.config.final_temperature,
            self.config.temperature_schedule,
        )

    def corrector_step_size(self, score: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """Per-sample Langevin step delta at `timestep`, shape (B,)."""
        alphabar_t = self._alphabar(timestep)
        if self.config.step_size is not None:
            delta = self.config.step_size * (1 - alphabar_t)
            return delta.to(score.device).expand(score.shape[0])
        alpha = alphabar_t / self._alphabar(self.previous_timestep(timestep))
        return snr_step_size(score, noise, self.config.snr, alpha)

    def corrector_step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        temperature: float = 1.0,
        classifier_gradient: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One Langevin step at level `timestep`; returns (new sample, x0_hat of the input sample).

        With `classifier_gradient` (s * grad log p(c | x_t)) the step follows the guided score
        grad log p(x_t) + s grad log p(c | x_t).
        """
        prediction, _ = self._split_model_output(model_output, sample)
        alphabar_t = self._alphabar(timestep)
        source = self.config.prediction_type
        score = convert(prediction, sample, alphabar_t, source, "score")
        x0 = convert(prediction, sample, alphabar_t, source, "sample")
        if classifier_gradient is not None:
            score = score + classifier_gradient

        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        delta = self.corrector_step_size(score, noise, timestep)
        return langevin_step(sample, score, append_dims(delta, sample.ndim), noise, temperature), x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
        classifier_gradient: Optional[torch.Tensor] = None,
    ) -> Union[PosteriorSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """Take the corrector or predictor step that entry `step_index` of `timesteps` calls for.

        Arguments and outputs are those of `PosteriorScheduler.step`; `pred_original_sample` is the
        x0 estimate at the input sample. `classifier_gradient` is added to the score on corrector
        steps and applied as in `PosteriorScheduler.step_to` on predictor steps.
        """
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        index = self._step_index
        if index >= len(self.timesteps) or int(self.timesteps[index]) != int(timestep):
            expected = "past the last entry" if index >= len(self.timesteps) else int(self.timesteps[index])
            raise ValueError(
                f"step was called with timestep {int(timestep)} but the next entry of scheduler.timesteps is "
                f"{expected}; step through scheduler.timesteps in order, once per entry."
            )

        t = int(timestep)
        if self.is_corrector_entry(index):
            temperature = self.corrector_temperature(index)
            prev_sample, x0 = self.corrector_step(model_output, t, sample, generator, temperature, classifier_gradient)
        else:
            prev_sample, x0 = self.step_to(
                model_output, t, self.previous_timestep(t), sample, generator, classifier_gradient
            )
        self._step_index += 1

        if not return_dict:
            return prev_sample, x0
        return PosteriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
