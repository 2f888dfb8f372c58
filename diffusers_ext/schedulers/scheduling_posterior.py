"""PosteriorScheduler: ancestral sampling from the exact DDPM posterior, and the DDIM-eta family.

A drop-in for DDPMScheduler and DDIMScheduler configs. The step from timestep t to the next
entry s of the sampling grid uses q(x_s | x_t, x0_hat) for that pair, so respaced grids are
exact; the last step lands on x0_hat itself.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from ..core._tensors import append_dims
from ..core.guidance import shift_epsilon, shift_mean
from ..core.parameterization import check_prediction_type, convert, velocity
from ..core.posterior import (
    ddim_sigma,
    ddim_step,
    learned_range_log_variance,
    posterior_variance,
    transition_variance,
)
from ..core.schedule import add_noise, alphabar_at, alphas_cumprod_from_betas, make_betas, rescale_zero_terminal_snr
from ..core.thresholding import dynamic_threshold
from .timesteps import TIMESTEP_SPACINGS, spaced_timesteps, validate_timesteps

logger = logging.get_logger(__name__)

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
# diffusers' DDPMScheduler spells two of the fixed variances with a "_log" suffix; the
# distribution is the same, only diffusers' internal computation differs.
VARIANCE_TYPE_ALIASES = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}
SCHEDULER_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")


@dataclass
class PosteriorSchedulerOutput(BaseOutput):
    """Output of a scheduler step.

    Args:
        prev_sample: x_s, the sample at the next grid level, shape of the input sample.
        pred_original_sample: x0_hat after clipping or thresholding, shape of the input sample.
    """

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class PosteriorScheduler(SchedulerMixin, ConfigMixin):
    """Exact-posterior ancestral sampler and DDIM-eta sampler for variance-preserving models.

    Each step from grid level t to the next level s predicts x0_hat and eps_hat from the model
    output and moves to

        x_s = sqrt(alphabar_s) x0_hat + sqrt(1 - alphabar_s - eta^2 v_post) eps_hat + eta sqrt(v) z

    where v_post = beta_{t|s} (1 - alphabar_s) / (1 - alphabar_t) is the variance of
    q(x_s | x_t, x_0) and v is the noise variance picked by `variance_type` (v_post for
    "fixed_small"). eta = 1 with "fixed_small" is the exact posterior q(x_s | x_t, x0_hat),
    DDPM's ancestral step generalized to any s < t (Ho et al. 2020, equations 6-7); eta = 0 is
    deterministic DDIM (Song et al. 2021, equation 12). The step from the last grid entry goes to
    x0_hat with no noise.

    Config arguments shared with DDPMScheduler and DDIMScheduler keep their names and defaults,
    so `PosteriorScheduler.from_config(pipe.scheduler.config)` works on configs saved by either.
    DDIMScheduler's `set_alpha_to_one` is not a parameter: the final step always lands on x0_hat.

    Args:
        num_train_timesteps: T, the number of training timesteps.
        beta_start, beta_end, beta_schedule, trained_betas: the noise schedule; see
            `diffusers_ext.core.schedule.make_betas`.
        variance_type: noise variance of ancestral steps: "fixed_small" (posterior variance),
            "fixed_large" (beta_{t|s}), "learned" (the model's extra channels are log-variances)
            or "learned_range" (they interpolate between the two fixed ones, Nichol & Dhariwal 2021).
            "fixed_small_log" and "fixed_large_log" are accepted as the same distributions.
        clip_sample: clamp x0_hat to [-clip_sample_range, clip_sample_range].
        prediction_type: what the model predicts: "epsilon", "sample", "v_prediction" or "score".
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of x0_hat
            (Saharia et al. 2022); takes precedence over `clip_sample`.
        timestep_spacing, steps_offset: how `set_timesteps` places the grid; see `spaced_timesteps`.
        rescale_betas_zero_snr: rescale betas to zero terminal SNR (Lin et al. 2024); use with
            prediction_type "v_prediction" or "sample".
        eta: 1.0 for the ancestral posterior, 0.0 for deterministic DDIM, between for DDIM-eta.
            A config value rather than a `step` argument, because diffusers pipelines pass their
            own `eta` (default 0) to any `step` that accepts one.
    """

    _compatibles = ["DDPMScheduler", "DDIMScheduler", "PredictorCorrectorScheduler"]
    order = 1

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
    ):
        variance_type = VARIANCE_TYPE_ALIASES.get(variance_type, variance_type)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type={variance_type!r} is not supported; use one of {VARIANCE_TYPES}.")
        check_prediction_type(prediction_type, self._supported_prediction_types())
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing={timestep_spacing!r} is not supported; use one of {TIMESTEP_SPACINGS}.")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta={eta} is outside [0, 1]; 1 is the ancestral posterior step, 0 deterministic DDIM.")
        self.variance_type = variance_type

        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self._alphas_cumprod_f64 = alphas_cumprod_from_betas(betas)
        self._alphabar_tables = {}

        # float32 copies under diffusers' attribute names, read by training utilities such as
        # diffusers.training_utils.compute_snr.
        self.betas = betas.float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self._alphas_cumprod_f64.float()

        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._set_grid(np.arange(num_train_timesteps, dtype=np.int64)[::-1].copy(), device=None)
        self._warned_missing_variance = False

    @classmethod
    def _supported_prediction_types(cls) -> Tuple[str, ...]:
        return SCHEDULER_PREDICTION_TYPES

    def _set_grid(self, levels: np.ndarray, device) -> None:
        """Store the descending noise levels and the `timesteps` entries that visit them."""
        self._levels = levels
        self.timesteps = torch.from_numpy(self._entries_for_levels(levels)).to(device)

    def _entries_for_levels(self, levels: np.ndarray) -> np.ndarray:
        """Map levels to `timesteps` entries: one model evaluation per level here, more in subclasses."""
        return levels

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """Return `sample` unchanged: variance-preserving models take x_t as it is."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Set the sampling grid: `num_inference_steps` spaced by `timestep_spacing`, or custom `timesteps`.

        Args:
            num_inference_steps: number of steps; the grid follows `config.timestep_spacing`.
            device: where `self.timesteps` is placed.
            timesteps: a strictly descending list of training-timestep indices in [0, T - 1],
                used as given; pass it instead of `num_inference_steps`.
        """
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps.")

        if timesteps is not None:
            grid = validate_timesteps(timesteps, T)
            self.custom_timesteps = True
        else:
            grid = spaced_timesteps(T, num_inference_steps, self.config.timestep_spacing, self.config.steps_offset)
            self.custom_timesteps = False

        self.num_inference_steps = len(grid)
        self._set_grid(grid, device)

    def previous_timestep(self, timestep: Union[int, torch.Tensor]) -> int:
        """Return the grid level after `timestep`, or -1 (the data level) after the last level."""
        t = int(timestep)
        (positions,) = np.nonzero(self._levels == t)
        if positions.size == 0:
            raise ValueError(
                f"timestep {t} is not on the sampling grid; call set_timesteps first and step through "
                f"scheduler.timesteps (grid runs {self._levels[0]} to {self._levels[-1]}, {len(self._levels)} levels)."
            )
        next_position = positions[0] + 1
        return int(self._levels[next_position]) if next_position < len(self._levels) else -1

    def _alphabar(self, timestep: int) -> torch.Tensor:
        """alphabar at one timestep index as a float64 scalar; index -1 is the data level (1.0)."""
        return alphabar_at(self._alphas_cumprod_f64, timestep)

    def _alphabar_table(self, device: torch.device) -> torch.Tensor:
        """alphabar for every training timestep on `device`; float64 except on MPS, which has none."""
        device = torch.device(device)
        if device not in self._alphabar_tables:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._alphabar_tables[device] = self._alphas_cumprod_f64.to(device=device, dtype=dtype)
        return self._alphabar_tables[device]

    def _split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Separate the prediction from the variance channels of a learned-variance model."""
        if model_output.device != sample.device:
            raise ValueError(
                f"model_output is on {model_output.device} but sample is on {sample.device}; move both to one device."
            )
        learned = self.variance_type in ("learned", "learned_range")
        channels = sample.shape[1]
        if learned and model_output.shape[1] == 2 * channels:
            prediction, variance_values = torch.split(model_output, channels, dim=1)
        else:
            prediction, variance_values = model_output, None

        if prediction.shape != sample.shape:
            hint = ""
            if model_output.shape[1] == 2 * channels:
                hint = (
                    " It has twice the sample's channels, as a learned-variance model's output does: set "
                    "variance_type='learned_range' (or 'learned') or pass only the first half."
                )
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}.{hint}"
            )
        needs_variance = learned and self.config.eta > 0
        if needs_variance and variance_values is None and not self._warned_missing_variance:
            logger.warning(
                f"variance_type={self.variance_type!r} but the model output has no variance channels (a "
                "pipeline such as DiTPipeline strips them before step); using 'fixed_small' instead."
            )
            self._warned_missing_variance = True
        return prediction, variance_values

    def _limit_x0(self, x0: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Apply dynamic thresholding or clipping to x0_hat; return it and whether either ran."""
        if self.config.thresholding:
            return dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value), True
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            return x0.clamp(-limit, limit), True
        return x0, False

    def predict_x0_and_epsilon(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x0_hat (clipped or thresholded as configured) and the eps_hat consistent with it.

        When x0_hat is limited, eps_hat is recomputed from it so that the pair still satisfies
        x_t = sqrt(alphabar_t) x0_hat + sqrt(1 - alphabar_t) eps_hat.
        """
        alphabar_t = self._alphabar(timestep)
        source = self.config.prediction_type

        x0 = convert(model_output, sample, alphabar_t, source, "sample")
        x0, limited = self._limit_x0(x0)
        if limited:
            eps = convert(x0, sample, alphabar_t, "sample", "epsilon")
        else:
            eps = convert(model_output, sample, alphabar_t, source, "epsilon")
        return x0, eps

    def shift_prediction(
        self, prediction: torch.Tensor, timestep: int, sample: torch.Tensor, gradient: torch.Tensor
    ) -> torch.Tensor:
        """Classifier guidance on a prediction: eps' = eps - sqrt(1 - alphabar_t) * gradient.

        Dhariwal & Nichol 2021, Algorithm 2; `gradient` is s * grad log p(c | x_t), already scaled.
        The prediction stays in the configured parameterization. At alphabar_t = 0 (zero terminal
        SNR) x_t is pure noise, the shift has no effect on x0_hat, and the prediction is returned as is.
        """
        alphabar_t = self._alphabar(timestep)
        if alphabar_t == 0:
            return prediction
        source = self.config.prediction_type
        eps = convert(prediction, sample, alphabar_t, source, "epsilon")
        return convert(shift_epsilon(eps, alphabar_t, gradient, 1.0), sample, alphabar_t, "epsilon", source)

    def step_variance(
        self, timestep: int, prev_timestep: int, variance_values: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Noise variance of an ancestral step from `timestep` to `prev_timestep`, before eta^2.

        A float64 scalar for the fixed types; a tensor of the sample's shape for learned ones.
        """
        alphabar_t, alphabar_s = self._alphabar(timestep), self._alphabar(prev_timestep)
        if self.variance_type == "fixed_large":
            return transition_variance(alphabar_t, alphabar_s)
        if variance_values is None:
            return posterior_variance(alphabar_t, alphabar_s)
        if self.variance_type == "learned":
            return variance_values.exp()
        return learned_range_log_variance(variance_values, alphabar_t, alphabar_s).exp()

    def step_to(
        self,
        model_output: torch.Tensor,
        timestep: int,
        prev_timestep: int,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        classifier_gradient: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Take one step from `timestep` to any earlier level `prev_timestep` (-1 for the data level).

        Returns (x_s, x0_hat), each of the sample's shape. This is the predictor that the other
        schedulers of this package reuse.

        `classifier_gradient`, s * grad log p(c | x_t) of the sample's shape, applies classifier
        guidance as the step requires (Dhariwal & Nichol 2021): a stochastic step (eta > 0) has
        its mean shifted by its noise variance times the gradient (Algorithm 1), a deterministic
        one has eps_hat shifted (Algorithm 2).
        """
        prediction, variance_values = self._split_model_output(model_output, sample)
        eta = self.config.eta
        if classifier_gradient is not None and eta == 0:
            prediction = self.shift_prediction(prediction, timestep, sample, classifier_gradient)
        x0, eps = self.predict_x0_and_epsilon(prediction, timestep, sample)
        if prev_timestep < 0:
            return x0, x0

        alphabar_t, alphabar_s = self._alphabar(timestep), self._alphabar(prev_timestep)
        prev_sample = ddim_step(x0, eps, alphabar_s, ddim_sigma(alphabar_t, alphabar_s, eta))

        if eta > 0:
            variance = (eta**2 * self.step_variance(timestep, prev_timestep, variance_values)).to(
                device=sample.device, dtype=sample.dtype
            )
            if classifier_gradient is not None:
                prev_sample = shift_mean(prev_sample, variance, classifier_gradient, 1.0)
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = prev_sample + variance.sqrt() * noise
        return prev_sample, x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
        classifier_gradient: Optional[torch.Tensor] = None,
    ) -> Union[PosteriorSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """Move `sample` from `timestep` to the next entry of the sampling grid.

        Args:
            model_output: the model's prediction at `timestep`, shape (B, C, H, W), or (B, 2C, H, W)
                for learned-variance models.
            timestep: an entry of `self.timesteps`.
            sample: x_t, shape (B, C, H, W).
            generator: random generator for the step's noise.
            return_dict: return a `PosteriorSchedulerOutput` instead of a tuple.
            classifier_gradient: s * grad log p(c | x_t) for classifier guidance; see `step_to`.

        Returns:
            `PosteriorSchedulerOutput(prev_sample, pred_original_sample)` or the tuple
            (prev_sample, pred_original_sample).
        """
        t = int(timestep)
        prev_sample, x0 = self.step_to(
            model_output, t, self.previous_timestep(t), sample, generator, classifier_gradient
        )
        if not return_dict:
            return prev_sample, x0
        return PosteriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _alphabar_for(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = self._alphabar_table(like.device)
        return append_dims(table[timesteps.to(like.device).long()], like.ndim)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) noise for per-sample `timesteps` of shape (B,)."""
        return add_noise(original_samples, noise, self._alphabar_for(timesteps, original_samples))

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Return the v-prediction target sqrt(alphabar_t) noise - sqrt(1 - alphabar_t) sample, with `sample` = x_0."""
        return velocity(sample, noise, self._alphabar_for(timesteps, sample))

    def __len__(self) -> int:
        return self.config.num_train_timesteps
