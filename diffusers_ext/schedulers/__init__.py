"""diffusers scheduler adapters over `diffusers_ext.core`."""

from .scheduling_posterior import PosteriorScheduler, PosteriorSchedulerOutput

__all__ = ["PosteriorScheduler", "PosteriorSchedulerOutput"]
