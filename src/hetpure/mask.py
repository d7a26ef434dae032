"""Attention masks from classifier activations (Pei et al. 2025, §3.2).

For each of K hooked layers with activation A ∈ R^{B×C×h×w}, the energy map is E_k = Σ_c A_c²,
upsampled bilinearly to the image size and min-max normalised per image to [0, 1]; the attention map
is E = max_k E_k. A binary mask keeps E ≥ τ, or the top p fraction of pixels. 1 = attended pixel =
high noise level t_l.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .devices import draw_device
from .errors import ConfigError, HetpureError, InputError


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The submodules of ``model`` named ``names`` (as in ``named_modules()``); a clear error listing close
    names for an unknown one, and for a string or an empty list instead of a list of names."""
    if isinstance(names, str):
        raise InputError(f"mask layers must be a list of module names, got the string {names!r}; use [{names!r}]")
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules or name == "":
            candidates = [n for n in modules if n]
            close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            some = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
            raise InputError(
                f"the classifier {type(model).__name__} has no layer {name!r} to compute the mask from.{hint} "
                f"Names are as in model.named_modules(), e.g. {some}"
            )
        found.append(modules[name])
    if not found:
        raise InputError("mask_layers is empty: name at least one classifier layer")
    return found


class ActivationRecorder:
    """Holds forward hooks on named layers for the duration of a ``with`` block.

    The hooks record the layers' outputs and are removed on exit, also after an exception, so a
    classifier never accumulates hooks across calls.

    Example:
        >>> import torch, hetpure
        >>> clf = hetpure.load_classifier("cifar_resnet20")  # random weights are enough for the shapes
        >>> with hetpure.ActivationRecorder(clf, ["layer1", "layer3"]) as rec:
        ...     _ = clf(torch.rand(2, 3, 32, 32))
        >>> [tuple(a.shape) for a in rec.activations]
        [(2, 16, 32, 32), (2, 64, 8, 8)]
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str]) -> None:
        self.model = model
        self.layer_names = list(layer_names)
        self.layers = resolve_layers(model, self.layer_names)
        self.activations: list[Tensor | None] = [None] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ActivationRecorder:
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(i)))
        return self

    def _make_hook(self, index: int):  # noqa: ANN202 - hook signature is fixed by torch
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not torch.is_tensor(tensor) or tensor.dim() != 4:
                raise HetpureError(
                    f"mask layer {self.layer_names[index]!r} outputs {type(tensor).__name__} "
                    f"{tuple(getattr(tensor, 'shape', ()))}; choose layers with (B, C, h, w) feature maps"
                )
            self.activations[index] = tensor

        return hook

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def normalise_per_image(maps: Tensor) -> Tensor:
    """Min-max normalise each (1, H, W) map of a (B, 1, H, W) batch to [0, 1]; a constant map gives 0."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    return ((flat - lo) / span.clamp_min(1e-12) * (span > 0)).view_as(maps)


def energy_map(classifier: nn.Module, x: Tensor, layer_names: Sequence[str], differentiable: bool = False) -> Tensor:
    """Attention map E ∈ [0, 1]^{B×1×H×W}: max over layers of normalised Σ_c A² (paper eq. 5–6).

    The classifier runs once on ``x`` (its real input, [0, 1] images), without gradient unless
    ``differentiable`` (the soft map that mask-aware attacks push away from their perturbation).

    Example:
        >>> import torch, hetpure
        >>> clf = hetpure.load_classifier("cifar_resnet20")  # random weights are enough for the shapes
        >>> e = hetpure.energy_map(clf, torch.rand(2, 3, 32, 32), clf.mask_layers)
        >>> tuple(e.shape), 0 <= float(e.min()) <= float(e.max()) <= 1
        ((2, 1, 32, 32), True)
    """
    size = x.shape[-2:]
    with torch.set_grad_enabled(differentiable), ActivationRecorder(classifier, layer_names) as rec:
        classifier(x)
        maps = []
        for name, act in zip(rec.layer_names, rec.activations):
            if act is None:
                raise HetpureError(f"mask layer {name!r} was not called in the classifier's forward pass")
            energy = act.float().pow(2).sum(dim=1, keepdim=True)
            energy = F.interpolate(energy, size=size, mode="bilinear", align_corners=False)
            maps.append(normalise_per_image(energy))
        return torch.stack(maps, 0).amax(0)


def binarize(energy: Tensor, tau: float | None = 0.9, top_p: float | None = None) -> Tensor:
    """Binary mask from an attention map: E ≥ τ, or (if ``top_p`` is given) the top p fraction.

    With ``top_p`` exactly k = ⌈p·H·W⌉ pixels per image are kept (at least the fraction p; ties broken by
    position); the 1e-9 keeps float products such as 0.1 · 1000 = 100.00000000000001 at 100.

    Example:
        >>> import torch, hetpure
        >>> energy = torch.tensor([[[[0.1, 0.95], [0.5, 0.9]]]])  # an attention map (B, 1, H, W)
        >>> hetpure.binarize(energy, tau=0.9).flatten().tolist()
        [0.0, 1.0, 0.0, 1.0]
        >>> hetpure.binarize(energy, top_p=0.25).flatten().tolist()  # the top quarter: 1 pixel of 4
        [0.0, 1.0, 0.0, 0.0]
    """
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {top_p}")
        flat = energy.flatten(1)
        k = max(1, math.ceil(top_p * flat.shape[1] - 1e-9))
        idx = flat.topk(k, dim=1).indices
        return torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(energy)
    if tau is None or not 0 <= tau <= 1:
        raise ConfigError(f"tau must lie in [0, 1], got {tau}")
    return (energy >= tau).to(energy.dtype)


def graded_weights(energy: Tensor, tau_lo: float, tau_hi: float) -> Tensor:
    """Per-pixel weight w = clip((E − τ_lo)/(τ_hi − τ_lo), 0, 1); τ_lo = τ_hi gives w = [E ≥ τ]."""
    if tau_hi < tau_lo:
        raise ConfigError(f"tau_lo ({tau_lo}) must not exceed tau_hi ({tau_hi})")
    if tau_hi == tau_lo:
        return (energy >= tau_hi).to(energy.dtype)
    return ((energy - tau_lo) / (tau_hi - tau_lo)).clamp(0, 1)


def random_mask_like(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A mask with the same number of attended pixels per image as ``mask``, placed uniformly at random."""
    flat = mask.flatten(1)
    counts = flat.round().sum(1).long()
    scores = torch.rand(flat.shape, generator=generator, device=draw_device(generator, flat.device)).to(flat.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts[:, None]).to(mask.dtype).view_as(mask)


def gradcam_map(classifier: nn.Module, x: Tensor, layer_names: Sequence[str]) -> Tensor:
    """Grad-CAM attention map (Selvaraju et al. 2017) on the same layers, for the mask-source ablation.

    For the predicted class c and each layer: weights α_k = mean_{ij} ∂z_c/∂A_k, map ReLU(Σ_k α_k A_k),
    upsampled bilinearly, min-max normalised per image; the maximum over layers, like :func:`energy_map`.
    The input requires grad (not the weights), so a frozen classifier (``requires_grad_(False)``) works.
    """
    size = x.shape[-2:]
    with torch.enable_grad(), ActivationRecorder(classifier, layer_names) as rec:
        logits = classifier(x.detach().requires_grad_(True))
        acts = [a for a in rec.activations if a is not None]
        if len(acts) != len(rec.layers):
            raise HetpureError("a Grad-CAM layer was not called in the classifier's forward pass")
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        grads = torch.autograd.grad(score, acts)
    maps = []
    for act, grad in zip(acts, grads):
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True).relu().detach().float()
        maps.append(normalise_per_image(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)))
    return torch.stack(maps, 0).amax(0)
