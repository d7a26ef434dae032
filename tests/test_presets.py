"""The paper's named settings: values, ε-model call counts of the official scripts, config merging."""

from __future__ import annotations

import pytest

from hetpure.errors import ConfigError
from hetpure.evaluate import resolve_config
from hetpure.presets import get_preset, list_presets, preset_purify_config
from hetpure.purify import eps_calls


def test_presets_have_the_papers_settings() -> None:
    assert list_presets() == ["cifar10-scoresde", "imagenet-adm"]
    c = preset_purify_config("cifar10-scoresde")
    assert (c.t_s, c.t_l, c.tau, c.top_p, c.resample_steps, c.runs) == (0.1, 0.2, 0.9, None, 3, 20)
    i = preset_purify_config("imagenet-adm")
    assert (i.t_s, i.t_l, i.top_p, i.resize) == (0.2, 0.4, 0.15, True)


def test_eps_calls_match_the_official_cost_accounting() -> None:
    # defence S = 500: 100 calls from t_l 0.2, 200 from 0.4; attack surrogate S = 10: 2 and 4 calls
    assert eps_calls(preset_purify_config("cifar10-scoresde")) == 100
    assert eps_calls(preset_purify_config("imagenet-adm")) == 200
    assert eps_calls(preset_purify_config("cifar10-scoresde", ddim_steps=10)) == 2
    assert eps_calls(preset_purify_config("imagenet-adm", ddim_steps=10)) == 4


def test_config_sections_override_the_preset() -> None:
    cfg = resolve_config({"preset": "imagenet-adm", "classifier": {"path": "r50.pt"},
                          "diffusion": {"path": "adm.pt"}, "defense": {"runs": 4}})
    assert cfg["defense"]["top_p"] == 0.15 and cfg["defense"]["runs"] == 4 and cfg["defense"]["resize"]
    assert cfg["attack"]["steps"] == 20 and cfg["attack"]["eot"] == 20
    assert cfg["diffusion"]["kind"] == "adm" and cfg["classifier"]["name"] == "resnet50"


def test_get_preset_returns_a_copy_and_unknown_names_fail() -> None:
    get_preset("cifar10-scoresde")["defense"]["t_l"] = 0.9
    assert get_preset("cifar10-scoresde")["defense"]["t_l"] == 0.2
    with pytest.raises(ConfigError, match="cifar10-scoresde"):
        get_preset("cifar100")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config({"preset": "nope"})


def test_a_later_tau_replaces_the_presets_top_p() -> None:
    paths = {"classifier": {"path": "r50.pt"}, "diffusion": {"path": "adm.pt"}}
    cfg = resolve_config({"preset": "imagenet-adm", **paths, "defense": {"tau": 0.8}})
    assert cfg["defense"]["tau"] == 0.8 and cfg["defense"]["top_p"] is None
    cfg = resolve_config({"preset": "imagenet-adm", **paths}, {"defense": {"runs": 2}})
    assert cfg["defense"]["top_p"] == 0.15
