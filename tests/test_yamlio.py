"""YAML is read as the config reference promises (``hetpure.yamlio``): a key written twice is refused with its
lines instead of the last one winning silently, and only ``true``/``false`` are booleans (YAML 1.1's
``yes``/``on`` are text, so the schema refuses them with the fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import config

from hetpure import cli
from hetpure.errors import ConfigError
from hetpure.evaluation.config import parse_set
from hetpure.models.loading import _read_config
from hetpure.tuning import parse_grid
from hetpure.yamlio import load_yaml


def test_only_true_and_false_are_booleans() -> None:
    data = load_yaml("a: yes\nb: on\nc: off\nd: no\ne: y\nf: true\ng: False\nh: TRUE\ni: 1\nj: null", "x.yaml")
    assert data == {"a": "yes", "b": "on", "c": "off", "d": "no", "e": "y", "f": True, "g": False, "h": True,
                    "i": 1, "j": None}


def test_a_key_written_twice_is_refused_with_its_lines() -> None:
    with pytest.raises(ConfigError, match=r"cfg\.yaml: key 'defense' is written twice \(lines 1 and 4\)"):
        load_yaml("defense:\n  tau: 0.5\nrun: {seed: 0}\ndefense:\n  tau: 0.9\n", "cfg.yaml")
    with pytest.raises(ConfigError, match=r"key 'tau' is written twice \(lines 2 and 3\).*write it once"):
        load_yaml("defense:\n  tau: 0.5\n  tau: 0.9\n", "cfg.yaml")


def test_merge_keys_may_be_overridden() -> None:
    """``<<: *anchor`` followed by one of its keys is YAML's way to override, not a duplicate."""
    assert load_yaml("b: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n", "x")["d"] == {"x": 3, "y": 2}


def _cfg_file(assets: Path, tmp_path: Path, text_edit=None) -> tuple[Path, Path]:
    out = tmp_path / "run"
    text = yaml.safe_dump(config(assets, out), sort_keys=False)
    if text_edit is not None:
        text = text_edit(text)
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path, out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t + "defense:\n  tau: 0.9\n", "key 'defense' is written twice"),
    (lambda t: t.replace("  t_s: 0.1\n", "  t_s: 0.1\n  t_s: 0.05\n"), "key 't_s' is written twice"),
], ids=["section twice", "key twice"])
def test_cli_refuses_a_config_with_a_key_written_twice(assets: Path, tmp_path: Path, edit, message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, out = _cfg_file(assets, tmp_path, edit)
    for command in (["evaluate", str(path)], ["predict", str(path), str(assets / "data")]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and "Traceback" not in err, err
    assert not out.exists()


def test_cli_refuses_yes_and_off_for_every_boolean(assets: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, out = _cfg_file(assets, tmp_path)
    for setting, key in (("run.progress=off", "run.progress"), ("defense.resize=yes", "defense.resize")):
        assert cli.main(["evaluate", str(path), "--set", setting]) == 2
        err = capsys.readouterr().err
        assert f"{key} must be the boolean true or false, got '{setting.split('=')[1]}'" in err, err
        assert f"fix: --set {key}=true (or false)" in err
    assert not out.exists()


def test_set_and_grid_values_read_the_same_way() -> None:
    assert parse_set(["run.progress=on", "run.sanity=true"]) == {"run": {"progress": "on", "sanity": True}}
    with pytest.raises(ConfigError, match=r"--set data\.options=\{resize: 1, resize: 2\}: key 'resize' is written "
                                          r"twice \(line 1\)"):
        parse_set(["data.options={resize: 1, resize: 2}"])
    assert parse_grid(["defense.resize=yes,true"]) == {"defense.resize": ["yes", True]}


def test_an_architecture_config_with_a_key_written_twice_is_refused(tmp_path: Path) -> None:
    as_json = tmp_path / "arch.json"
    as_json.write_text('{"model": {"nf": 32, "nf": 64}}')
    with pytest.raises(ConfigError, match=r"arch\.json: key 'nf' is written twice"):
        _read_config(as_json)
    as_yaml = tmp_path / "arch.yaml"
    as_yaml.write_text("model:\n  nf: 32\n  nf: 64\n")
    with pytest.raises(ConfigError, match=r"arch\.yaml: key 'nf' is written twice \(lines 2 and 3\)"):
        _read_config(as_yaml)
    as_json.write_text(json.dumps({"model": {"nf": 32}}))
    assert _read_config(as_json) == {"model": {"nf": 32}}
