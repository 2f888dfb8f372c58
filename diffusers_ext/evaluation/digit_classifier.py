"""A clean-image digit classifier that scores generated samples by the class they show.

It is trained on real digits at the generator's resolution and reports how many generated
images it labels as the class they were requested for ("label accuracy"), the standard
figure for class-conditional samplers on MNIST-like data.
"""

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitClassifier(nn.Module):
    """Two convolution blocks and a linear head; input (B, C, H, W) in [-1, 1], output logits (B, classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 16, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class ClassifierReport:
    """Held-out accuracy of the trained classifier and the sizes it was measured on."""

    held_out_accuracy: float
    num_train: int
    num_held_out: int


def _shift_augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift the whole batch by a random translation of up to `max_shift` pixels."""
    shifts = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=shifts, dims=(2, 3))


def train_digit_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 8,
    held_out_fraction: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
) -> Tuple[DigitClassifier, ClassifierReport]:
    """Train a `DigitClassifier` on (N, C, H, W) images in [-1, 1] with labels (N,).

    A random `held_out_fraction` of the data is kept aside and the
    classifier's accuracy on it is reported, so a score on generated samples can be read
    against the classifier's own error rate.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=generator)
    num_held_out = int(round(held_out_fraction * images.shape[0]))
    held_out, train = order[:num_held_out], order[num_held_out:]

    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1
    model = DigitClassifier(images.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((train.numel() + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)

    model.train()
    for _ in range(epochs):
        permutation = train[torch.randperm(train.numel(), generator=generator)]
        for batch in permutation.split(batch_size):
            logits = model(_shift_augment(images[batch], generator))
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    accuracy = label_accuracy(model, images[held_out], labels[held_out])
    return model, ClassifierReport(accuracy, train.numel(), num_held_out)


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predict the most likely class of each image (N, C, H, W) in [-1, 1]; returns int64 (N,)."""
    model.eval()
    predictions = [model(batch).argmax(dim=1) for batch in images.split(batch_size)]
    return torch.cat(predictions)


def label_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of images whose predicted class equals `labels`."""
    return float((predict_labels(model, images) == labels).float().mean())
