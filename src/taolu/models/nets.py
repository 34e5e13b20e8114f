"""Built-in networks, each sized for the data's channels, image size and class count.

Every one is a plain `nn.Sequential` of `torch.nn` layers, as the tutorial builds them; the
input size of the first Linear layer is measured with a dry run, never computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _flat_features(features: nn.Module, channels: int, size: tuple[int, int]) -> int:
    """How many numbers `features` outputs per image: a dry run on one blank image."""
    with torch.no_grad():
        return features(torch.zeros(1, channels, *size)).flatten(1).shape[1]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def build_fastcnn(channels: int, size: tuple[int, int], classes: int) -> nn.Sequential:
    """taolu's default: three conv-BN-ReLU stages (32, 64, 128 filters), each halving the
    image while it is at least 6 px, pooled to 3x3, then one Linear layer.

    On mnist5k it reaches ~99% validation accuracy in about 15 s on 2 CPU cores
    (benchmarks/default_recipe.py).
    """
    layers: list[nn.Module] = []
    height, width = size
    width_in = channels
    for width_out in (32, 64, 128):
        layers += _conv_bn_relu(width_in, width_out)
        if min(height, width) >= 6:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        width_in = width_out
    layers += [nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(width_in * 9, classes)]
    return nn.Sequential(*layers)


def build_tudui(channels: int, size: tuple[int, int], classes: int) -> nn.Sequential:
    """The tutorial's CIFAR-10 network ("Tudui"): three 5x5 "same" convolutions with max
    pooling, then Linear 64 and Linear classes."""
    features = nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = _flat_features(features, channels, size)
    return nn.Sequential(*features, nn.Linear(flat, 64), nn.Linear(64, classes))


def build_lenet5(channels: int, size: tuple[int, int], classes: int) -> nn.Sequential:
    """LeCun's LeNet-5 with ReLU and max pooling: conv 6 -> conv 16 -> 120 -> 84 -> classes.
    The second convolution keeps its size ("same") when the image is too small for 5x5."""
    small = min(size) < 20
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2 if small else 0),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = _flat_features(features, channels, size)
    return nn.Sequential(
        *features,
        nn.Linear(flat, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, classes),
    )


class Residual(nn.Module):
    """x + block(x): the skip connection of the ResNet-9 family."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def build_resnet9(channels: int, size: tuple[int, int], classes: int) -> nn.Sequential:
    """The ResNet-9 of the CIFAR-10 speed runs (Page; Keller Jordan's airbench): conv 64,
    then three stages of 128, 256 and 512 filters, each conv-BN-ReLU and a 2x2 max pool, the
    first and last with a residual pair of convolutions; global max pool; one Linear layer.
    Made for 32 px colour images; smaller images skip pooling below 4 px."""
    layers: list[nn.Module] = [*_conv_bn_relu(channels, 64)]
    side = min(size)
    for width_in, width_out, residual in ((64, 128, True), (128, 256, False), (256, 512, True)):
        layers += _conv_bn_relu(width_in, width_out)
        if side >= 4:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        if residual:
            layers.append(
                Residual(
                    nn.Sequential(
                        *_conv_bn_relu(width_out, width_out), *_conv_bn_relu(width_out, width_out)
                    )
                )
            )
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


BUILTIN_MODELS: dict[str, Callable[[int, tuple[int, int], int], nn.Module]] = {
    "fastcnn": build_fastcnn,
    "tudui": build_tudui,
    "lenet5": build_lenet5,
    "resnet9": build_resnet9,
}
