"""Training commands: ``hetpure train-diffusion`` (a diffusers DDPM, ε-prediction) and
``hetpure train-classifier`` (CIFAR ResNets, the MNIST CNN).

Both resume from their last checkpoint, show a progress bar and write a JSON training record.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, HetpureError
from .schedule import NoiseSchedule

_LOG_EVERY = 50  # training steps between loss-log flushes (each flush is one device-to-host copy)

# Architecture presets for UNet2DModel (block_out_channels, layers_per_block, attention level, groups).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "mnist-tiny": {"block_out_channels": (16, 32, 32), "layers_per_block": 1, "attention": 1, "norm_num_groups": 8},
    "tiny": {"block_out_channels": (32, 64, 128), "layers_per_block": 2, "attention": 1, "norm_num_groups": 32},
    "small": {"block_out_channels": (64, 128, 256), "layers_per_block": 2, "attention": 1, "norm_num_groups": 32},
    "ddpm-cifar10": {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2, "attention": 1,
                     "norm_num_groups": 32},
}


def build_unet(preset: str, image_size: int, channels: int, dropout: float = 0.1) -> nn.Module:
    """A diffusers ``UNet2DModel`` from a size preset (attention at one resolution level)."""
    from diffusers import UNet2DModel

    if preset not in UNET_PRESETS:
        raise ConfigError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    p = UNET_PRESETS[preset]
    levels = len(p["block_out_channels"])
    down = ["AttnDownBlock2D" if i == p["attention"] else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i == levels - 1 - p["attention"] else "UpBlock2D" for i in range(levels)]
    if image_size % 2 ** (levels - 1):
        raise ConfigError(f"image size {image_size} must be divisible by {2 ** (levels - 1)} for preset {preset!r}")
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=p["block_out_channels"], layers_per_block=p["layers_per_block"],
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=p["norm_num_groups"],
        dropout=dropout, attention_head_dim=8,
    )


def _lr_at(step: int, total: int, base: float, warmup: int, cosine: bool) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if not cosine:
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batches(images: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
    """Endless shuffled mini-batches from in-memory tensors."""
    while True:
        perm = torch.randperm(images.shape[0], generator=generator)
        for i in range(0, images.shape[0] - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield images[idx], labels[idx]


def _load_all(name: str, root: str | None, split: str, limit: int | None = None) -> tuple[Tensor, Tensor]:
    from tqdm.auto import tqdm

    from .data import load_dataset

    ds = load_dataset(name, root=root, split=split)
    n = len(ds) if limit is None else min(limit, len(ds))
    first = ds[0][0]
    images = torch.empty((n, *first.shape), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    for i in tqdm(range(n), desc=f"loading {name}/{split}", unit="img", leave=False, disable=n < 5000):
        img, label = ds[i][:2]
        images[i] = (img * 255).round().to(torch.uint8)
        labels[i] = int(label)
    return images, labels


def _augment(x: Tensor, flip: bool, crop: int, generator: torch.Generator) -> Tensor:
    if flip:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    if crop:
        h, w = x.shape[-2:]
        padded = F.pad(x, (crop, crop, crop, crop), mode="reflect")
        dy, dx = torch.randint(0, 2 * crop + 1, (2,), generator=generator).tolist()
        x = padded[..., dy : dy + h, dx : dx + w]
    return x


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusionTrainConfig:
    """Settings of ``hetpure train-diffusion``; ``t_max`` trains only timesteps t < t_max (in steps)."""

    data: str = "mnist5k"
    root: str | None = None
    split: str = "train"
    out: str = "runs/ddpm"
    preset: str = "tiny"
    init_from: str | None = None
    t_max: int = 1000
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 100
    ema_decay: float = 0.999
    flip: bool = False
    dropout: float = 0.1
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    num_timesteps: int = 1000
    limit: int | None = None

    def validate(self) -> None:
        if not 1 <= self.t_max <= self.num_timesteps:
            raise ConfigError(f"t_max must lie in [1, {self.num_timesteps}], got {self.t_max}")
        for key in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


def _save_diffusers(unet: nn.Module, folder: Path, cfg: DiffusionTrainConfig) -> None:
    """The model and its noise schedule as a diffusers folder (``UNet2DModel`` + ``DDPMScheduler`` configs)."""
    from diffusers import DDPMScheduler

    unet.save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=cfg.num_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                  beta_schedule="linear", prediction_type="epsilon", variance_type="fixed_small",
                  clip_sample=True).save_config(folder)


def train_diffusion(cfg: DiffusionTrainConfig) -> Path:
    """Train (or continue) a DDPM; writes the EMA model in diffusers format to ``cfg.out``.

    Objective (DDPM eq. 14): E_{t<t_max, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖².
    ``out/resume.pt`` (weights, EMA, optimizer, step; readable with ``weights_only=True``) lets a killed run
    continue; ``out/checkpoints/step-N`` are periodic EMA snapshots in diffusers format.
    """
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    images, labels = _load_all(cfg.data, cfg.root, cfg.split, cfg.limit)
    channels, size = images.shape[1], images.shape[-1]
    if cfg.init_from:
        src = Path(cfg.init_from)
        if not (src / "config.json").exists():
            raise HetpureError(f"--init-from {src} is not a diffusers model folder (no config.json)")
        from .models.diffusers_eps import _low_memory_kwargs

        unet = UNet2DModel.from_pretrained(str(src), **_low_memory_kwargs())
        if unet.config.in_channels != channels or unet.config.sample_size != size:
            raise HetpureError(
                f"--init-from model takes {unet.config.in_channels}x{unet.config.sample_size}² images but the data "
                f"are {channels}x{size}²"
            )
    else:
        unet = build_unet(cfg.preset, size, channels, cfg.dropout)
    unet.to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)  # the EMA weights are copied in here to be saved
    # diffusers' EMAModel: a copy of the weights during warm-up, then decay (1 + s)/(10 + s) capped at ema_decay
    averager = EMAModel(unet.parameters(), decay=cfg.ema_decay, update_after_step=cfg.warmup)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, seconds = 0, 0.0
    resume = out / "resume.pt"
    if resume.exists():
        state = torch.load(resume, map_location=device, weights_only=True)
        if state.get("config_hash") != _cfg_hash(cfg):
            raise HetpureError(f"{resume} was written with other settings; use another --out or delete it")
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        if "averager" in state:
            averager.load_state_dict(state["averager"])
        opt.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
        print(f"resuming from step {step}")
    schedule = NoiseSchedule.linear(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
    alpha_bars = torch.tensor([schedule.alpha_bar(t) for t in range(cfg.num_timesteps)], dtype=torch.float32,
                              device=device)  # on the device once, not copied every step
    gen = torch.Generator().manual_seed(cfg.seed + step)
    batches = _batches(images, labels, cfg.batch_size, gen)
    log = out / "train_log.csv"
    if not log.exists():
        log.write_text("step,seconds,loss\n")
    bar = tqdm(total=cfg.steps, initial=step, desc="train-diffusion", unit="step")
    running: float | None = None
    pending: list[tuple[int, float, Tensor]] = []  # (step, seconds, loss on the device) not yet logged

    def flush_log() -> None:
        """Write the pending steps' losses with one device-to-host copy (not two syncs per step)."""
        nonlocal running
        if not pending:
            return
        values = torch.stack([loss for _, _, loss in pending]).tolist()
        with open(log, "a") as fh:
            for (at, secs, _), value in zip(pending, values):
                running = value if running is None else 0.98 * running + 0.02 * value
                fh.write(f"{at},{secs:.1f},{value:.5f}\n")
        bar.set_postfix(loss=f"{running:.4f}")
        pending.clear()

    while step < cfg.steps:
        start = time.perf_counter()
        x, _ = next(batches)
        x0 = _augment(x.float() / 255, cfg.flip, 0, gen).to(device) * 2 - 1
        t = torch.randint(0, cfg.t_max, (x0.shape[0],), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alpha_bars[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cosine=False)
        loss = F.mse_loss(unet(x_t, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        averager.step(unet.parameters())
        step += 1
        seconds += time.perf_counter() - start
        pending.append((step, seconds, loss.detach()))
        bar.update(1)
        if step % _LOG_EVERY == 0:
            flush_log()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            flush_log()
            averager.copy_to(ema.parameters())
            _save_diffusers(ema, out / "checkpoints" / f"step-{step}", cfg)
            _save_diffusers(ema, out, cfg)
            tmp = out / "resume.pt.tmp"
            torch.save({"model": unet.state_dict(), "ema": ema.state_dict(), "averager": averager.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step, "seconds": seconds, "config_hash": _cfg_hash(cfg)}, tmp)
            tmp.replace(resume)
            _write_json(out / "training.json", {
                "steps": step, "seconds": round(seconds, 1), "images_seen": step * cfg.batch_size,
                "final_loss_ema": running, "config": asdict(cfg),
                "parameters": sum(p.numel() for p in unet.parameters()),
                "t_range": [0, cfg.t_max], "prediction": "epsilon", "weights": "EMA",
            })
    flush_log()
    bar.close()
    print(f"EMA model in diffusers format: {out} (load with hetpure.DiffusersEps.from_pretrained)")
    return out


def _cfg_hash(cfg: Any) -> str:
    import hashlib

    d = {k: v for k, v in asdict(cfg).items() if k not in ("steps", "checkpoint_every", "device")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------------


@dataclass
class ClassifierTrainConfig:
    """Settings of ``hetpure train-classifier``."""

    model: str = "mnist_cnn"
    data: str = "mnist5k"
    root: str | None = None
    out: str = "runs/classifier"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 0
    flip: bool = False
    crop: int = 0
    seed: int = 0
    device: str = "cpu"
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, images.shape[0], 256):
            x = images[i : i + 256].float().div(255).to(device)
            correct += int((model(x).argmax(1).cpu() == labels[i : i + 256]).sum())
    return correct / max(1, images.shape[0])


def train_classifier(cfg: ClassifierTrainConfig) -> dict[str, Any]:
    """Train a registered classifier; writes ``model.safetensors`` + ``config.json`` (with test accuracy)."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from .models.registry import load_classifier

    if cfg.optimizer not in ("sgd", "adam"):
        raise ConfigError(f"optimizer must be sgd or adam, got {cfg.optimizer!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_x, train_y = _load_all(cfg.data, cfg.root, "train", cfg.limit)
    test_x, test_y = _load_all(cfg.data, cfg.root, "test")
    model = load_classifier(cfg.model, **cfg.options).to(device)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, train_x.shape[0] // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    state_file = out / "resume.safetensors"
    epoch = 0
    if state_file.exists() and (out / "progress.json").exists():
        model.load_state_dict(load_file(state_file))
        epoch = int(json.loads((out / "progress.json").read_text())["epoch"])
        print(f"resuming after epoch {epoch} (optimizer momentum restarts)")
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for ep in range(epoch, cfg.epochs):
        model.train()
        gen.manual_seed(cfg.seed * 1000 + ep)
        perm = torch.randperm(train_x.shape[0], generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {ep + 1}/{cfg.epochs}", unit="step", leave=False)
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = _augment(train_x[idx].float() / 255, cfg.flip, cfg.crop, gen).to(device)
            step = ep * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg.lr, cfg.warmup, cosine=True)
            loss = F.cross_entropy(model(x), train_y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i % _LOG_EVERY == 0 or i == steps_per_epoch - 1:  # a host sync only every _LOG_EVERY steps
                bar.set_postfix(loss=f"{loss.item():.3f}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(state_file))
        _write_json(out / "progress.json", {"epoch": ep + 1})
        print(f"epoch {ep + 1}: test accuracy {_accuracy(model, test_x, test_y, device):.4f}")
    accuracy = _accuracy(model, test_x, test_y, device)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    record = {"model": cfg.model, "test_accuracy": accuracy, "test_n": int(test_x.shape[0]),
              "seconds": round(time.perf_counter() - start, 1), "config": asdict(cfg)}
    _write_json(out / "config.json", record)
    print(f"test accuracy {accuracy:.4f}; weights: {out / 'model.safetensors'}")
    return record
