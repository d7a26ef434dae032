"""The classifier zoo: one builder per architecture and the table ``ZOO`` (name → spec) as data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import DownloadError, HetpureError, MissingDependencyError
from .checkpoint import load_into
from .classifier_base import IMAGENET_MEAN, IMAGENET_STD, WrappedClassifier, _load_weights
from .dm_wide_resnet import DMWideResNet
from .mnist_cnn import MnistCNN
from .resnet_cifar import CifarResNet
from .spec import ClassifierSpec
from .wide_resnet import WideResNet

# --------------------------------------------------------------------------------------------------------
# Builders: factory(path, trust_pickle=False, **options) -> nn.Module
# --------------------------------------------------------------------------------------------------------


def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(path: Path | None, trust_pickle: bool = False, num_classes: int = 10) -> nn.Module:
        return _load_weights(CifarResNet(depth, num_classes=num_classes), path, trust_pickle)

    return build


def _wrn28_10(
    path: Path | None,
    trust_pickle: bool = False,
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    sub_block1: bool = False,
    from_robustbench: bool = False,
    threat_model: str = "Linf",
    model_dir: str | Path = "./models",
) -> nn.Module:
    """WideResNet-28-10, RobustBench cifar10 "Standard" key layout, [0, 1] input without normalisation"""
    model = WideResNet(depth, widen_factor, num_classes=num_classes, sub_block1=sub_block1)
    if path is not None and from_robustbench:
        raise HetpureError("give either path= (a local checkpoint) or from_robustbench=True, not both")
    if from_robustbench:
        try:
            from robustbench.utils import load_model as rb_load_model
        except ImportError as exc:
            raise HetpureError(
                "from_robustbench=True needs the robustbench package (pip install "
                "git+https://github.com/RobustBench/robustbench.git); or download the 'Standard' checkpoint "
                "yourself and pass path=<file>"
            ) from exc
        try:
            ref = rb_load_model(
                model_name="Standard", model_dir=str(model_dir), dataset="cifar10", threat_model=threat_model
            )
        except Exception as exc:  # network or robustbench errors: say how to work offline
            raise DownloadError(
                f"robustbench could not provide the cifar10 'Standard' model ({type(exc).__name__}: {exc}). "
                "Offline? Copy the checkpoint file to this machine and pass path=<file>"
            ) from exc
        load_into(model, ref.state_dict(), strict=True)
        model.weights_source = f"robustbench:cifar10/{threat_model}/Standard"
        return model
    return _load_weights(model, path, trust_pickle)


def _wrn70_16(
    path: Path | None,
    trust_pickle: bool = False,
    depth: int = 70,
    width: int = 16,
    num_classes: int = 10,
    activation: str = "swish",
) -> nn.Module:
    """DMWideResNet-70-16 (Swish), RobustBench/DiffPure key layout, CIFAR-10 mean/std inside"""
    model = DMWideResNet(num_classes=num_classes, depth=depth, width=width, activation=activation)
    return _load_weights(model, path, trust_pickle)


def _mnist_cnn(
    path: Path | None, trust_pickle: bool = False, width: int = 16, num_classes: int = 10
) -> nn.Module:
    """Small three-stage MNIST CNN (1x28x28 in), MNIST mean/std inside"""
    return _load_weights(MnistCNN(num_classes=num_classes, width=width), path, trust_pickle)


def _resnet50(path: Path | None, trust_pickle: bool = False, weights: str | None = None) -> nn.Module:
    """torchvision ImageNet ResNet-50 with ImageNet mean/std inside (needs torchvision)"""
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError(
            "the resnet50 classifier needs torchvision, which is not installed: "
            "pip install 'hetpure[torchvision]' (or pip install torchvision)"
        ) from exc
    if path is not None and weights is not None:
        raise HetpureError(
            "give either path= (a local checkpoint) or weights= (torchvision weights), not both"
        )
    try:
        net = torchvision.models.resnet50(weights=weights)
    except Exception as exc:  # unknown weight names, download failures
        raise HetpureError(
            f"torchvision could not build resnet50(weights={weights!r}): {type(exc).__name__}: {exc}. "
            "Use weights='DEFAULT' online, or pass path=<local checkpoint>"
        ) from exc
    _load_weights(net, path, trust_pickle)
    model = WrappedClassifier(
        net,
        ["layer1", "layer2", "layer3", "layer4"],
        IMAGENET_MEAN,
        IMAGENET_STD,
        num_classes=1000,
        in_channels=3,
    )
    if weights is not None:
        model.weights_source = f"torchvision:resnet50/{weights}"
    return model


def _spec(name: str, factory: Callable[..., nn.Module], description: str, input_shape: tuple[int, int, int],
          label_set: str, mask_layers: tuple[str, ...]) -> ClassifierSpec:
    return ClassifierSpec(name, factory, description, input_shape, label_set, mask_layers)


#: The model zoo as data: name → how to build it, what it takes, which classes it predicts, where its mask comes
#: from (RobustBench's model_zoo style). ``hetpure list classifiers`` prints it; users add entries with
#: :func:`hetpure.models.registry.register_classifier`.
ZOO: dict[str, ClassifierSpec] = {
    **{f"cifar_resnet{d}": _spec(f"cifar_resnet{d}", _cifar_resnet(d),
                                 f"CIFAR ResNet-{d} (He et al. 2016, option A), ImageNet mean/std inside",
                                 (3, 32, 32), "cifar10", ("layer1", "layer2", "layer3"))
       for d in (20, 32, 44, 56, 110)},
    "wrn28_10": _spec("wrn28_10", _wrn28_10,
                      'WideResNet-28-10, RobustBench cifar10 "Standard" key layout, [0, 1] input without normalisation',
                      (3, 32, 32), "cifar10",
                      ("block1.layer.3.relu2", "block2.layer.3.relu2", "block3.layer.3.relu2", "relu")),
    "wrn70_16": _spec("wrn70_16", _wrn70_16,
                      "DMWideResNet-70-16 (Swish), RobustBench/DiffPure key layout, CIFAR-10 mean/std inside",
                      (3, 32, 32), "cifar10", ("layer.0.block.10.relu_1", "layer.1.block.10.relu_1",
                                                "layer.2.block.10.relu_1", "relu")),
    "mnist_cnn": _spec("mnist_cnn", _mnist_cnn, "Small three-stage MNIST CNN (1x28x28 in), MNIST mean/std inside",
                       (1, 28, 28), "mnist", ("stage1", "stage2", "stage3")),
    "resnet50": _spec("resnet50", _resnet50,
                      "torchvision ImageNet ResNet-50 with ImageNet mean/std inside (needs torchvision)",
                      (3, 224, 224), "imagenet", ("layer1", "layer2", "layer3", "layer4")),
}
