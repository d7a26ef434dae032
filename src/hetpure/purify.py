"""Heterogeneous-noise purification (Pei et al., CVPR 2025) and the uniform DiffPure-style baseline.

The samplers are short plain functions on the diffusion scale ([-1, 1]); the purifier objects wrap them
with the [0, 1] image API, the mask computation, majority voting and a differentiable module for attacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_images, check_mask
from .checks import check_logit_batch as _check_logits
from .config import MASK_SOURCES, METHODS, PurifyConfig
from .devices import check_gradient_precision, chunks, default_noise, device_generator
from .errors import ConfigError, InputError, InputTypeError
from .mask import binarize, energy_map, gradcam_map, graded_weights, random_mask_like
from .models.base import EpsModel
from .sampling import (
    eps_calls,
    in_stage_one,
    sample_heterogeneous,
    sample_uniform,
)
from .schedule import NoiseFn, NoiseSchedule

__all__ = [
    "MASK_SOURCES", "METHODS", "HeterogeneousPurifier", "PurifiedClassifier", "Purifier", "PurifyConfig",
    "UniformPurifier", "eps_calls", "in_stage_one", "majority_vote", "sample_heterogeneous",
    "sample_uniform",
]


# --------------------------------------------------------------------------------------------------
# Purifier objects: the public API on [0, 1] images.
# --------------------------------------------------------------------------------------------------


def majority_vote(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Majority vote over runs: ``labels`` (R, B) → (winner (B,), counts (B, num_classes)).

    Ties go to the lowest label (``argmax`` returns the first maximum).

    Example:
        >>> import torch, hetpure
        >>> labels = torch.tensor([[3, 1], [3, 2], [5, 2]])  # R = 3 runs of B = 2 images
        >>> winner, counts = hetpure.majority_vote(labels, num_classes=6)
        >>> winner.tolist(), counts[0].tolist()
        ([3, 2], [0, 0, 0, 2, 0, 1])
    """
    counts = F.one_hot(labels.long(), num_classes).sum(0)
    return counts.argmax(1), counts


class Purifier(nn.Module):
    """Common machinery: image checks, [0, 1] ↔ diffusion scale, resizing, batched voting.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10, runs=2))
        >>> isinstance(pur, hetpure.Purifier), pur.eps_calls()
        (True, 2)
        >>> x = torch.rand(3, 1, 28, 28)  # images in [0, 1]
        >>> tuple(pur.purify(x).shape), tuple(pur.vote_counts(x).shape), tuple(pur.predict(x).shape)
        ((3, 1, 28, 28), (3, 10), (3,))
    """

    uniform: bool = False

    def __init__(self, eps_model: EpsModel, classifier: nn.Module, config: PurifyConfig | None = None) -> None:
        super().__init__()
        if not isinstance(eps_model, EpsModel):
            raise InputTypeError(
                "eps_model must be a hetpure EpsModel (e.g. hetpure.DiffusersEps(unet) or "
                f"hetpure.load_eps_model(...)), got {type(eps_model).__name__}"
            )
        if not isinstance(classifier, nn.Module):
            raise InputTypeError(f"classifier must be a torch nn.Module, got {type(classifier).__name__}")
        self.eps_model = eps_model
        self.classifier = classifier
        self.config = self._validated(config or PurifyConfig())
        eps_model.prefer_batch(self.config.max_batch)  # compile / CUDA graphs: one padded shape

    def _validated(self, config: PurifyConfig) -> PurifyConfig:
        """The checked config (a purifier with other settings, e.g. :mod:`hetpure.sde`, overrides this)."""
        return config.validate(self.eps_model.num_timesteps, uniform=self.uniform)

    def _steps(self, override: int | None) -> int:
        """The sampler's step count: ``override`` (e.g. the attack's surrogate) or the configured S."""
        return override or self.config.ddim_steps

    @property
    def schedule(self) -> NoiseSchedule:
        return self.eps_model.schedule

    def eps_calls(self, ddim_steps: int | None = None) -> int:
        """ε-model calls of one purification (with an optional override of S)."""
        cfg = self.config if ddim_steps is None else self.config.replace(ddim_steps=ddim_steps)
        return eps_calls(cfg, self.eps_model.num_timesteps, self.uniform)

    def _model_dtype(self, x: Tensor) -> Tensor:
        """Images in float64 / float16 are cast to the ε-model's float32 (purify returns the caller's dtype)."""
        if x.dtype in (torch.float64, torch.float16):
            return x.float()
        return x

    # -- scale and size ------------------------------------------------------------------------------
    def _to_diffusion(self, x: Tensor) -> Tensor:
        size = self.eps_model.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            if not self.config.resize:
                raise InputError(
                    f"images are {tuple(x.shape[-2:])} but the diffusion model works at {size}x{size}; "
                    "resize them, or pass PurifyConfig(resize=True) to resize for diffusion and back"
                )
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def _from_diffusion(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = ((x + 1) / 2).clamp(0, 1)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return x

    def _resize_map(self, m: Tensor, like: Tensor) -> Tensor:
        if m.shape[-2:] == like.shape[-2:]:
            return m
        return F.interpolate(m, size=like.shape[-2:], mode="nearest")

    # -- the sampler ---------------------------------------------------------------------------------
    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def _levels(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor | None:
        return None

    def purify(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        noise: NoiseFn | None = None,
        generator: torch.Generator | None = None,
        *,
        ddim_steps: int | None = None,
        use_checkpoint: bool = False,
    ) -> Tensor:
        """Purify images in [0, 1] of shape (B, C, H, W); returns the same shape in [0, 1].

        ``noise`` replaces every Gaussian draw (``torch.zeros_like`` makes the run deterministic);
        ``generator`` seeds the default draws. ``ddim_steps`` overrides S (e.g. the attack's surrogate);
        ``use_checkpoint`` recomputes each sampler step in the backward pass (memory independent of S).
        """
        given = check_images(x, self.eps_model.in_channels).dtype
        x = self._model_dtype(x)
        generator = device_generator(generator, x.device)  # CPU generator, CUDA data: one device generator
        self.eps_model.begin_purification()
        levels = self._levels(x, mask, generator)
        x0 = self._to_diffusion(x)
        if levels is not None:
            levels = self._resize_map(levels, x0)
        out = self._sample(
            x0, x, default_noise(noise, generator), self._steps(ddim_steps), use_checkpoint, levels
        )
        return self._from_diffusion(out, tuple(x.shape[-2:])).to(given)

    # -- prediction ----------------------------------------------------------------------------------
    def run_labels(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> tuple[Tensor, int]:
        """Labels (R, B) of ``runs`` independent purifications of each image, and the number of classes.

        The R purifications run as batches of up to ``max_batch`` images (x repeated R times), with the
        mask computed once per image.
        """
        runs = self.config.runs if runs is None else runs
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"runs must be a positive integer (the purifications per vote), got {runs!r}")
        x = self._model_dtype(check_images(x, self.eps_model.in_channels))
        size = tuple(x.shape[-2:])
        generator = device_generator(generator, x.device)
        noise_fn = default_noise(noise, generator)
        labels, num_classes = [], 0
        with torch.no_grad():
            levels = self._levels(x, None, generator)
            step = self.config.max_batch
            for i in range(0, x.shape[0] * runs, step):
                rows = torch.arange(i, min(i + step, x.shape[0] * runs), device=x.device) % x.shape[0]
                x0 = self._to_diffusion(x[rows])
                lev = None if levels is None else self._resize_map(levels[rows], x0)
                self.eps_model.begin_purification()
                out = self._sample(x0, x[rows], noise_fn, self._steps(None), False, lev)
                logits = _check_logits(self.classifier(self._from_diffusion(out, size)), x[rows],
                                       f"{len(rows)} purified images (part of {runs} runs × {x.shape[0]} images)")
                labels.append(logits.argmax(1))
                num_classes = logits.shape[1]
        return torch.cat(labels).view(runs, x.shape[0]), num_classes

    def vote_counts(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> Tensor:
        """Class vote counts (B, num_classes) of ``runs`` independent purifications of each image."""
        labels, num_classes = self.run_labels(x, runs, generator, noise)
        return majority_vote(labels, num_classes)[1]

    def predict(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> Tensor:
        """Majority-vote labels (B,) int64 over ``runs`` purifications (ties: lowest label)."""
        return self.vote_counts(x, runs, generator, noise).argmax(1)

    def as_module(self, ddim_steps: int | None = None, use_checkpoint: bool = False,
                  max_batch: int | None = None) -> PurifiedClassifier:
        """An ``nn.Module``: x ↦ classifier(purify(x)), differentiable end to end (one stochastic run);
        ``max_batch`` purifies larger inputs in chunks (pair it with ``use_checkpoint`` to bound memory)."""
        return PurifiedClassifier(self, ddim_steps=ddim_steps, use_checkpoint=use_checkpoint, max_batch=max_batch)


class HeterogeneousPurifier(Purifier):
    """Purification with heterogeneous noise (Pei et al., CVPR 2025).

    Args:
        eps_model: the diffusion model (:class:`~hetpure.models.EpsModel`).
        classifier: an ``nn.Module`` on [0, 1] images (normalisation inside); hooked for the mask.
        config: :class:`PurifyConfig`.
        mask_layers: names of the classifier layers whose activation energy makes the mask; defaults to
            ``classifier.mask_layers``.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> cfg = hetpure.PurifyConfig(t_s=0.2, t_l=0.4, tau=0.5, ddim_steps=10, runs=2)
        >>> pur = hetpure.HeterogeneousPurifier(eps, clf, cfg)
        >>> x = torch.rand(2, 1, 28, 28)  # images in [0, 1]
        >>> m = pur.mask(x)  # 1 = attended pixel, noised to t_l
        >>> tuple(m.shape), tuple(pur.purify(x, mask=m).shape), tuple(pur.predict(x).shape)
        ((2, 1, 28, 28), (2, 1, 28, 28), (2,))
    """

    def __init__(
        self,
        eps_model: EpsModel,
        classifier: nn.Module,
        config: PurifyConfig | None = None,
        mask_layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(eps_model, classifier, config)
        layers = mask_layers if mask_layers is not None else getattr(classifier, "mask_layers", None)
        if layers is None and self.config.mask_source in ("energy", "gradcam", "random"):
            raise InputError(
                "name the classifier layers for the mask: mask_layers=[...] (e.g. the last block of each stage), "
                "or give the classifier a mask_layers attribute"
            )
        self.mask_layers = list(layers or [])

    def attention(self, x: Tensor) -> Tensor:
        """The normalised attention map E (B, 1, H, W) in [0, 1] (``mask_source`` 'energy' or 'gradcam')."""
        check_images(x)
        if self.config.mask_source == "gradcam":
            return gradcam_map(self.classifier, x, self.mask_layers)
        return energy_map(self.classifier, x, self.mask_layers)

    def mask(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Binary mask (B, 1, H, W) in {0, 1}; 1 = attended pixel (high noise t_l)."""
        source = self.config.mask_source
        if source == "all":
            return torch.ones_like(x[:, :1])
        if source == "none":
            return torch.zeros_like(x[:, :1])
        m = binarize(self.attention(x), self.config.tau, self.config.top_p)  # Alg. 1, lines 1–2
        return random_mask_like(m, generator) if source == "random" else m

    def level_weights(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-pixel weight w ∈ [0, 1] (B, 1, H, W): start level t_s + (t_l − t_s)·w."""
        if self.config.levels == "graded" and self.config.mask_source in ("energy", "gradcam"):
            return graded_weights(self.attention(x), *self.config.graded_range())
        return self.mask(x, generator)

    def _levels(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        w = self.level_weights(x.detach(), generator) if mask is None else check_mask(mask, x)
        return self.config.t_s + (self.config.t_l - self.config.t_s) * w

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        cfg = self.config
        return sample_heterogeneous(
            self.eps_model, x0, levels, t_s=cfg.t_s, t_l=cfg.t_l, ddim_steps=ddim_steps,
            resample_steps=cfg.resample_steps, eta=cfg.eta, noise=noise, use_checkpoint=use_checkpoint,
            repaint_jumps=cfg.repaint_jumps,
        )


class UniformPurifier(Purifier):
    """Uniform-noise purification from t* (DiffPure-style), with DDIM or ancestral DDPM steps.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10, runs=2))
        >>> x = torch.rand(2, 1, 28, 28)  # images in [0, 1]
        >>> x_pure = pur.purify(x, noise=torch.zeros_like)  # no noise drawn: a deterministic run
        >>> bool((x_pure == pur.purify(x, noise=torch.zeros_like)).all())
        True
    """

    uniform = True

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        cfg = self.config
        return sample_uniform(
            self.eps_model, x0, t_star=cfg.t_star, ddim_steps=ddim_steps, eta=cfg.eta, sampler=cfg.sampler,
            noise=noise, use_checkpoint=use_checkpoint,
        )


class PurifiedClassifier(nn.Module):
    """x ↦ classifier(purify(x)): the defended model as one differentiable, stochastic ``nn.Module``.
    ``max_batch`` (None: no chunking) purifies larger inputs in chunks, in order; float16 is refused under grad.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10))
        >>> model = pur.as_module()  # a PurifiedClassifier
        >>> x = torch.rand(2, 1, 28, 28, requires_grad=True)
        >>> model(x).logsumexp(1).sum().backward()  # gradients flow through the purification
        >>> tuple(x.grad.shape)
        (2, 1, 28, 28)
    """

    def __init__(self, purifier: Purifier, ddim_steps: int | None = None, use_checkpoint: bool = False,
                 max_batch: int | None = None) -> None:
        super().__init__()
        self.purifier = purifier
        self.ddim_steps = ddim_steps
        self.use_checkpoint = use_checkpoint
        self.max_batch = max_batch
        self.generator: torch.Generator | None = None

    def eps_calls(self) -> int:
        return self.purifier.eps_calls(self.ddim_steps)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            check_gradient_precision((self.purifier.eps_model, self.purifier.classifier), "the defended model")
        generator = device_generator(self.generator, x.device)
        pure = [self.purifier.purify(part, generator=generator, ddim_steps=self.ddim_steps,
                                     use_checkpoint=self.use_checkpoint) for part in chunks(x, self.max_batch)]
        return _check_logits(self.purifier.classifier(pure[0] if len(pure) == 1 else torch.cat(pure)), x,
                             finite=False)
