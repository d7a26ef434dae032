"""The attention mask at its boundaries (Pei et al. 2025 eq. 5–6; docs/method.md §1), with no fixture files.

m = [E ≥ τ] keeps a pixel whose energy equals τ; after per-image min-max normalisation every image has
a pixel with E = 1, so τ = 1 keeps at least that pixel; top-p keeps a fixed count of the highest pixels.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hetpure.mask import binarize, energy_map, normalise_per_image


class Probe(nn.Module):
    """Two hooked layers at full resolution: ``a`` outputs x, ``b`` outputs 1 − x; the logits are a sum."""

    mask_layers = ["a", "b"]

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Identity()
        self.b = Complement()

    def forward(self, x: Tensor) -> Tensor:
        return (self.a(x) + self.b(x)).mean((2, 3))


class Complement(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 1 - x


def images(b: int = 3, size: int = 8, seed: int = 0) -> Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def minmax(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) for v in values]


def test_energy_map_is_the_max_of_normalised_channel_energies() -> None:
    """Eq. 5–6: E_k = Σ_c A_k², min-max normalised per image; E = max_k E_k (no resizing at full size)."""
    x = images(2, 4)
    e = energy_map(Probe(), x, Probe.mask_layers)
    assert e.shape == (2, 1, 4, 4)
    for i in range(2):
        pixels = [(r, c) for r in range(4) for c in range(4)]
        ea = minmax([sum(float(x[i, ch, r, c]) ** 2 for ch in range(3)) for r, c in pixels])
        eb = minmax([sum((1 - float(x[i, ch, r, c])) ** 2 for ch in range(3)) for r, c in pixels])
        for j, (r, c) in enumerate(pixels):
            assert float(e[i, 0, r, c]) == pytest.approx(max(ea[j], eb[j]), abs=1e-5)


def test_normalisation_is_per_image_and_a_constant_map_is_zero() -> None:
    maps = torch.stack([torch.full((1, 3, 3), 5.0), torch.arange(9.0).view(1, 3, 3) * 2 + 1])
    out = normalise_per_image(maps)
    assert torch.equal(out[0], torch.zeros(1, 3, 3))
    assert torch.allclose(out[1].flatten(), torch.arange(9.0) / 8)


@pytest.mark.parametrize("tau", [0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_exactly_tau_is_kept(tau: float, dtype: torch.dtype) -> None:
    """m = [E ≥ τ]: the pixel with E = τ is attended, the one just below is not."""
    at = torch.tensor(tau, dtype=dtype)
    below = float(torch.nextafter(at, torch.zeros_like(at)))  # the next representable value below τ
    e = torch.tensor([0.0, below, tau, 1.0], dtype=dtype).view(1, 1, 2, 2)
    assert binarize(e, tau=tau).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_tau_one_keeps_each_images_maximum() -> None:
    """After min-max normalisation each image's maximum is exactly 1, so τ = 1 gives no empty mask."""
    x = images(4, 8, seed=1)
    e = energy_map(Probe(), x, Probe.mask_layers)
    m = binarize(e, tau=1.0)
    flat_e, flat_m = e.flatten(1), m.flatten(1)
    assert (flat_m.sum(1) >= 1).all()
    assert (flat_m.gather(1, flat_e.argmax(1, keepdim=True)) == 1).all()
    assert (flat_e[flat_m.bool()] == 1).all()


def test_tau_zero_keeps_every_pixel() -> None:
    e = energy_map(Probe(), images(2, 8, seed=2), Probe.mask_layers)
    assert binarize(e, tau=0.0).eq(1).all()


# p·H·W on 8×8 images, integral or not: top-p keeps ⌈p·HW⌉ (docs/method.md §1); the case where rounding
# would differ is pinned below.
@pytest.mark.parametrize("p, count", [(1 / 64, 1), (0.15, 10), (0.25, 16), (0.5, 32), (0.995, 64), (1.0, 64)])
def test_top_p_keeps_the_highest_ceil_p_hw_pixels(p: float, count: int) -> None:
    """Top-p keeps ⌈p·H·W⌉ pixels per image (0.15·64 = 9.6 → 10), and they are the highest ones."""
    e = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # distinct values
    m = binarize(e, tau=0.9, top_p=p)
    flat_e, flat_m = e.flatten(1), m.flatten(1).bool()
    assert flat_m.sum(1).tolist() == [count] * 3
    for i in range(3):
        kept, dropped = flat_e[i][flat_m[i]], flat_e[i][~flat_m[i]]
        if dropped.numel():
            assert kept.min() > dropped.max()


def test_top_p_rounds_up_where_rounding_would_not() -> None:
    """⌈p·H·W⌉, not round(p·H·W): 0.99·64 = 63.36 keeps 64 pixels, 0.1·1000-style products stay exact."""
    e = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert int(binarize(e, tau=0.9, top_p=0.99).sum()) == 64
    assert int(binarize(e, tau=0.9, top_p=0.01).sum()) == 1  # 0.64 → 1
    wide = torch.rand(1, 1, 10, 100, generator=torch.Generator().manual_seed(5))
    assert int(binarize(wide, tau=0.9, top_p=0.1).sum()) == 100  # 0.1 · 1000 is 100.00000000000001 in floats


def test_top_p_takes_precedence_over_tau() -> None:
    e = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    assert int(binarize(e, tau=0.0, top_p=0.25).sum()) == 16
    assert int(binarize(e, tau=1.0, top_p=0.25).sum()) == 16
