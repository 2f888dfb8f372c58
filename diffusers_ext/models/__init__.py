"""Models of this package (diffusers ModelMixin/ConfigMixin classes)."""

from .noisy_classifier import NoisyClassifier

__all__ = ["NoisyClassifier"]
