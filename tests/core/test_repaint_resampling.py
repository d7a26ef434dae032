"""RePaint's resampling (Lugmayr et al. 2022, Alg. 1; ``defense.repaint_jumps`` > 1) with a non-empty mask,
against a hand-written loop on a short schedule (ᾱ and β only, ``conftest.abar``).

With an empty mask every pixel is reset to q(x_t | x_0) at each round trip, so nothing of an earlier round trip
survives and a wrong re-noising or a reset of the wrong pixels cannot show. With attended pixels (m = 1), which
keep their state across the round trips, every term of the loop does:

    r times: x ← m·x + (1 − m)·q(x_t | x_0); x ← DDIM(x, t → s); then, except after the last,
             x ← √(ᾱ_t/ᾱ_s)·x + √(1 − ᾱ_t/ᾱ_s)·z  (q(x_t | x_s))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from conftest import T, ToyEps, abar, close, rand, toy_eps
from torch import Tensor

from hetpure.sampling import sample_heterogeneous
from hetpure.schedule import NoiseSchedule


def ddim(x: Tensor, t: int, s: int) -> Tensor:
    e = toy_eps(x, t)
    return math.sqrt(abar(s)) * (x - math.sqrt(1 - abar(t)) * e) / math.sqrt(abar(t)) + math.sqrt(1 - abar(s)) * e


def hand_repaint(x0: Tensor, m: Tensor, ts: list[int], t_s: float, jumps: int, draw: Callable[[], Tensor]) -> Tensor:
    x = math.sqrt(abar(ts[0])) * x0 + math.sqrt(1 - abar(ts[0])) * draw()
    for t, s in zip(ts[:-1], ts[1:]):
        if s < t_s * T:  # stage 2: plain DDIM
            x = ddim(x, t, s)
            continue
        ratio = abar(t) / abar(s)
        for j in range(jumps):
            x = m * x + (1 - m) * (math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)) * draw())
            x = ddim(x, t, s)
            if j < jumps - 1:
                x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * draw()
    return x


@pytest.mark.parametrize("jumps", [2, 3])
@pytest.mark.parametrize(("t_s", "t_l", "ts"), [(0.1, 0.4, [8, 6, 4, 2, 0]), (0.2, 0.4, [8, 6, 4, 2, 0])])
def test_repaint_with_attended_pixels_equals_the_hand_loop(sched: NoiseSchedule, jumps: int, t_s: float, t_l: float,
                                                           ts: list[int]) -> None:
    shape = (2, 3, 4, 4)
    x0 = rand(*shape, seed=7).clamp(-1, 1)
    m = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(8)) > 0.5).to(torch.float64)
    assert 0 < float(m.mean()) < 1
    stage_one = sum(s >= t_s * T for s in ts[1:])
    n_draws = 1 + stage_one * (2 * jumps - 1)
    draws = [rand(*shape, seed=200 + k) for k in range(n_draws)]
    it = iter(draws)
    expected = hand_repaint(x0, m, ts, t_s, jumps, lambda: next(it))
    fed = iter(draws)
    used: list[int] = []

    def noise(like: Tensor) -> Tensor:
        used.append(1)
        return next(fed)

    out = sample_heterogeneous(ToyEps(sched), x0, t_s + (t_l - t_s) * m, t_s=t_s, t_l=t_l, ddim_steps=10,
                               resample_steps=0, repaint_jumps=jumps, noise=noise)
    assert len(used) == n_draws  # r resets and r − 1 re-noisings per stage-1 step, none for η = 0 DDIM
    assert close(out, expected, 1e-10)
