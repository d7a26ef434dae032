"""Image classifiers with their normalisation inside and mask-layer presets.

Every classifier here takes RGB (or grey) images in [0, 1] of shape (B, C, H, W), normalises them itself
(the mean/std are non-persistent buffers, so they are not part of any checkpoint) and returns (B, K)
logits. ``mask_layers`` lists the module names (as in ``named_modules()``) whose activations the
purifiers use to build the attention mask by default: the last block of each stage.

Built-in architectures (one file each; the zoo table is :data:`hetpure.models.zoo.ZOO`):

* :class:`CifarResNet` - He et al. 2016 CIFAR ResNet-(6n+2) with option-A (parameter-free) shortcuts,
  the key layout of github.com/akamaster/pytorch_resnet_cifar10; ImageNet mean/std inside.
* :class:`WideResNet` - RobustBench's ``WideResNet`` (cifar10 "Standard" = WRN-28-10), no normalisation.
* :class:`DMWideResNet` - RobustBench's ``DMWideResNet`` (WRN-70-16, Swish), CIFAR-10 mean/std inside.
* ``resnet50`` - torchvision's ImageNet ResNet-50 wrapped with ImageNet normalisation (needs torchvision).
* :class:`MnistCNN` - a small three-stage CNN for 1x28x28 digits.

User networks are wrapped with :func:`as_classifier`; :func:`check_logits` validates a classifier's output.
"""

from __future__ import annotations

from ..mask import resolve_layers
from .classifier_base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    ImageClassifier,
    WrappedClassifier,
    as_classifier,
    check_logits,
)
from .dm_wide_resnet import DMWideResNet, Swish
from .mnist_cnn import MnistCNN
from .resnet_cifar import CifarResNet
from .wide_resnet import WideResNet

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "CifarResNet",
    "DMWideResNet",
    "ImageClassifier",
    "MnistCNN",
    "Swish",
    "WideResNet",
    "WrappedClassifier",
    "as_classifier",
    "check_logits",
    "resolve_layers",
]
