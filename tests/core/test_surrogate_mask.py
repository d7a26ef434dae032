"""The S = 10 attack surrogate of heterogeneous noise does not contain the mask (issue #32, item 1).

At t_s = 0.1, t_l = 0.2, T = 1000 the DDIM timesteps at S = 10 are 200, 100, 0 and the only stage-1 step is
200 → 100: its reset puts the unattended pixels back to q(x_200 | x_0), the level every pixel starts at. So
with zero noise every mask gives the same output; with random draws the mask only decides which of two
independent draws of q(x_200 | x_0) a pixel carries. At S = 100 the resets at t = 190 … 110 keep the
unattended pixels low, and the mask changes the output. Tiny random models, no files
(bench/surrogate_mask_check.py measures the same on CIFAR-10 with the shared models).
"""

from __future__ import annotations

import torch
from conftest import images

from hetpure import HeterogeneousPurifier, PurifyConfig
from hetpure.sampling import in_stage_one
from hetpure.schedule import ddim_timesteps

T_S, T_L, U = 0.1, 0.2, 3


def purifier(eps, clf, steps: int) -> HeterogeneousPurifier:
    return HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=T_S, t_l=T_L, tau=0.9, resample_steps=U, eta=0.0,
                                                        ddim_steps=steps))


def masks(x: torch.Tensor) -> dict[str, torch.Tensor]:
    half = torch.zeros_like(x[:, :1])
    half[..., : x.shape[-2] // 2, :] = 1  # a mask that is neither all-ones nor all-zeros
    return {"ones": torch.ones_like(half), "zeros": torch.zeros_like(half), "half": half}


def stage_one_steps(steps: int) -> list[tuple[int, int]]:
    ts = ddim_timesteps(1000, steps, T_L)
    return [(t, s) for t, s in zip(ts[:-1], ts[1:]) if in_stage_one(s, T_S, 1000)]


def test_the_surrogate_schedule_has_one_stage_one_step_from_the_top() -> None:
    assert ddim_timesteps(1000, 10, T_L) == [200, 100, 0]
    assert stage_one_steps(10) == [(200, 100)]  # starts at t_0 = 200 = t_l·T: the reset is to the start level
    assert stage_one_steps(100) == [(t, t - 10) for t in range(200, 100, -10)]


def test_zero_noise_mask_drops_out_at_s10_but_not_at_s100(eps, clf) -> None:
    x = images()
    with torch.no_grad():
        for steps, mask_matters in ((10, False), (100, True)):
            pur = purifier(eps, clf, steps)
            out = {name: pur.purify(x, mask=m, noise=torch.zeros_like) for name, m in masks(x).items()}
            if mask_matters:
                assert (out["ones"] - out["zeros"]).abs().max() > 1e-3, f"S = {steps}"
                assert (out["half"] - out["ones"]).abs().max() > 1e-3, f"S = {steps}"
            else:
                assert torch.equal(out["ones"], out["zeros"]), f"S = {steps}"
                assert torch.equal(out["half"], out["ones"]), f"S = {steps}"


def test_same_draws_at_s10_differ_only_by_which_draw_of_q_x200_a_pixel_carries(eps, clf) -> None:
    """With the same seeded draws the all-ones and all-zeros outputs differ (the unattended pixels carry the
    reset's draw, the attended ones the start's); when the reset's draw is the start's, they are equal."""
    x = images()
    pur = purifier(eps, clf, 10)

    def stream(tied: bool):
        gen, seen = torch.Generator().manual_seed(0), []

        def noise(like: torch.Tensor) -> torch.Tensor:
            z = seen[0] if tied and len(seen) == 1 else torch.randn(like.shape, generator=gen)
            seen.append(z)
            return z

        return noise

    with torch.no_grad():
        for tied in (False, True):
            ones = pur.purify(x, mask=masks(x)["ones"], noise=stream(tied))
            zeros = pur.purify(x, mask=masks(x)["zeros"], noise=stream(tied))
            assert torch.equal(ones, zeros) == tied, f"tied = {tied}"


def test_zero_noise_gradient_of_the_s10_surrogate_ignores_the_mask(eps, clf) -> None:
    x, y = images(), torch.tensor([1, 7])
    grads = {}
    for steps in (10, 100):
        pur = purifier(eps, clf, steps)
        for name, m in masks(x).items():
            xr = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(clf(pur.purify(xr, mask=m, noise=torch.zeros_like)), y)
            (grads[steps, name],) = torch.autograd.grad(loss, xr)
    assert torch.equal(grads[10, "ones"], grads[10, "zeros"]) and torch.equal(grads[10, "half"], grads[10, "ones"])
    assert not torch.allclose(grads[100, "ones"], grads[100, "zeros"])
