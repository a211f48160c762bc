"""Batches drawn from tensors on the training device, augmented there.

The whole dataset stays on the device as uint8 (CIFAR-100 train is 150 MB), so an
epoch is a permutation and a few indexing operations per batch: no DataLoader
workers and no per-image PIL calls. Augmentation is torchvision's standard CIFAR
recipe done for a whole batch at once: random crop with zero padding, then an
optional horizontal flip.
"""

from __future__ import annotations

import torch


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random `padding`-padded crops (and flips) of a uint8 batch (N, C, H, W), one per image."""
    n, _, height, width = images.shape
    device = images.device
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
        rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if flip:
        flipped = torch.rand(n, device=device, generator=generator) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images


class TensorBatches:
    """Shuffled, augmented and normalised batches from uint8 tensors on one device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean,
        std,
        *,
        batch_size: int,
        device: torch.device,
        padding: int = 0,
        flip: bool = False,
        channels_last: bool = True,
    ):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.padding = padding
        self.flip = flip
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    @classmethod
    def of_split(cls, data, split: str, *, batch_size: int, device: torch.device) -> TensorBatches:
        """The batches of one split of an ImageData; only "train" is augmented."""
        images, labels = {
            "train": (data.train_images, data.train_labels),
            "val": (data.val_images, data.val_labels),
            "test": (data.test_images, data.test_labels),
        }[split]
        augment = split == "train"
        return cls(
            images,
            labels,
            data.mean,
            data.std,
            batch_size=batch_size,
            device=device,
            padding=data.crop_padding if augment else 0,
            flip=data.flip and augment,
        )

    def __len__(self) -> int:
        """Training batches per epoch: the last incomplete batch is dropped (BatchNorm, compile)."""
        return max(1, len(self.labels) // self.batch_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = (images.float() - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_epoch(self, generator: torch.Generator):
        """Yield (images, labels) for one shuffled, augmented epoch."""
        order = torch.randperm(len(self.labels), device=self.device, generator=generator)
        size = min(self.batch_size, len(order))
        for start in range(0, len(self) * size, size):
            index = order[start : start + size]
            images = random_crop_flip(self.images[index], self.padding, self.flip, generator)
            yield self.normalise(images), self.labels[index]

    def eval_batches(self, batch_size: int):
        """Yield (images, labels) in order, without augmentation."""
        for start in range(0, len(self.labels), batch_size):
            yield (
                self.normalise(self.images[start : start + batch_size]),
                self.labels[start : start + batch_size],
            )
