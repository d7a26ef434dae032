"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs"), re-implemented for hetpure.

Covers the configuration DiffPure uses for CIFAR-10 (``checkpoint_8.pth``, VP SDE, continuous training):
BigGAN-style residual blocks that resample by nearest-neighbour/average pooling, DDPM-style single-head
attention, positional (sinusoidal) time embedding, no progressive growing, no FIR filters. The module
tree reproduces score_sde's parameter names (``sigmas`` then ``all_modules.<i>``, in the same order) so
its checkpoints load with ``strict=True`` and its EMA ``shadow_params`` list can be matched by position.

Forward conventions: ``x`` (B, 3, H, W) on the diffusion scale ([-1, 1] data, ``centered: true``),
``labels`` a float tensor (B,) of continuous noise labels in [0, 999] (DiffPure: ``999·t`` for t ∈ [0, 1]).
With ``scale_by_sigma: false`` (the VP models) the output is the noise prediction ε.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, HetpureError
from ..schedule import NoiseSchedule
from ._layers import Float32GroupNorm, param_dtype
from .base import EpsModel

#: score_sde's ``cifar10.yml`` as used by DiffPure / Purification with ``checkpoint_8.pth``.
NCSNPP_CIFAR10_CONFIG: dict[str, Any] = {
    "data": {"dataset": "CIFAR10", "category": "cifar10", "image_size": 32, "num_channels": 3, "random_flip": True,
             "centered": True, "uniform_dequantization": False},
    "model": {
        "sigma_min": 0.01,
        "sigma_max": 50,
        "num_scales": 1000,
        "beta_min": 0.1,
        "beta_max": 20.0,
        "dropout": 0.1,
        "name": "ncsnpp",
        "scale_by_sigma": False,
        "ema_rate": 0.9999,
        "normalization": "GroupNorm",
        "nonlinearity": "swish",
        "nf": 128,
        "ch_mult": [1, 2, 2, 2],
        "num_res_blocks": 8,
        "attn_resolutions": [16],
        "resamp_with_conv": True,
        "conditional": True,
        "fir": False,
        "fir_kernel": [1, 3, 3, 1],
        "skip_rescale": True,
        "resblock_type": "biggan",
        "progressive": "none",
        "progressive_input": "none",
        "progressive_combine": "sum",
        "attention_type": "ddpm",
        "init_scale": 0.0,
        "embedding_type": "positional",
        "fourier_scale": 16,
        "conv_size": 3,
    },
    "training": {"sde": "vpsde", "continuous": True, "reduce_mean": True, "n_iters": 950001},
    "optim": {
        "weight_decay": 0,
        "optimizer": "Adam",
        "lr": 0.0002,
        "beta1": 0.9,
        "eps": 1e-08,
        "warmup": 5000,
        "grad_clip": 1.0,
    },
    "sampling": {
        "n_steps_each": 1,
        "noise_removal": True,
        "probability_flow": False,
        "snr": 0.16,
        "method": "pc",
        "predictor": "euler_maruyama",
        "corrector": "none",
    },
}

_ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU}

# (setting, required value, what the message calls it) for the branches this implementation leaves out.
_REQUIRED = [
    ("resblock_type", "biggan", "BigGAN residual blocks"),
    ("progressive", "none", "no progressive output"),
    ("progressive_input", "none", "no progressive input"),
    ("fir", False, "no FIR resampling"),
    ("embedding_type", "positional", "positional time embedding"),
    ("attention_type", "ddpm", "DDPM attention"),
    ("normalization", "GroupNorm", "GroupNorm"),
    ("conditional", True, "time conditioning"),
    ("conv_size", 3, "3x3 convolutions"),
]


@dataclass(frozen=True)
class NcsnppConfig:
    """The settings of an NCSN++ network, resolved from a score_sde config (see :meth:`from_dict`)."""

    image_size: int = 32
    num_channels: int = 3
    centered: bool = True
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    skip_rescale: bool = True
    nonlinearity: str = "swish"
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    sde: str = "vpsde"
    continuous: bool = True
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None = None) -> NcsnppConfig:
        """Resolve a score_sde config given as a nested dict (the layout of ``cifar10.yml``).

        Each section (``data``, ``model``, ``training``, …) is merged over :data:`NCSNPP_CIFAR10_CONFIG`,
        so ``None`` gives DiffPure's CIFAR-10 model and ``{"model": {"nf": 8, "num_res_blocks": 2}}``
        changes only those fields. A flat dict of model fields (one containing ``nf``) is read as the
        ``model`` section.
        """
        merged = copy.deepcopy(NCSNPP_CIFAR10_CONFIG)
        given = dict(config or {})
        if "nf" in given and "model" not in given:
            given = {"model": given}
        for section, values in given.items():
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"NCSN++ config section {section!r} must be a mapping (the nested layout of cifar10.yml)"
                )
            if section == "model":
                unknown = sorted(set(values) - set(merged["model"]))
                if unknown:
                    raise ConfigError(
                        f"unknown NCSN++ model keys {unknown}; use score_sde's names: "
                        f"{', '.join(sorted(merged['model']))}"
                    )
            merged.setdefault(section, {}).update(values)
        m, d, tr = merged["model"], merged["data"], merged["training"]
        if m.get("name", "ncsnpp") != "ncsnpp":
            raise ConfigError(f"model.name is {m['name']!r}; this loader builds 'ncsnpp' networks only")
        for key, want, what in _REQUIRED:
            if m[key] != want:
                raise ConfigError(
                    f"NCSN++ setting model.{key}={m[key]!r} is not supported (hetpure implements {what}, "
                    f"{key}={want!r}, the DiffPure CIFAR-10 configuration)"
                )
        if m["nonlinearity"] not in _ACTIVATIONS:
            raise ConfigError(
                f"unsupported nonlinearity {m['nonlinearity']!r}; use one of {sorted(_ACTIVATIONS)}"
            )
        cfg = cls(
            image_size=int(d["image_size"]),
            num_channels=int(d["num_channels"]),
            centered=bool(d["centered"]),
            nf=int(m["nf"]),
            ch_mult=tuple(int(c) for c in m["ch_mult"]),
            num_res_blocks=int(m["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in m["attn_resolutions"]),
            dropout=float(m["dropout"]),
            skip_rescale=bool(m["skip_rescale"]),
            nonlinearity=str(m["nonlinearity"]),
            scale_by_sigma=bool(m["scale_by_sigma"]),
            sigma_min=float(m["sigma_min"]),
            sigma_max=float(m["sigma_max"]),
            num_scales=int(m["num_scales"]),
            beta_min=float(m["beta_min"]),
            beta_max=float(m["beta_max"]),
            sde=str(tr.get("sde", "vpsde")),
            continuous=bool(tr.get("continuous", True)),
            raw=merged,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings the network cannot be built with."""
        if self.nf < 4 or any(c < 1 for c in self.ch_mult) or self.num_res_blocks < 1:
            raise ConfigError("NCSN++ needs nf >= 4, positive ch_mult entries and num_res_blocks >= 1")
        if self.image_size % self.downsample_factor:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2^(levels-1) = {self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Image sides must be divisible by this (2^(levels − 1))."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def all_resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    def sigmas(self) -> Tensor:
        """score_sde's ``get_sigmas``: geometric σ from sigma_max down to sigma_min (float64)."""
        logs = torch.linspace(
            math.log(self.sigma_max), math.log(self.sigma_min), self.num_scales, dtype=torch.float64, device="cpu"
        )
        return torch.exp(logs)

    def schedule(self) -> NoiseSchedule:
        """The VP SDE discretised with N = num_scales steps: β_i = linspace(β_min/N, β_max/N, N)[i]."""
        if self.sde != "vpsde":
            raise ConfigError(
                f"training.sde is {self.sde!r}: only VP-SDE NCSN++ models are ε-models; "
                "use a 'vpsde' checkpoint"
            )
        n = self.num_scales
        return NoiseSchedule.linear(n, self.beta_min / n, self.beta_max / n)


def ncsnpp_timestep_embedding(labels: Tensor, dim: int, max_positions: float = 10000.0) -> Tensor:
    """score_sde's sinusoidal embedding in float32: ``[sin(l·f_k), cos(l·f_k)]``.

    f_k = max_positions^(−k/(half − 1)) for k = 0 … half − 1 (note: half − 1, unlike ADM's half).
    """
    half = dim // 2
    step = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device) * -step)
    args = labels.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _group_norm(channels: int) -> Float32GroupNorm:
    # score_sde: min(C // 4, 32) groups, eps 1e-6, everywhere in NCSN++.
    return Float32GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


class NIN(nn.Module):
    """A per-pixel linear map ("network in network"): y[b, :, h, w] = x[b, :, h, w] @ W + b."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.W)

    def forward(self, x: Tensor) -> Tensor:
        """Apply to (B, C, H, W) feature maps."""
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)

    def tokens(self, x: Tensor) -> Tensor:
        """Apply to channel-last tokens (..., C_in) → (..., C_out)."""
        return torch.addmm(self.b, x.reshape(-1, x.shape[-1]), self.W).reshape(*x.shape[:-1], -1)


class NcsnppAttention(nn.Module):
    """Single-head self-attention over all pixels (NIN q/k/v/out projections), residual, optional 1/√2."""

    def __init__(self, channels: int, skip_rescale: bool) -> None:
        super().__init__()
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        # Channel-last tokens (B, 1, HW, C): contiguous in C, as fused attention kernels want.
        h = self.GroupNorm_0(x).reshape(b, 1, c, hgt * wid).transpose(-1, -2)
        q, k, v = self.NIN_0.tokens(h), self.NIN_1.tokens(h), self.NIN_2.tokens(h)
        a = self.NIN_3.tokens(F.scaled_dot_product_attention(q, k, v))  # softmax(q·kᵀ/√C)·v
        h = a.transpose(-1, -2).reshape(b, c, hgt, wid)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class NcsnppResBlock(nn.Module):
    """BigGAN-style residual block with time conditioning, optionally resampling (``up``/``down``).

    h = conv(act(GN(x))) [resampled between the activation and the conv]; h += Dense(act(temb));
    h = conv(dropout(act(GN(h)))); the skip is ``Conv_2`` (1×1) of the resampled x whenever the channel
    count changes or the block resamples; output (x + h)/√2 with ``skip_rescale``.
    """

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None,
        temb_dim: int,
        dropout: float,
        skip_rescale: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.in_ch, self.out_ch = in_ch, out_ch
        self.up, self.down, self.skip_rescale = up, down, skip_rescale
        self.act = act
        self.GroupNorm_0 = _group_norm(in_ch)
        self.Conv_0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.has_skip_conv = in_ch != out_ch or up or down
        if self.has_skip_conv:
            self.Conv_2 = nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.Conv_0(self._resample(self.act(self.GroupNorm_0(x))))
        x = self._resample(x)
        h = h + self.Dense_0(self.act(temb)).to(h.dtype)[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.has_skip_conv:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class NCSNpp(nn.Module):
    """score_sde's ``NCSNpp`` for the configuration in :class:`NcsnppConfig`.

    ``all_modules`` holds, in order: the two time-MLP Linears, the input conv, the down path (per level
    ``num_res_blocks`` residual blocks, each followed by attention on ``attn_resolutions`` levels, and a
    downsampling residual block except on the last level), the middle (block, attention, block), the up
    path (per level ``num_res_blocks + 1`` blocks on concatenated skips, one attention on attention
    levels, an upsampling block except on the first level) and the output GroupNorm and conv.
    """

    def __init__(self, config: NcsnppConfig | None = None) -> None:
        super().__init__()
        cfg = config or NcsnppConfig()
        cfg.validate()
        self.config = cfg
        self.act = _ACTIVATIONS[cfg.nonlinearity]()
        # Computed on the CPU, then moved to the device the module is being built on (e.g. "meta").
        self.register_buffer("sigmas", cfg.sigmas().to(torch.empty(0).device))
        nf = cfg.nf
        temb_dim = 4 * nf
        act = self.act
        attn_levels = [r in cfg.attn_resolutions for r in cfg.all_resolutions]
        last = len(cfg.ch_mult) - 1

        def block(in_ch: int, out_ch: int | None = None, **kw: bool) -> NcsnppResBlock:
            return NcsnppResBlock(act, in_ch, out_ch, temb_dim, cfg.dropout, cfg.skip_rescale, **kw)

        def attention(ch_: int) -> NcsnppAttention:
            return NcsnppAttention(ch_, cfg.skip_rescale)

        modules: list[nn.Module] = [nn.Linear(nf, temb_dim), nn.Linear(temb_dim, temb_dim)]
        modules.append(nn.Conv2d(cfg.num_channels, nf, 3, padding=1))
        skip_ch = [nf]
        ch = nf
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                modules.append(block(ch, nf * mult))
                ch = nf * mult
                if attn_levels[level]:
                    modules.append(attention(ch))
                skip_ch.append(ch)
            if level != last:
                modules.append(block(ch, down=True))
                skip_ch.append(ch)
        modules += [block(ch), attention(ch), block(ch)]
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                modules.append(block(ch + skip_ch.pop(), nf * cfg.ch_mult[level]))
                ch = nf * cfg.ch_mult[level]
            if attn_levels[level]:
                modules.append(attention(ch))
            if level != 0:
                modules.append(block(ch, up=True))
        modules += [_group_norm(ch), nn.Conv2d(ch, cfg.num_channels, 3, padding=1)]
        self.all_modules = nn.ModuleList(modules)
        self._attn_levels = attn_levels

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Network output (B, C, H, W) for ``x`` and continuous noise labels ``labels`` (B,) in [0, 999].

        Attention placement follows the level structure (the reference tests the runtime width, which is
        the same thing at the training resolution).
        """
        cfg = self.config
        mods = iter(self.all_modules)
        dtype = param_dtype(self)
        temb = next(mods)(ncsnpp_timestep_embedding(labels, cfg.nf).to(dtype))
        temb = next(mods)(self.act(temb))
        h = x.to(dtype)
        if not cfg.centered:
            h = 2 * h - 1.0
        skips = [next(mods)(h)]
        last = len(cfg.ch_mult) - 1
        for level in range(len(cfg.ch_mult)):
            for _ in range(cfg.num_res_blocks):
                h = next(mods)(skips[-1], temb)
                if self._attn_levels[level]:
                    h = next(mods)(h)
                skips.append(h)
            if level != last:
                skips.append(next(mods)(skips[-1], temb))
        h = skips[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, skips.pop()], dim=1), temb)
            if self._attn_levels[level]:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)
        h = self.act(next(mods)(h))
        h = next(mods)(h)
        if cfg.scale_by_sigma:
            idx = labels.long().clamp(0, self.sigmas.numel() - 1)
            h = h / self.sigmas[idx].to(h.dtype)[:, None, None, None]
        return h


class NcsnppEps(EpsModel):
    """ε-model adapter for a VP-SDE :class:`NCSNpp` (e.g. DiffPure's CIFAR-10 ``checkpoint_8.pth``).

    Time: the discrete index t ∈ [0, N) of the schedule β = linspace(β_min/N, β_max/N, N) (1e-4 … 2e-2
    for N = 1000) is the continuous time t_c = t/(N − 1) of the VP SDE, and the network's noise label is
    ``999·t_c`` (score_sde's and DiffPure's convention for continuous VP models; the index itself for
    discrete ones). For N = 1000 the label is t itself, exactly what Purification feeds.

    Output: with ``scale_by_sigma`` False the network output is ε itself, sign +1 and scale 1: DiffPure
    forms the score as ``-output / σ(t_c)``, and the score of x_t = √ᾱ x_0 + σ ε is −ε/σ.

    Inputs are cast to the network's dtype; the result is float32 (float64 for float64 inputs).

    Attributes:
        net: the wrapped network.
        loaded_weights: ``"ema"`` (score_sde EMA shadow parameters), ``"model"`` (the raw training weights
            of a score_sde checkpoint), ``"state_dict"`` (a plain state dict) or ``None`` (random init).
        weights_source: the checkpoint path, when loaded from a file.

    Example:
        >>> import torch, hetpure
        >>> tiny = {"data": {"image_size": 16}, "model": {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1,
        ...                                              "attn_resolutions": [8]}}  # score_sde's config layout
        >>> eps = hetpure.models.build_eps_model("ncsnpp", tiny)  # random weights
        >>> type(eps).__name__, tuple(eps(torch.randn(1, 3, 16, 16), 100).shape)
        ('NcsnppEps', (1, 3, 16, 16))
        >>> eps = hetpure.load_eps_model("ncsnpp", "checkpoint_8.pth")  # doctest: +SKIP
    """

    def __init__(self, net: NCSNpp, schedule: NoiseSchedule | None = None) -> None:
        if not isinstance(net, NCSNpp):
            raise HetpureError(f"NcsnppEps wraps an NCSNpp network, got {type(net).__name__}")
        cfg = net.config
        if cfg.scale_by_sigma:
            raise ConfigError(
                "this NCSN++ has scale_by_sigma=True: its output is a score (a VE/NCSN model), not ε; "
                "use a VP checkpoint (scale_by_sigma False, sde vpsde)"
            )
        if not cfg.centered:
            raise ConfigError(
                "this NCSN++ was trained on [0, 1] data (data.centered False); hetpure's diffusion scale is "
                "[-1, 1], so it cannot be used as an ε-model here"
            )
        super().__init__(schedule or cfg.schedule(), cfg.num_channels, cfg.image_size)
        self.net = net
        n = self.schedule.num_timesteps
        self.label_scale = 999.0 / (n - 1) if cfg.continuous else 1.0
        self.loaded_weights: str | None = None
        self.weights_source: str | None = None

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        factor = self.net.config.downsample_factor
        if x_t.shape[-1] % factor or x_t.shape[-2] % factor:
            raise HetpureError(
                f"NCSN++ inputs need sides divisible by {factor}, got {tuple(x_t.shape[-2:])}; use "
                f"{self.image_size}x{self.image_size} images (the training size)"
            )
        # the range of t is checked once per sampler call (hetpure.devices.check_timesteps), not here:
        # a check on the tensor would sync the device and break compiled graphs on every ε call
        labels = t * self.label_scale if self.label_scale != 1.0 else t
        out = self.net(x_t.to(param_dtype(self.net)), labels)
        return out.to(torch.promote_types(x_t.dtype, torch.float32))
