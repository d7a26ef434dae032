"""A small three-stage CNN for 1×28×28 digits, MNIST mean/std inside."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .classifier_base import MNIST_MEAN, MNIST_STD, ImageClassifier

# --------------------------------------------------------------------------------------------------------
# MNIST CNN
# --------------------------------------------------------------------------------------------------------


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class MnistCNN(ImageClassifier):
    """Small CNN for 1x28x28 digits: three conv stages (28, 14, 7 pixels; 16, 32, 64 channels) with 2x2
    max-pooling between them, global average pooling and a linear layer. MNIST mean/std inside.
    Mask layers: ``stage1``, ``stage2``, ``stage3``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        mean: Sequence[float] | None = MNIST_MEAN,
        std: Sequence[float] | None = MNIST_STD,
    ) -> None:
        super().__init__(num_classes, 1, mean, std)
        self.stage1 = _conv_stage(1, width)
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = _conv_stage(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = _conv_stage(2 * width, 4 * width)
        self.fc = nn.Linear(4 * width, num_classes)
        self.mask_layers = ["stage1", "stage2", "stage3"]

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(self.stage1(self.normalize(x)))
        out = self.pool2(self.stage2(out))
        out = self.stage3(out)
        return self.fc(out.mean(dim=(2, 3)))
