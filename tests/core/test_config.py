"""``PurifyConfig`` (:mod:`hetpure.config`): every refusal of ``validate`` names the setting at fault, each
method reads only its own fields, and ``replace`` / ``to_dict`` / ``from_dict`` keep every value."""

from __future__ import annotations

import dataclasses

import pytest

from hetpure.config import MASK_SOURCES, PurifyConfig
from hetpure.errors import ConfigError, HetpureError

# --- validate: the heterogeneous purifier's settings -----------------------------------------------------------


def test_the_defaults_are_valid_and_validate_returns_the_config() -> None:
    cfg = PurifyConfig()
    assert cfg.validate() is cfg
    assert (cfg.t_s, cfg.t_l, cfg.tau, cfg.top_p, cfg.resample_steps, cfg.ddim_steps) == (0.1, 0.2, 0.9, None, 3, 500)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"t_s": 0.3, "t_l": 0.2}, "t_s <= t_l"),
        ({"t_s": -0.1}, "t_s <= t_l"),
        ({"t_l": 1.5}, "t_s <= t_l"),
        ({"ddim_steps": 0}, "ddim_steps"),
        ({"ddim_steps": 1001}, "ddim_steps"),
        ({"ddim_steps": 2}, "empty schedule below t_l"),  # stride 500: nothing between 0.2·T and 0
        ({"runs": 0}, "runs"),
        ({"max_batch": 0}, "max_batch"),
        ({"eta": -0.1}, "eta"),
        ({"resample_steps": -1}, "resample_steps"),
        ({"repaint_jumps": 0}, "repaint_jumps"),
        ({"t_l": 0.999, "ddim_steps": 1000}, "below T"),  # int(0.999·1000) + U = 998 + 3 reaches T
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"tau": 1.5}, "tau"),
        ({"tau": None}, "tau"),
        ({"levels": "smooth"}, "levels"),
        ({"levels": "graded", "tau_lo": 0.7, "tau_hi": 0.3}, "tau_lo <= tau_hi"),
        ({"mask_source": "saliency"}, "mask_source"),
    ],
)
def test_each_bad_heterogeneous_setting_is_refused_by_name(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        PurifyConfig(**changes).validate()


def test_top_p_takes_the_place_of_tau() -> None:
    assert PurifyConfig(tau=None, top_p=0.15).validate().top_p == 0.15
    assert PurifyConfig(tau=1.5, top_p=0.15).validate().tau == 1.5  # tau is not read when top_p is given


def test_the_range_of_ddim_steps_follows_the_models_timesteps() -> None:
    assert PurifyConfig(ddim_steps=1000).validate(num_timesteps=1000).ddim_steps == 1000
    with pytest.raises(ConfigError, match=r"ddim_steps must lie in \[1, 100\]"):
        PurifyConfig(ddim_steps=500).validate(num_timesteps=100)


def test_graded_range_defaults_each_end_to_tau() -> None:
    assert PurifyConfig(tau=0.8).graded_range() == (0.8, 0.8)
    assert PurifyConfig(tau=0.8, tau_lo=0.5).graded_range() == (0.5, 0.8)
    assert PurifyConfig(tau=None, top_p=0.2, tau_hi=0.95).graded_range() == (0.9, 0.95)


# --- validate: the uniform purifier's settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        ({}, "needs t_star"),
        ({"t_star": 0.0}, "t_star must lie in"),
        ({"t_star": 1.5}, "t_star must lie in"),
        ({"t_star": 0.2, "sampler": "euler"}, "sampler"),
        ({"t_star": 0.001, "ddim_steps": 10}, "no DDIM step below t_star"),
        ({"t_star": 0.0005, "sampler": "ddpm"}, "below one timestep"),
        ({"t_star": 0.2, "runs": 0}, "runs"),
    ],
)
def test_each_bad_uniform_setting_is_refused_by_name(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        PurifyConfig(**changes).validate(uniform=True)


def test_a_uniform_purifier_reads_only_its_own_fields() -> None:
    """Settings only the heterogeneous purifier reads (here an inverted t_s > t_l) do not stop a uniform one."""
    cfg = PurifyConfig(t_star=0.2, t_s=0.5, t_l=0.1, tau=None, levels="smooth")
    assert cfg.validate(uniform=True) is cfg
    with pytest.raises(ConfigError):
        cfg.validate()


def test_config_errors_are_value_errors_and_hetpure_errors() -> None:
    with pytest.raises(ValueError):
        PurifyConfig(runs=0).validate()
    with pytest.raises(HetpureError):
        PurifyConfig(runs=0).validate()


# --- replace, to_dict, from_dict ---------------------------------------------------------------------------------


def test_replace_returns_a_new_config_and_leaves_the_frozen_original() -> None:
    cfg = PurifyConfig(tau=0.5, runs=8)
    other = cfg.replace(runs=2, t_l=0.3)
    assert (other.runs, other.t_l, other.tau) == (2, 0.3, 0.5)
    assert (cfg.runs, cfg.t_l) == (8, 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.runs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.replace(steps=10)


def test_to_dict_holds_every_field() -> None:
    data = PurifyConfig().to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(PurifyConfig)]
    assert data["tau"] == 0.9 and data["top_p"] is None and data["mask_source"] == "energy"


@pytest.mark.parametrize(
    "cfg",
    [
        PurifyConfig(),
        PurifyConfig(t_s=0.2, t_l=0.4, tau=None, top_p=0.15, resize=True, runs=4, ddim_steps=250, eta=0.5),
        PurifyConfig(levels="graded", tau_lo=0.3, tau_hi=0.6, mask_source=MASK_SOURCES[1], repaint_jumps=3),
        PurifyConfig(t_star=0.1, sampler="ddpm", sde_steps=40, gdmp_guidance="ssim", gdmp_iterations=2),
    ],
    ids=["defaults", "imagenet-like", "graded", "uniform-and-peers"],
)
def test_to_dict_from_dict_round_trip(cfg: PurifyConfig) -> None:
    again = PurifyConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_from_dict_takes_a_partial_dict_and_refuses_unknown_keys() -> None:
    assert PurifyConfig.from_dict({"tau": 0.7}) == PurifyConfig(tau=0.7)
    with pytest.raises(ConfigError, match="unknown PurifyConfig keys") as info:
        PurifyConfig.from_dict({"tau": 0.7, "steps": 10, "t_start": 0.1})
    assert "'steps'" in str(info.value) and "'t_start'" in str(info.value) and "'ddim_steps'" in str(info.value)


def test_every_mask_source_is_accepted() -> None:
    assert {"energy", "gradcam", "random", "all", "none"} <= set(MASK_SOURCES)
    for source in MASK_SOURCES:
        assert PurifyConfig(mask_source=source).validate().mask_source == source
