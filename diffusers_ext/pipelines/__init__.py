"""DiffusionPipeline subclasses."""

from .pipeline_guided_diffusion import GuidedDiffusionPipeline

__all__ = ["GuidedDiffusionPipeline"]
