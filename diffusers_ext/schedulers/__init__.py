"""diffusers scheduler adapters over `diffusers_ext.core`."""

from .scheduling_annealed_langevin import AnnealedLangevinScheduler
from .scheduling_posterior import PosteriorScheduler, PosteriorSchedulerOutput
from .scheduling_predictor_corrector import PredictorCorrectorScheduler

__all__ = ["AnnealedLangevinScheduler", "PosteriorScheduler", "PosteriorSchedulerOutput", "PredictorCorrectorScheduler"]
