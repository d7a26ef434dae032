"""The reverse-chain observer of the samplers (``hetpure.sampling.tracing``): it sees every reverse state with its
timestep and ᾱ, the states carry the sampler's graph, and tracing changes no number of any purifier."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyClassifier, images

import hetpure
from hetpure import PurifyConfig
from hetpure.errors import ConfigError
from hetpure.gdmp import GDMPPurifier
from hetpure.models.base import EpsModel
from hetpure.sampling import ReverseState, sample_uniform, tracing
from hetpure.schedule import NoiseSchedule
from hetpure.sde import VPSDE, DiffPurePurifier


class ScaleEps(EpsModel):
    """ε(x, t) = 0.2·x: a cheap ε-model with a gradient."""

    def __init__(self) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=3)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.2 * x_t


def purifiers() -> dict[str, hetpure.Purifier]:
    eps, clf = ScaleEps(), TinyClassifier()
    return {
        "heterogeneous": hetpure.HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.1, t_l=0.2, tau=0.5,
                                                                               ddim_steps=20)),
        "uniform-ddim": hetpure.UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=20)),
        "uniform-ddpm": hetpure.UniformPurifier(eps, clf, PurifyConfig(t_star=0.005, sampler="ddpm")),
        "diffpure": DiffPurePurifier(eps, clf, PurifyConfig(t_star=0.05, sde_steps=4)),
        "gdmp": GDMPPurifier(eps, clf, PurifyConfig(t_star=0.004, gdmp_iterations=2)),
    }


# (method, expected (t, ᾱ_t) of the traced states): DDIM S = 20 from t_l = 0.2 is 200 → 150 → 100 → 50 → 0;
# DDPM from ⌊0.005·T⌋ = 5 is 4 → 3 → … → −1; GDMP 2 iterations of 3 → 2 → 1 → 0 → −1.
SCHEDULE = NoiseSchedule.linear()
STEPS = {
    "heterogeneous": [150, 100, 50, 0],
    "uniform-ddim": [150, 100, 50, 0],
    "uniform-ddpm": [3, 2, 1, 0, -1],
    "gdmp": [2, 1, 0, -1] * 2,
}


@pytest.mark.parametrize("method", list(purifiers()))
def test_tracing_sees_every_reverse_state_and_changes_no_number(method: str) -> None:
    pur = purifiers()[method]
    x = images(2)
    plain = pur.purify(x, generator=torch.Generator().manual_seed(0))
    states: list[ReverseState] = []
    with tracing(states.append):
        traced = pur.purify(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, traced)
    if method == "diffpure":  # n = 50: from 50/1000 in 4 Euler–Maruyama steps of h = (0.05 − 1e-5)/4
        h = (0.05 - 1e-5) / 4
        expected = [0.05 - (k + 1) * h for k in range(4)]
        assert [s.t for s in states] == pytest.approx(expected)
        assert [s.alpha_bar for s in states] == pytest.approx([VPSDE().alpha_bar(t) for t in expected])
    else:
        assert [s.t for s in states] == STEPS[method]
        assert [s.alpha_bar for s in states] == [SCHEDULE.alpha_bar(t) for t in STEPS[method]]
    assert all(s.x.shape == x.shape for s in states)
    assert all(torch.equal(s.x0, x * 2 - 1) for s in states)  # the chain's input on the diffusion scale
    # the last traced state is the sampler's output: purify maps it back to [0, 1]
    assert torch.equal(((states[-1].x + 1) / 2).clamp(0, 1), traced)


def test_traced_states_carry_the_graph_and_checkpointing_changes_nothing() -> None:
    pur = purifiers()["uniform-ddim"]
    x = images(2)
    grads = []
    for checkpointed in (False, True):
        xr = x.clone().requires_grad_(True)
        states: list[ReverseState] = []
        with tracing(states.append):
            pur.purify(xr, generator=torch.Generator().manual_seed(1), use_checkpoint=checkpointed)
        (g,) = torch.autograd.grad(states[1].x.square().sum(), xr)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_an_explicit_trace_wins_and_no_block_means_no_observer() -> None:
    eps, x0 = ScaleEps(), images(1) * 2 - 1
    outer: list[ReverseState] = []
    inner: list[ReverseState] = []
    with tracing(outer.append):
        sample_uniform(eps, x0, t_star=0.2, ddim_steps=10, noise=torch.zeros_like, trace=inner.append)
    assert len(inner) == 2 and outer == []
    sample_uniform(eps, x0, t_star=0.2, ddim_steps=10, noise=torch.zeros_like)  # nothing observes it


def test_the_adjoint_solve_refuses_an_observer() -> None:
    pytest.importorskip("torchsde")
    pur = purifiers()["diffpure"]
    module = pur.adjoint_module()
    with tracing(lambda state: None), pytest.raises(ConfigError, match="attack.gradient=exact"):
        module(images(1).requires_grad_(True))
