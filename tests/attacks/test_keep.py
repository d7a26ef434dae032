"""``attack.keep`` (last, best, first_broken; hetpure.attacks.keep): the iterate each image keeps, the judge's calls
and the early stop, on models whose iterates and losses are known."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetpure.attacks import APGD, ATTACKS, PGD, DiffAttack, DiffHammer, attack_kwargs, rescore_summary
from hetpure.errors import ConfigError
from hetpure.evaluation.identity import KEEPING_ATTACKS


class Recording(nn.Module):
    """Logits (0, ⟨w, x⟩): the cross-entropy of class 0 is softplus(⟨w, x⟩), so PGD (no random start) moves every
    pixel by +α·sign(w) and its loss rises. Records every input it sees."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = w
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        s = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


class ScriptedJudge:
    """Says image b is wrong from its ``breaks[b]``-th call on (1-based; 0 = never); records what it was shown."""

    def __init__(self, breaks: list[int]) -> None:
        self.breaks, self.calls, self.shown = breaks, 0, []

    def __call__(self, x_adv: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        self.shown.append(x_adv.clone())
        return torch.tensor([b == 0 or self.calls < b for b in self.breaks])


def setup(b: int = 3) -> tuple[Recording, Tensor, Tensor]:
    w = torch.tensor([1.0, -1.0, 0.5, -0.5]).view(1, 1, 2, 2)
    return Recording(w), torch.full((b, 1, 2, 2), 0.5), torch.zeros(b, dtype=torch.long)


def iterate(k: int, x: Tensor, alpha: float, w: Tensor) -> Tensor:
    """PGD's k-th iterate on :class:`Recording` (ε large enough never to bind): x + k·α·sign(w)."""
    return x + k * alpha * w.sign()


def test_first_broken_keeps_the_first_iterate_the_judge_finds_wrong() -> None:
    """Every iterate judged (k = 1): image 0 breaks at the 2nd call (iterate 2), image 1 at the 4th (iterate 4),
    image 2 never (it keeps PGD's last iterate, 6)."""
    model, x, y = setup()
    attack = PGD(eps=0.4, steps=6, step_size=0.05, keep="first_broken")
    attack.judge = judge = ScriptedJudge([2, 4, 0])
    x_adv = attack(model, x, y)
    assert attack.broken_at.tolist() == [2, 4, -1]
    for b, k in enumerate((2, 4, 6)):
        assert torch.allclose(x_adv[b], iterate(k, x[b], 0.05, model.w[0]), atol=1e-6)
    assert judge.calls == attack.judge_calls == 6
    assert torch.equal(judge.shown[1][0], x_adv[0])  # what it was shown is what is kept


def test_first_broken_every_k_iterations_and_at_the_end() -> None:
    """k = 2 of 5 iterations: the judge sees iterates 2, 4 and the last, 5. Image 0, wrong from the 1st call, keeps
    iterate 2; image 1, wrong from the 3rd call, keeps the last iterate, judged because it is the last."""
    model, x, y = setup(2)
    attack = PGD(eps=0.4, steps=5, step_size=0.05, keep="first_broken", keep_every=2)
    attack.judge = judge = ScriptedJudge([1, 3])
    x_adv = attack(model, x, y)
    assert [torch.allclose(s[0], iterate(k, x[0], 0.05, model.w[0])) for s, k in zip(judge.shown, (2, 4, 5))] == [
        True] * 3
    assert attack.broken_at.tolist() == [2, 5]
    assert torch.allclose(x_adv[0], iterate(2, x[0], 0.05, model.w[0]), atol=1e-6)
    assert torch.allclose(x_adv[1], iterate(5, x[1], 0.05, model.w[0]), atol=1e-6)
    assert attack.judge_calls == 3


def test_first_broken_stops_once_every_image_is_broken() -> None:
    """Both images broken at the 2nd judged iterate: PGD stops after iteration 2 of 10, and its forward passes
    (2 iterations × EOT 3) say so."""
    model, x, y = setup(2)
    attack = PGD(eps=0.4, steps=10, step_size=0.05, eot=3, keep="first_broken")
    attack.judge = ScriptedJudge([2, 1])
    attack(model, x, y)
    assert attack.broken_at.tolist() == [2, 1]
    assert attack.forward_passes == attack.backward_passes == 6
    assert attack.judge_calls == 2


@pytest.mark.parametrize("attack", [
    PGD(keep="first_broken"), APGD(keep="first_broken"), DiffAttack(keep="first_broken"),
    DiffHammer(keep="first_broken"),
], ids=lambda a: a.name)
def test_first_broken_without_a_judge_is_a_clear_error(attack) -> None:
    model, x, y = setup(1)
    with pytest.raises(ConfigError, match="needs a judge"):
        attack(model, x, y)


def test_apgd_first_broken_judges_its_iterates() -> None:
    """APGD (no random start): the judge sees iterates x_1 … x_N, the points APGD evaluates after each step."""
    model, x, y = setup(1)
    attack = APGD(eps=0.2, steps=4, eot=1, random_start=False, keep="first_broken")
    attack.judge = judge = ScriptedJudge([3])
    x_adv = attack(model, x, y)
    assert [torch.equal(s, v) for s, v in zip(judge.shown, model.seen[1:])] == [True] * 3  # stopped at the 3rd
    assert torch.equal(x_adv, model.seen[3]) and attack.broken_at.tolist() == [3]


class Peak(nn.Module):
    """Logits (0, a − (Σx − c)²): the cross-entropy of class 0 is softplus(a − (Σx − c)²), highest where Σx = c;
    the prediction is wrong where |Σx − c| < √a."""

    def __init__(self, c: float, a: float = 0.0) -> None:
        super().__init__()
        self.c, self.a = c, a
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        s = self.a - (x.flatten(1).sum(1) - self.c) ** 2
        return torch.stack([torch.zeros_like(s), s], 1)


def test_pgd_best_keeps_the_highest_loss_iterate_including_the_last() -> None:
    """Four pixels at 0.5 (Σx = 2), c = 2.3: sign steps of 0.05 raise Σx by 0.2 per step, so Σx = 2, 2.2, 2.4, 2.2,
    2.4, …: the best iterate is x_1 (|Σx − c| = 0.1), not the last one. Its last iterate is evaluated too."""
    model = Peak(2.3)
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long)
    attack = PGD(eps=0.2, steps=4, step_size=0.05, keep="best")
    x_adv = attack(model, x, y)
    losses = [float(F.cross_entropy(model(s), y)) for s in list(model.seen)]
    assert len(losses) == 5  # x_0 … x_4: four gradients and one extra evaluation of x_4
    best = max(range(5), key=lambda i: losses[i])
    assert best == 1 and torch.equal(x_adv, model.seen[1])
    assert attack.forward_passes == 5 and attack.backward_passes == 4
    last = PGD(eps=0.2, steps=4, step_size=0.05)(Peak(2.3), x, y)
    assert not torch.equal(last, x_adv)


def test_apgd_best_keeps_its_highest_loss_point_not_its_last_fooled_one() -> None:
    """Logits (0, 0.01 − (Σx − 2.38)²), class 0: an iterate is fooled when |Σx − 2.38| < 0.1. APGD (ε = 0.2, no
    random start) visits Σx = 2, 2.8, 1.8, 2.4, 1.9, 2.1, 2.325: ``last`` returns the last fooled iterate
    (Σx = 2.325), ``best`` the highest-loss one (Σx = 2.4, the argmax over every evaluated iterate)."""
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long)
    model = Peak(2.38, 0.01)
    best = APGD(eps=0.2, steps=6, eot=1, random_start=False, keep="best")(model, x, y)
    seen = list(model.seen)
    assert [round(float(s.sum()), 3) for s in seen] == [2.0, 2.8, 1.8, 2.4, 1.9, 2.1, 2.325]
    losses = [float(F.cross_entropy(model(s), y)) for s in seen]
    assert torch.equal(best, seen[max(range(7), key=lambda i: losses[i])]) and torch.equal(best, seen[3])
    last = APGD(eps=0.2, steps=6, eot=1, random_start=False)(Peak(2.38, 0.01), x, y)
    assert torch.equal(last, seen[6])


def test_the_attacks_that_take_keep_are_those_the_identity_names() -> None:
    takers = {name for name, cls in ATTACKS.items() if "keep" in inspect.signature(cls.__init__).parameters}
    assert takers == set(KEEPING_ATTACKS)


def test_keep_is_refused_by_the_attacks_that_do_not_take_it() -> None:
    with pytest.raises(ConfigError, match="not supported by mask-pgd"):
        attack_kwargs("mask-pgd", {"keep": "best"})
    assert "keep" not in attack_kwargs("mask-pgd", {"keep": "last"})
    assert attack_kwargs("apgd-ce", {"keep": "first_broken", "keep_every": 5})["keep_every"] == 5
    with pytest.raises(ConfigError, match="keep must be one of"):
        PGD(keep="first")
    with pytest.raises(ConfigError, match="keep_every"):
        PGD(keep_every=0)


def test_rescore_summary_counts_the_kept_examples_that_still_fail() -> None:
    broken_at = torch.tensor([2, -1, 5, 1])
    # K = 2 fresh evaluations: image 0 wrong in both (still broken), image 2 right once (recovered), image 3 wrong
    correct = torch.tensor([[False, True, True, False], [False, True, False, False]])
    assert rescore_summary(broken_at, correct) == {"broken": 3, "still_broken": 2, "still_broken_rate": 2 / 3}
    assert rescore_summary(torch.tensor([-1]), torch.tensor([True]))["still_broken_rate"] is None
