"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"), re-implemented for hetpure.

The module tree reproduces the parameter names of OpenAI's guided-diffusion ``UNetModel`` so that its
released checkpoints (e.g. ``256x256_diffusion_uncond.pt``) load with ``strict=True``:

* ``time_embed.{0,2}``: the timestep MLP (sinusoidal embedding of width C → 4C → 4C);
* ``input_blocks.i``: ``.0`` the stem conv (i = 0) or a residual block, ``.1`` an attention block on the
  levels listed in ``attention_ds``; resampling blocks (i at the end of a level) hold one residual block
  that halves the resolution;
* ``middle_block.{0,1,2}``: residual block, attention, residual block;
* ``output_blocks.i``: residual block on the concatenated skip, optional attention, and (last block of a
  level) an upsampling residual block;
* ``out.{0,2}``: GroupNorm and the final 3×3 conv to ``out_channels`` (6 when ``learn_sigma``: ε and the
  variance interpolation values v).

Forward conventions: ``x`` on the diffusion scale, ``t`` a float tensor (B,) of timestep indices (real
values are fine). Sizes must be divisible by 2^(levels − 1). Everything is written so that inference under
``torch.no_grad()`` keeps only the skip activations the UNet needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, HetpureError
from ..schedule import NoiseSchedule, cosine_betas
from ._layers import Float32GroupNorm, param_dtype
from .base import EpsModel

#: The guided-diffusion flags of OpenAI's ``256x256_diffusion_uncond.pt`` (guided-diffusion defaults
#: updated with DiffPure's / Purification's ``imagenet.yml``); the default of :meth:`AdmConfig.from_flags`.
ADM256_UNCOND_FLAGS: dict[str, Any] = {
    "image_size": 256,
    "num_channels": 256,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": 64,
    "attention_resolutions": "32,16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": True,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "1000",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": True,
    "rescale_learned_sigmas": False,
}

# guided-diffusion's channel multipliers when the "channel_mult" flag is empty.
_DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _parse_int_list(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int):
        parts = [value]
    else:
        raise ConfigError(f"ADM flag {name!r} must be a comma-separated string or a list, got {value!r}")
    try:
        return tuple(int(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"ADM flag {name!r} must hold integers, got {value!r}") from exc


@dataclass(frozen=True)
class AdmConfig:
    """Architecture (and training-schedule) settings of an ADM UNet.

    Build it from guided-diffusion's command-line flags with :meth:`from_flags`; the fields are the
    resolved values (``attention_ds`` are downsampling factors, ``channel_mult`` is explicit).
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    dropout: float = 0.0
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    conv_resample: bool = True
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    flags: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any] | None = None) -> AdmConfig:
        """Resolve guided-diffusion flags (``create_model_and_diffusion`` keywords) into a config.

        ``flags`` is merged over :data:`ADM256_UNCOND_FLAGS`, so ``None`` gives the 256×256 unconditional
        model and a partial dict changes only what it names. A dict with a ``model`` section (a whole
        DiffPure/Purification ``imagenet.yml``) uses that section.
        """
        given = dict(flags or {})
        if isinstance(given.get("model"), Mapping):
            given = dict(given["model"])
        unknown = sorted(set(given) - set(ADM256_UNCOND_FLAGS))
        if unknown:
            raise ConfigError(
                f"unknown ADM config keys {unknown}; use guided-diffusion's flag names: "
                f"{', '.join(sorted(ADM256_UNCOND_FLAGS))}"
            )
        f = {**ADM256_UNCOND_FLAGS, **given}
        if f["class_cond"]:
            raise ConfigError(
                "class_cond=True (a class-conditional ADM) is not supported: hetpure's ε-model takes no "
                "labels. Use the unconditional checkpoint (e.g. 256x256_diffusion_uncond.pt)"
            )
        if f["predict_xstart"]:
            raise ConfigError("predict_xstart=True models predict x_0, not ε; hetpure needs an ε-model")
        size = int(f["image_size"])
        if f["channel_mult"] in ("", None, [], ()):
            if size not in _DEFAULT_CHANNEL_MULT:
                raise ConfigError(
                    f"no default channel_mult for image_size {size}; set channel_mult, e.g. '1,1,2,2,4,4'"
                )
            mult: tuple[float, ...] = _DEFAULT_CHANNEL_MULT[size]
        elif isinstance(f["channel_mult"], str):
            try:
                mult = tuple(float(m) for m in f["channel_mult"].split(","))
            except ValueError as exc:
                raise ConfigError(f"channel_mult must be like '1,1,2,2', got {f['channel_mult']!r}") from exc
        else:
            mult = tuple(float(m) for m in f["channel_mult"])
        resolutions = _parse_int_list(f["attention_resolutions"], "attention_resolutions")
        for r in resolutions:
            if r <= 0 or size % r:
                raise ConfigError(f"attention resolution {r} does not divide image_size {size}")
        heads = int(f["num_heads"])
        heads_up = int(f["num_heads_upsample"])
        cfg = cls(
            image_size=size,
            in_channels=3,
            model_channels=int(f["num_channels"]),
            out_channels=6 if f["learn_sigma"] else 3,
            num_res_blocks=int(f["num_res_blocks"]),
            attention_ds=tuple(size // r for r in resolutions),
            channel_mult=mult,
            dropout=float(f["dropout"]),
            num_heads=heads,
            num_head_channels=int(f["num_head_channels"]),
            num_heads_upsample=heads if heads_up == -1 else heads_up,
            use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
            resblock_updown=bool(f["resblock_updown"]),
            use_new_attention_order=bool(f["use_new_attention_order"]),
            diffusion_steps=int(f["diffusion_steps"]),
            noise_schedule=str(f["noise_schedule"]),
            flags=f,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings the network cannot be built with."""
        widths = {self.model_channels} | {int(m * self.model_channels) for m in self.channel_mult}
        bad = sorted(w for w in widths if w <= 0 or w % 32)
        if bad:
            raise ConfigError(
                f"ADM widths {bad} are not multiples of 32 (GroupNorm uses 32 groups); change num_channels "
                "or channel_mult"
            )
        if self.num_head_channels != -1:
            for w in widths:
                if w % self.num_head_channels:
                    raise ConfigError(
                        f"width {w} is not divisible by num_head_channels={self.num_head_channels}"
                    )
        if self.num_res_blocks < 1:
            raise ConfigError("num_res_blocks must be >= 1")
        if self.noise_schedule not in ("linear", "cosine"):
            raise ConfigError(f"unknown noise_schedule {self.noise_schedule!r}; use 'linear' or 'cosine'")

    @property
    def downsample_factor(self) -> int:
        """Image sides must be divisible by this (2^(levels − 1))."""
        return 2 ** (len(self.channel_mult) - 1)

    def schedule(self) -> NoiseSchedule:
        """The training β schedule (guided-diffusion's ``get_named_beta_schedule``)."""
        n = self.diffusion_steps
        if self.noise_schedule == "linear":
            scale = 1000.0 / n
            return NoiseSchedule.linear(n, scale * 1e-4, scale * 2e-2)
        return NoiseSchedule.from_betas(cosine_betas(n, s=0.008, max_beta=0.999))


def adm_timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """ADM's sinusoidal embedding in float32: ``[cos(t·f_k), sin(t·f_k)]``, f_k = max_period^(−k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> Float32GroupNorm:
    return Float32GroupNorm(32, channels, eps=1e-5)


class AdmDownsample(nn.Module):
    """Halve the resolution: stride-2 conv ``op`` (with ``use_conv``) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ConfigError("pooling downsampling cannot change the channel count")

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x) if self.use_conv else F.avg_pool2d(x, kernel_size=2, stride=2)


class AdmUpsample(nn.Module):
    """Double the resolution with nearest-neighbour interpolation, then a 3×3 ``conv`` if ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        elif out_channels != channels:
            raise ConfigError("nearest upsampling cannot change the channel count")

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class AdmResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    h = conv(SiLU(GN(x))) [resampled between the activation and the conv], then
    h = GN(h)·(1 + scale) + shift (scale-shift norm) or GN(h + emb), then SiLU, dropout, conv;
    output = skip(x) + h with skip a 1×1 conv when the channel count changes.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = "up" if up else ("down" if down else None)
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(self._resample(act_in(norm_in(x))))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, act_out, drop, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, norm_out(h), 1 + scale)
        else:
            h = norm_out(h + e)
        h = conv_out(drop(act_out(h)))
        return self.skip_connection(x) + h


class AdmAttention(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection.

    ``qkv`` (Conv1d C → 3C) is split per head as guided-diffusion's "legacy" order does: for head j the
    channels [3cj, 3cj + c) are q, then k, then v (c the head width). With ``new_order`` q, k and v are the
    three thirds of the channels, each split into heads. Softmax(q·k/√c) v per head, then ``proj_out``.
    """

    def __init__(
        self, channels: int, num_heads: int, num_head_channels: int = -1, new_order: bool = False
    ) -> None:
        super().__init__()
        if num_head_channels != -1:
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ConfigError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.channels, self.num_heads, self.new_order = channels, num_heads, new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(flat))
        heads, width = self.num_heads, c // self.num_heads
        # One copy into channel-last (B, heads, L, ·) layout, contiguous in the head width as fused
        # attention kernels want; then softmax(q·kᵀ/√width)·v per head.
        if self.new_order:
            tokens = qkv.reshape(b, 3, heads, width, -1).permute(0, 2, 4, 1, 3).reshape(b, heads, -1, 3 * width)
        else:
            tokens = qkv.reshape(b, heads, 3 * width, -1).transpose(-1, -2).contiguous()
        q, k, v = tokens.split(width, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hgt, wid)


class AdmSequential(nn.Sequential):
    """A block of layers where residual blocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, AdmResBlock) else layer(x)
        return x


class AdmUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2-D, unconditional), built from an :class:`AdmConfig`."""

    def __init__(self, config: AdmConfig | None = None) -> None:
        super().__init__()
        cfg = config or AdmConfig()
        cfg.validate()
        self.config = cfg
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int, **kw: bool) -> AdmResBlock:
            return AdmResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, **kw)

        def attn(ch_: int, heads: int) -> AdmAttention:
            return AdmAttention(ch_, heads, cfg.num_head_channels, cfg.use_new_attention_order)

        ch = int(cfg.channel_mult[0] * mc)
        stem_ch = ch
        self.input_blocks = nn.ModuleList([AdmSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        last_level = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(AdmSequential(*layers))
                skip_channels.append(ch)
            if level != last_level:
                down: nn.Module = (
                    res(ch, ch, down=True) if cfg.resblock_updown else AdmDownsample(ch, cfg.conv_resample)
                )
                self.input_blocks.append(AdmSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = AdmSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads_upsample))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if cfg.resblock_updown else AdmUpsample(ch, cfg.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(AdmSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(stem_ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Network output (B, out_channels, H, W) for inputs ``x`` (B, C, H, W) and timesteps ``t`` (B,)."""
        dtype = param_dtype(self)
        emb = self.time_embed(adm_timestep_embedding(t, self.config.model_channels).to(dtype))
        h = x.to(dtype)
        skips: list[Tensor] = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class AdmEps(EpsModel):
    """ε-model adapter for an :class:`AdmUNet` (e.g. OpenAI's ``256x256_diffusion_uncond.pt``).

    ``predict_eps(x_t, t)`` feeds the timestep indices unchanged (with ``timestep_respacing`` "1000" and
    ``rescale_timesteps`` the network sees t·1000/1000 = t) and returns the first ``in_channels`` output
    channels: with ``learn_sigma`` the network's 6 channels are ε (0–2) and the variance interpolation
    values v (3–5), which hetpure's DDIM/DDPM steps do not use.

    Inputs are cast to the network's dtype (float16/bfloat16 networks run in that precision, GroupNorm in
    float32); the result is float32 (float64 for float64 inputs).

    Attributes:
        net: the wrapped network.
        loaded_weights: which weights were loaded (``"state_dict"``, ``"ema"``, ``"model"``, or ``None`` for
            random initialisation); set by :func:`hetpure.load_eps_model`.
        weights_source: the checkpoint path, when loaded from a file.

    Example:
        >>> import torch, hetpure
        >>> tiny = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "num_head_channels": 8,
        ...         "attention_resolutions": "8", "channel_mult": "1,1"}  # guided-diffusion flags
        >>> eps = hetpure.models.build_eps_model("adm", tiny)  # random weights
        >>> type(eps).__name__, tuple(eps(torch.randn(1, 3, 16, 16), 100).shape)
        ('AdmEps', (1, 3, 16, 16))
        >>> eps = hetpure.load_eps_model("adm", "256x256_diffusion_uncond.pt")  # doctest: +SKIP
    """

    def __init__(self, net: AdmUNet, schedule: NoiseSchedule | None = None) -> None:
        if not isinstance(net, AdmUNet):
            raise HetpureError(f"AdmEps wraps an AdmUNet, got {type(net).__name__}")
        cfg = net.config
        super().__init__(schedule or cfg.schedule(), cfg.in_channels, cfg.image_size)
        self.net = net
        self.loaded_weights: str | None = None
        self.weights_source: str | None = None

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        factor = self.net.config.downsample_factor
        if x_t.shape[-1] % factor or x_t.shape[-2] % factor:
            raise HetpureError(
                f"ADM inputs need sides divisible by {factor}, got {tuple(x_t.shape[-2:])}; resize to "
                f"{self.image_size}x{self.image_size} (the training size) first"
            )
        out = self.net(x_t.to(param_dtype(self.net)), t)
        return out[:, : self.in_channels].to(torch.promote_types(x_t.dtype, torch.float32))
