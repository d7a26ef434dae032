"""Security: a checkpoint's pickle payload runs only when ``trust_pickle`` is the boolean ``True``.

Every entry point that reads a checkpoint (the Python API and the CLI) is given a pickle whose payload would
write a marker file; the marker must never appear unless the caller passed the boolean ``True``. Any other
value that is not ``False`` (``"false"``, ``"no"``, ``"0"``, ``1``, ``None``, a NumPy boolean) is an
``InputTypeError`` (a ``TypeError``) naming the argument, raised before the file is opened. On the command
line YAML 1.1's ``yes``/``on`` are text, refused by the schema with the fix.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import config, fixture_file

import hetpure
from hetpure import cli
from hetpure.errors import CheckpointError, ConfigError, HetpureError, InputError, InputTypeError
from hetpure.evaluate import evaluate
from hetpure.models.checkpoint import load_ema_shadow_params, read_checkpoint

NOT_BOOLEANS = ["false", "False", "no", "0", "", "true", 1, 0, None, np.bool_(True), 1.0]


class _Payload:
    """Unpickling this writes a marker file: the stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (Path(self.marker), "pwned"))


def evil_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """(marker, [a torch zip file, a legacy raw pickle]) whose unpickling writes the marker."""
    marker = tmp_path / "marker"
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, zipped)
    raw = tmp_path / "evil_raw.pth"
    with open(raw, "wb") as fh:
        pickle.dump({"state_dict": _Payload(marker)}, fh)
    return marker, [zipped, raw]


def _entry_points(path: Path) -> dict[str, object]:
    ncsnpp = fixture_file("ncsnpp_tiny.config.json")
    return {
        "load_classifier": lambda trust: hetpure.load_classifier("cifar_resnet20", path, trust_pickle=trust),
        "load_state_dict_file": lambda trust: hetpure.load_state_dict_file(path, trust_pickle=trust),
        "read_checkpoint": lambda trust: read_checkpoint(path, trust_pickle=trust),
        "load_ema_shadow_params": lambda trust: load_ema_shadow_params(torch.nn.Linear(1, 1), path, trust_pickle=trust),
        "load_eps_model": lambda trust: hetpure.load_eps_model("ncsnpp", path, config=ncsnpp, trust_pickle=trust),
    }


@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=repr)
def test_a_non_boolean_trust_pickle_is_a_type_error_and_never_unpickles(tmp_path: Path, value: object) -> None:
    marker, files = evil_files(tmp_path)
    for path in files:
        for name, call in _entry_points(path).items():
            with pytest.raises(InputTypeError, match=r"trust_pickle must be the boolean True or False, got "
                                                     + ("" if value == "" else r"\S")) as info:
                call(value)  # type: ignore[operator]
            err = info.value
            assert isinstance(err, TypeError) and isinstance(err, HetpureError) and isinstance(err, InputError), name
            assert "trust_pickle=False" in str(err), name
            assert not marker.exists(), f"{name}({path.name}, trust_pickle={value!r}) ran the payload"


def test_the_boolean_false_refuses_with_the_real_cli_spelling(tmp_path: Path) -> None:
    marker, files = evil_files(tmp_path)
    for path in files:
        for name, call in _entry_points(path).items():
            with pytest.raises(CheckpointError, match="refusing to load") as info:
                call(False)  # type: ignore[operator]
            msg = str(info.value)
            assert "--set classifier.trust_pickle=true" in msg and "--set diffusion.trust_pickle=true" in msg, name
            assert "--trust-pickle" not in msg, name
            assert not marker.exists(), name


def test_the_payload_is_real_so_these_tests_can_fail(tmp_path: Path) -> None:
    """Control: with the boolean True the same file does run its payload (the marker appears)."""
    marker, files = evil_files(tmp_path)
    state = hetpure.load_state_dict_file(files[0], trust_pickle=True)
    assert list(state) == ["w"] and marker.read_text() == "pwned"


@pytest.mark.parametrize(("section", "spelling"), [("classifier", "yes"), ("classifier", "on"), ("classifier", "Yes"),
                                                   ("diffusion", "on"), ("diffusion", "YES")])
def test_cli_refuses_yaml11_booleans_for_trust_pickle(assets: Path, tmp_path: Path, section: str, spelling: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    marker, files = evil_files(tmp_path)
    out = tmp_path / "run"
    cfg = config(assets, out)
    cfg[section]["path"] = str(files[0])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert cli.main(["evaluate", str(cfg_file), "--set", f"{section}.trust_pickle={spelling}"]) == 2
    err = capsys.readouterr().err
    assert f"{section}.trust_pickle must be the boolean true or false, got '{spelling}'" in err, err
    assert "yes/no/on/off are text" in err and f"fix: --set {section}.trust_pickle=true" in err
    assert "Traceback" not in err
    # the same spelling inside the YAML file
    text = yaml.safe_dump(cfg)
    cfg_file.write_text(text.replace(f"path: {files[0]}", f"path: {files[0]}\n  trust_pickle: {spelling}"))
    assert f"trust_pickle: {spelling}" in cfg_file.read_text()
    assert cli.main(["evaluate", str(cfg_file)]) == 2
    assert f"{section}.trust_pickle must be the boolean true or false" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_cli_trust_pickle_false_names_the_set_flag(assets: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    marker, files = evil_files(tmp_path)
    cfg = config(assets, tmp_path / "run", classifier={"path": str(files[0])}, defense={"method": "none"},
                 data={"options": {"resize": [32, 32]}})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert cli.main(["evaluate", str(cfg_file), "--set", "classifier.trust_pickle=false"]) == 2
    err = capsys.readouterr().err
    assert "--set classifier.trust_pickle=true" in err and "--trust-pickle" not in err and "Traceback" not in err
    assert not marker.exists()


def test_a_trust_pickle_string_in_an_api_config_dict_is_refused(assets: Path, tmp_path: Path) -> None:
    marker, files = evil_files(tmp_path)
    cfg = config(assets, tmp_path / "run", diffusion={"kind": "ncsnpp", "path": str(files[0]), "trust_pickle": "no"})
    with pytest.raises(ConfigError, match=r"diffusion\.trust_pickle must be the boolean true or false, got 'no'"):
        evaluate(cfg)
    assert not marker.exists()
