"""Teacher and student networks, registered by name.

Every model's forward returns `(embedding, logits)`: the embedding is the
penultimate feature vector (after global average pooling), the logits the
classifier's output. `model.embedding_dim` gives the embedding's width.

- resnet18/34/50: torchvision's ResNet with the CIFAR stem (a 3x3 stride-1 first
  convolution and no max-pool), as in the CIFAR results of He et al. 2016 and
  most distillation papers since.
- resnet8/14/20/32/56: the small CIFAR ResNets of He et al. 2016 (three stages of
  16, 32, 64 channels, 6n+2 layers) built from torchvision's BasicBlock, with an
  optional width multiplier, for CPU profiles.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from gkd_lib.registry import Registry

MODELS: Registry = Registry("model")


class CifarResNet(ResNet):
    """torchvision's ResNet with a 3x3 stride-1 stem and no max-pool."""

    def __init__(self, block, layers, num_classes: int, in_channels: int = 3):
        super().__init__(block, layers, num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        self.embedding_dim = self.fc.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        embedding = torch.flatten(self.avgpool(x), 1)
        return embedding, self.fc(embedding)


class SmallResNet(nn.Module):
    """The CIFAR ResNet-(6n+2) of He et al. 2016, with 1x1 projection shortcuts."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"a small CIFAR ResNet needs depth 6n+2, got {depth}")
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width!r}")
        blocks = (depth - 2) // 6
        channels = [max(1, round(c * width)) for c in (16, 32, 64)]

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        stages, planes_in = [], channels[0]
        for index, planes in enumerate(channels):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                downsample = None
                if block == 0 and (stride != 1 or planes_in != planes):
                    downsample = nn.Sequential(
                        nn.Conv2d(planes_in, planes, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes),
                    )
                stage.append(BasicBlock(planes_in, planes, stride if block == 0 else 1, downsample))
                planes_in = planes
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, num_classes)
        self.embedding_dim = planes_in

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.flatten(self.pool(self.stages(self.stem(x))), 1)
        return embedding, self.fc(embedding)


def _register_large(name: str, block, layers) -> None:
    @MODELS.register(name)
    def build(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"{name} has no width multiplier; got width={width!r}, accepted: 1.0")
        return CifarResNet(block, layers, num_classes, in_channels)


def _register_small(depth: int) -> None:
    @MODELS.register(f"resnet{depth}")
    def build(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return SmallResNet(depth, num_classes, in_channels, width)


_register_large("resnet18", BasicBlock, [2, 2, 2, 2])
_register_large("resnet34", BasicBlock, [3, 4, 6, 3])
_register_large("resnet50", Bottleneck, [3, 4, 6, 3])
for _depth in (8, 14, 20, 32, 56):
    _register_small(_depth)


def build_model(name: str, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """A registered model for `num_classes` classes and `in_channels` input channels."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
