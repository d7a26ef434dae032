"""The purifiers (the public API on [0, 1] images): reproducibility, gradients, masks, votes and errors.

The samplers under them (Alg. 1 against a hand-written loop and the official implementation's golden file,
their special cases, ε-call counts and checkpointing) are tested in test_sampling.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TinyClassifier, images
from torch import nn

import hetpure
from hetpure import HeterogeneousPurifier, PurifyConfig, UniformPurifier
from hetpure.errors import ConfigError, HetpureError

ZEROS = torch.zeros_like


# --- reproducibility and gradients ----------------------------------------------------------------------


def test_identical_generators_identical_results(eps, clf) -> None:
    x = images()
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=50))
    with torch.no_grad():
        a = pur.purify(x, generator=torch.Generator().manual_seed(11))
        b = pur.purify(x, generator=torch.Generator().manual_seed(11))
        c = pur.purify(x, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1


def test_gradients_flow_through_as_module(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=20))
    x = images().requires_grad_(True)
    logits = pur.as_module()(x)
    assert logits.shape == (2, 10)
    (grad,) = torch.autograd.grad(logits.logsumexp(1).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- masks ----------------------------------------------------------------------------------------------


def test_mask_is_binary_and_top_p_counts(eps, clf) -> None:
    x = images(4)
    m = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.6)).mask(x)
    assert m.shape == (4, 1, 16, 16) and set(m.unique().tolist()) <= {0.0, 1.0}
    mp = HeterogeneousPurifier(eps, clf, PurifyConfig(top_p=0.15)).mask(x)
    assert mp.sum((1, 2, 3)).tolist() == [39] * 4  # ⌈0.15 · 256⌉ = ⌈38.4⌉


def test_energy_map_matches_hand_computation(clf) -> None:
    x = images(2)
    acts = {}
    h1 = clf.stage1.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = clf.stage2.register_forward_hook(lambda m, i, o: acts.__setitem__("b", o))
    with torch.no_grad():
        clf(x)
    h1.remove()
    h2.remove()
    maps = []
    for a in (acts["a"], acts["b"]):
        e = nn.functional.interpolate(a.pow(2).sum(1, keepdim=True), size=(16, 16), mode="bilinear")
        lo = e.amin((2, 3), keepdim=True)
        hi = e.amax((2, 3), keepdim=True)
        maps.append((e - lo) / (hi - lo))
    expected = torch.maximum(*maps)
    got = hetpure.energy_map(clf, x, clf.mask_layers)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.amax((1, 2, 3)).tolist() == [1.0, 1.0]


def test_hooks_are_removed_after_every_call(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=10))
    for _ in range(3):
        pur.mask(images())
        pur.predict(images(), runs=2)
    assert all(len(m._forward_hooks) == 0 for m in clf.modules())


def test_hooks_removed_even_when_forward_fails() -> None:
    class Broken(TinyClassifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.stage1(x)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError):
        hetpure.energy_map(model, images(), model.mask_layers)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# --- prediction -----------------------------------------------------------------------------------------


def test_majority_vote_ties_go_to_lowest_label() -> None:
    labels = torch.tensor([[3, 1], [1, 1], [3, 2], [1, 2]])  # (R=4, B=2)
    winner, counts = hetpure.majority_vote(labels, 5)
    assert winner.tolist() == [1, 1]
    assert counts[0].tolist() == [0, 2, 0, 2, 0]


def test_predict_batched_equals_loop_of_runs(eps, clf) -> None:
    """The batched ensemble (B·R in chunks) gives the same votes as R purifications one by one."""
    x = images(3)
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=10, runs=4, max_batch=5))
    with torch.no_grad():
        counts = pur.vote_counts(x, noise=ZEROS)
        one = clf(pur.purify(x, noise=ZEROS)).argmax(1)
    assert counts.sum(1).tolist() == [4, 4, 4]
    assert counts.argmax(1).tolist() == one.tolist()
    assert pur.predict(x, generator=torch.Generator().manual_seed(0)).dtype == torch.int64


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"t_s": 0.3, "t_l": 0.2}, "t_s <= t_l"),
        ({"tau": 1.5}, "tau"),
        ({"top_p": 0.0}, "top_p"),
        ({"ddim_steps": 2, "t_l": 0.2}, "empty schedule"),
        ({"t_l": 0.999, "resample_steps": 3, "ddim_steps": 1000}, "below T"),
        ({"levels": "smooth"}, "levels"),
    ],
)
def test_config_errors(eps, clf, kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words):
        HeterogeneousPurifier(eps, clf, PurifyConfig(**kwargs))


def test_uniform_needs_t_star(eps, clf) -> None:
    with pytest.raises(ConfigError, match="t_star"):
        UniformPurifier(eps, clf, PurifyConfig())


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.rand(3, 16, 16), "batch"),
        (torch.rand(1, 3, 16, 16) * 2, "outside \\[0, 1\\]"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
        (torch.rand(1, 1, 16, 16), "channels"),
        (torch.randint(0, 255, (1, 3, 16, 16)), "dtype"),
        (torch.rand(1, 3, 24, 24), "resize"),
    ],
)
def test_image_errors(eps, clf, x, words) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=10))
    with pytest.raises(HetpureError, match=words):
        pur.purify(x)


def test_resize_round_trip(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=10, tau=0.5, resize=True))
    with torch.no_grad():
        out = pur.purify(torch.rand(1, 3, 24, 24), noise=ZEROS)
    assert out.shape == (1, 3, 24, 24)


def test_missing_layer_named_in_error(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(), mask_layers=["stage3"])
    with pytest.raises(HetpureError, match="stage3"):
        pur.mask(images())


def test_classifier_that_returns_a_tuple_is_refused(eps) -> None:
    class TupleOut(TinyClassifier):
        def forward(self, x: torch.Tensor):  # type: ignore[override]
            return super().forward(x), None

    pur = HeterogeneousPurifier(eps, TupleOut(), PurifyConfig(ddim_steps=10, tau=0.5))
    with pytest.raises(HetpureError, match="logits"):
        pur.predict(images(), runs=1)
