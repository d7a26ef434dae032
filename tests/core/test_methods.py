"""The method table of :mod:`hetpure.methods`: ``defense.method`` → purifier class, and
``purifier_from_config`` building each one (``eps`` and ``clf`` are conftest.py's tiny models)."""

from __future__ import annotations

import pytest

from hetpure import HeterogeneousPurifier, Purifier, PurifyConfig, UniformPurifier
from hetpure.config import METHODS
from hetpure.errors import ConfigError
from hetpure.gdmp import GDMPPurifier
from hetpure.methods import PURIFIERS, purifier_from_config
from hetpure.sde import DiffPurePurifier

#: settings every method accepts on the tiny UNet (t_star for the uniform purifier and the peers)
CONFIG = PurifyConfig(t_s=0.1, t_l=0.2, tau=0.5, t_star=0.1, ddim_steps=10, runs=2, sde_steps=4, gdmp_iterations=2)


def test_the_table_covers_every_method_but_none() -> None:
    assert set(PURIFIERS) == set(METHODS) - {"none"}
    assert all(issubclass(cls, Purifier) for cls in PURIFIERS.values())


@pytest.mark.parametrize(
    "method, cls",
    [
        ("heterogeneous", HeterogeneousPurifier),
        ("uniform", UniformPurifier),
        ("diffpure", DiffPurePurifier),
        ("gdmp", GDMPPurifier),
    ],
)
def test_each_method_builds_its_class_with_the_given_models_and_config(eps, clf, method: str, cls: type) -> None:
    assert PURIFIERS[method] is cls
    pur = purifier_from_config(eps, clf, method, CONFIG)
    assert type(pur) is cls
    assert pur.eps_model is eps and pur.classifier is clf and pur.config == CONFIG


def test_the_heterogeneous_purifier_takes_the_mask_layers(eps, clf) -> None:
    default = purifier_from_config(eps, clf, "heterogeneous", CONFIG)
    assert default.mask_layers == list(clf.mask_layers)
    chosen = purifier_from_config(eps, clf, "heterogeneous", CONFIG, mask_layers=["stage2"])
    assert chosen.mask_layers == ["stage2"]


def test_none_is_no_purifier(eps, clf) -> None:
    assert purifier_from_config(eps, clf, "none", CONFIG) is None


@pytest.mark.parametrize("method", ["pgd", "Heterogeneous", ""])
def test_an_unknown_method_is_a_config_error_naming_the_valid_ones(eps, clf, method: str) -> None:
    with pytest.raises(ConfigError, match="unknown defense method") as info:
        purifier_from_config(eps, clf, method, CONFIG)
    message = str(info.value)
    assert repr(method) in message
    assert all(name in message for name in METHODS)


def test_each_method_validates_its_own_settings(eps, clf) -> None:
    """A config without t_star is refused by the methods that read it, and accepted by the heterogeneous one."""
    cfg = CONFIG.replace(t_star=None)
    assert isinstance(purifier_from_config(eps, clf, "heterogeneous", cfg), HeterogeneousPurifier)
    for method in ("uniform", "diffpure", "gdmp"):
        with pytest.raises(ConfigError, match="t_star"):
            purifier_from_config(eps, clf, method, cfg)
