"""Models: parameter counts pinned to published figures, one forward for embedding and logits."""

from __future__ import annotations

import pytest
import torch

from gkd_lib.models import MODELS, build_model, count_parameters
from gkd_lib.registry import UnknownNameError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # CIFAR ResNets with 100 classes, as reported by RepDistiller and most CIFAR-100 KD papers.
        ("resnet18", 11_220_132),
        ("resnet50", 23_705_252),
        ("resnet34", 21_328_292),
    ],
)
def test_cifar_resnet_parameter_counts(name, expected):
    assert count_parameters(build_model(name, num_classes=100)) == expected


def test_small_resnet20_parameter_count():
    # He et al.'s ResNet-20 with parameter-free identity shortcuts has 0.27M parameters
    # (269,722 with 10 classes); our projection shortcuts add a 1x1 conv and a BatchNorm at
    # the two downsampling points: 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.
    assert count_parameters(build_model("resnet20", num_classes=10)) == 269_722 + 2_752


def test_cifar_stem_has_no_downsampling():
    model = build_model("resnet18", num_classes=100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18", "resnet50"])
def test_forward_gives_embedding_and_logits(name):
    model = build_model(name, num_classes=7, in_channels=1).eval()
    embedding, logits = model(torch.randn(2, 1, 16, 16))
    assert embedding.shape == (2, model.embedding_dim)
    assert logits.shape == (2, 7)
    assert torch.allclose(model.fc(embedding), logits)


def test_width_multiplier_scales_channels():
    assert build_model("resnet8", 10, width=2.0).embedding_dim == 128
    assert build_model("resnet8", 10, width=0.5).embedding_dim == 32
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", 10, width=2.0)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid models: .*resnet18.*resnet8"):
        build_model("vgg13", 10)
    assert set(MODELS.names()) == {
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet18",
        "resnet34",
        "resnet50",
    }
