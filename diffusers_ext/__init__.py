"""diffusers-ext: exact posterior sampling, Langevin correctors and guided sampling for diffusers.

Importing the package registers its pipelines, schedulers and models with diffusers, so that
`DiffusionPipeline.from_pretrained` loads folders this package saved.
"""

from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from ._registration import register_with_diffusers
from .models import NoisyClassifier
from .pipelines import GuidedDiffusionPipeline
from .schedulers import AnnealedLangevinScheduler, PosteriorScheduler, PredictorCorrectorScheduler

__version__ = "0.1.0"

__all__ = [
    "AnnealedLangevinScheduler",
    "GuidedDiffusionPipeline",
    "NoisyClassifier",
    "PosteriorScheduler",
    "PredictorCorrectorScheduler",
]

# DiffusionPipeline, ModelMixin and SchedulerMixin stay importable from here because diffusers'
# loader looks up a component's base class on the library named in model_index.json.
register_with_diffusers(
    [
        GuidedDiffusionPipeline,
        PosteriorScheduler,
        PredictorCorrectorScheduler,
        AnnealedLangevinScheduler,
        NoisyClassifier,
    ],
    scheduler_compatibles={
        DDPMScheduler: ["PosteriorScheduler", "PredictorCorrectorScheduler"],
        DDIMScheduler: ["PosteriorScheduler", "PredictorCorrectorScheduler"],
    },
)
