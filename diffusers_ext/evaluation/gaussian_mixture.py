"""An isotropic Gaussian mixture with exact noisy scores and class posteriors, and a model wrapper.

For data x_0 ~ sum_k w_k N(mu_k, s_k^2 I) and noise x = gamma x_0 + sigma z (VP: gamma =
sqrt(alphabar), sigma = sqrt(1 - alphabar); VE: gamma = 1), the noisy marginal is again a mixture,

    p(x) = sum_k w_k N(x; gamma mu_k, (gamma^2 s_k^2 + sigma^2) I),

so its score grad log p(x) and the class posterior p(k | x) are closed forms. Samplers and
guidance can then be checked against exact values, with no trained network involved.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

from ..core._tensors import append_dims
from ..core.parameterization import PREDICTION_TYPES, check_prediction_type, convert

Level = Union[float, torch.Tensor]


def _column(value: Level, n: int) -> torch.Tensor:
    """Broadcast a noise coefficient (a float or a (n,) tensor) to a float64 column of shape (n, 1)."""
    value = torch.as_tensor(value, dtype=torch.float64)
    return value.reshape(-1, 1).expand(n, 1) if value.numel() == 1 else value.reshape(n, 1)


class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I) in d dimensions; every method works in float64.

    Args:
        means: (K, d) component means mu_k.
        stds: (K,) component standard deviations s_k.
        weights: (K,) mixture weights w_k (normalized here); uniform if omitted.
    """

    def __init__(self, means: Sequence, stds: Sequence, weights: Optional[Sequence] = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        K = self.means.shape[0]
        weights = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2 or self.stds.shape != (K,) or weights.shape != (K,):
            raise ValueError("means must be (K, d), stds and weights (K,).")
        if bool((self.stds <= 0).any()) or bool((weights <= 0).any()):
            raise ValueError("stds and weights must be positive.")
        self.weights = weights / weights.sum()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw n points (n, d) and the component each came from (n,)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels, None] * noise, labels

    def _component_terms(self, x: torch.Tensor, gamma: Level, sigma: Level):
        n = x.shape[0]
        gamma, sigma = _column(gamma, n), _column(sigma, n)
        variances = gamma**2 * self.stds**2 + sigma**2  # (n, K)
        offsets = x[:, None, :] - gamma[:, :, None] * self.means[None]  # (n, K, d)
        log_likelihood = -0.5 * (offsets.pow(2).sum(-1) / variances + self.dim * torch.log(2 * torch.pi * variances))
        return offsets, variances, log_likelihood

    def class_log_posterior(self, x: torch.Tensor, gamma: Level = 1.0, sigma: Level = 0.0) -> torch.Tensor:
        """log p(k | x) of the noisy mixture, (n, K)."""
        _, _, log_likelihood = self._component_terms(x.double(), gamma, sigma)
        return torch.log_softmax(self.weights.log() + log_likelihood, dim=1)

    def log_prob(self, x: torch.Tensor, gamma: Level = 1.0, sigma: Level = 0.0) -> torch.Tensor:
        """log p(x) of the noisy mixture, (n,)."""
        _, _, log_likelihood = self._component_terms(x.double(), gamma, sigma)
        return torch.logsumexp(self.weights.log() + log_likelihood, dim=1)

    def score(
        self, x: torch.Tensor, gamma: Level = 1.0, sigma: Level = 0.0, labels: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """grad log p(x) of the noisy mixture, (n, d); with `labels`, the score of p(x | k) per row."""
        x = x.double()
        offsets, variances, log_likelihood = self._component_terms(x, gamma, sigma)
        component_scores = -offsets / variances[:, :, None]  # (n, K, d)
        if labels is not None:
            return component_scores[torch.arange(x.shape[0]), labels.long()]
        responsibilities = torch.softmax(self.weights.log() + log_likelihood, dim=1)
        return (responsibilities[:, :, None] * component_scores).sum(1)


class GaussianMixtureScoreModel(ModelMixin, ConfigMixin):
    """Exact predictions of a `GaussianMixture`, with the call signature of a `UNet2DModel`.

    Samples are (B, d, 1, 1): the d coordinates are channels of a 1x1 image, so diffusers
    pipelines and schedulers run on it unchanged (use output_type="latent" to keep raw values).

    With `noise="vp"`, `timestep` indexes `alphas_cumprod` and the model returns the
    `prediction_type` of the exact score. With `noise="ve"`, `timestep` is sigma and the output is
    the score. Class labels 0..K-1 select one component (the exact conditional model) and label K,
    the null class, the whole mixture, as a classifier-free-guidance model expects. With
    `conditional=False` the model has no class embedding (`num_class_embeds` None) and always
    returns the mixture's score.

    Args:
        means, stds, weights: the mixture (see `GaussianMixture`).
        noise: "vp" or "ve".
        prediction_type: for VP, "epsilon", "sample", "v_prediction" or "score".
        alphas_cumprod: the VP schedule, one alphabar per training timestep.
        sigma_data: for VE, the `sigma_data` of the scheduler's input scaling, which this
            model undoes; None when the scheduler passes x unscaled.
        conditional: whether the model takes class labels.
    """

    @register_to_config
    def __init__(
        self,
        means: Sequence,
        stds: Sequence,
        weights: Optional[Sequence] = None,
        noise: str = "vp",
        prediction_type: str = "epsilon",
        alphas_cumprod: Optional[Sequence[float]] = None,
        sigma_data: Optional[float] = None,
        conditional: bool = True,
    ):
        super().__init__()
        if noise not in ("vp", "ve"):
            raise ValueError(f"noise={noise!r} is not supported; use 'vp' or 've'.")
        check_prediction_type(prediction_type, ("score",) if noise == "ve" else PREDICTION_TYPES)
        if noise == "vp" and alphas_cumprod is None:
            raise ValueError("a VP model needs alphas_cumprod, e.g. list(scheduler.alphas_cumprod).")
        self.mixture = GaussianMixture(means, stds, weights)
        table = torch.as_tensor(alphas_cumprod if alphas_cumprod is not None else [], dtype=torch.float64)
        self.register_buffer("alphabar_table", table, persistent=False)
        self.register_to_config(
            sample_size=1,
            in_channels=self.mixture.dim,
            num_class_embeds=self.mixture.num_components + 1 if conditional else None,
        )

    def forward(self, sample: torch.Tensor, timestep, class_labels: Optional[torch.Tensor] = None, return_dict=True):
        batch = sample.shape[0]
        x = sample.reshape(batch, -1).double()
        timestep = torch.as_tensor(timestep, device=sample.device)
        if self.config.noise == "vp":
            alphabar = self.alphabar_table[timestep.long()]
            gamma, sigma = alphabar.sqrt(), (1 - alphabar).sqrt()
        else:
            gamma, sigma = torch.ones((), dtype=torch.float64), timestep.double()
            if self.config.sigma_data is not None:
                x = x * (sigma.reshape(-1, 1) ** 2 + self.config.sigma_data**2).sqrt()

        score = self.mixture.score(x, gamma, sigma)
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=sample.device).reshape(-1).expand(batch)
            conditional = labels < self.mixture.num_components
            component = self.mixture.score(x, gamma, sigma, labels.clamp(max=self.mixture.num_components - 1))
            score = torch.where(conditional[:, None], component, score)

        output = score.reshape(sample.shape)
        if self.config.noise == "vp":
            if alphabar.ndim == 1:
                alphabar = append_dims(alphabar, sample.ndim)
            output = convert(output, x.reshape(sample.shape), alphabar, "score", self.config.prediction_type)
        output = output.to(sample.dtype)
        return UNet2DOutput(sample=output) if return_dict else (output,)


class GaussianMixtureClassifier(ModelMixin, ConfigMixin):
    """The exact class posterior p(k | x_t) of a `GaussianMixture` under VP noise, as classifier logits.

    Called like `NoisyClassifier`: classifier(x_t, t) with x_t of shape (B, d, 1, 1) and t an
    index into `alphas_cumprod`; returns log p(k | x_t), shape (B, K), a valid set of logits.
    With it, classifier guidance at scale 1 on the mixture's unconditional score gives the exact
    conditional score grad log p(x_t | k).
    """

    @register_to_config
    def __init__(self, means: Sequence, stds: Sequence, weights: Optional[Sequence] = None, alphas_cumprod=()):
        super().__init__()
        self.mixture = GaussianMixture(means, stds, weights)
        self.register_buffer("alphabar_table", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False)
        self.register_to_config(
            sample_size=1,
            in_channels=self.mixture.dim,
            num_classes=self.mixture.num_components,
            num_train_timesteps=len(alphas_cumprod),
        )

    def forward(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        alphabar = self.alphabar_table[torch.as_tensor(timestep, device=sample.device).long()]
        x = sample.reshape(sample.shape[0], -1)
        return self.mixture.class_log_posterior(x, alphabar.sqrt(), (1 - alphabar).sqrt()).to(sample.dtype)
