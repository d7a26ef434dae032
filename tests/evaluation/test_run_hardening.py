"""Second fault sweep of ``hetpure evaluate``: every case a clear error naming the problem and the fix (in the CLI
spelling), before any model work and before any record is written — or the correct result, never a silent
wrong one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import config
from PIL import Image

import hetpure
from hetpure import cli
from hetpure.errors import ConfigError, DataError, InputError, RecordsError
from hetpure.evaluate import evaluate
from hetpure.evaluation.records import RunLock, read_records


def image_tree(root: Path, sizes: dict[str, tuple[int, int]] | None = None, per_class: int = 3) -> Path:
    """``root/test/{cat,dog}/{i}.png`` 32×32 images; ``sizes`` maps a relative file to another (h, w)."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "test" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{c}/{i}.png"
            h, w = (sizes or {}).get(name, (32, 32))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "test" / name)
    return root


def plain(assets: Path, data: Path, out: Path, **changes: dict) -> dict:
    """Undefended, unattacked, all images: the cheapest run (the checks under test come before any model)."""
    cfg = config(assets, out, data={"root": str(data), "n": None}, defense={"method": "none"},
                 attack={"name": "none"})
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


def write_cfg(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- image sizes and corrupt images: every file, before the first batch -----------------------------------------


@pytest.mark.parametrize("method", ["none", "heterogeneous"])
def test_one_odd_image_size_is_refused_up_front_naming_the_file(assets: Path, tmp_path: Path, method: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = image_tree(tmp_path / "data", {"dog/2.png": (40, 40)})
    out = tmp_path / "run"
    cfg = plain(assets, data, out, defense={"method": method, "resize": True}, run={"batch_size": 1})
    with pytest.raises(ConfigError) as info:
        evaluate(cfg)
    msg = str(info.value)
    assert "dog/2.png is 3×40×40" in msg and "5 are 3×32×32" in msg, msg
    assert "fix: --set 'data.options={resize: [32, 32]}'" in msg
    assert not out.exists()  # nothing recorded: the check comes before the first batch
    assert cli.main(["evaluate", str(write_cfg(tmp_path, cfg))]) == 2
    assert "dog/2.png is 3×40×40" in capsys.readouterr().err
    cfg["data"]["options"] = {"resize": [32, 32]}  # the fix works
    summary = evaluate(cfg)
    assert summary["n"] == 6 and len(read_records(out / "records.jsonl")) == 6


def test_images_of_another_size_than_the_diffusion_model_need_resize(assets: Path, tmp_path: Path) -> None:
    """The diffusers folder's sample_size is read up front: the CLI fix, not the purifier's API message mid-run."""
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"the data's images are 32×32 but the diffusion model \(.*ddpm\) works at "
                                          r"16×16; fix: --set defense\.resize=true"):
        evaluate(plain(assets, data, out, defense={"method": "heterogeneous"}))
    assert not out.exists()


def test_the_expected_size_of_trained_weights_is_the_target(assets: Path, tmp_path: Path) -> None:
    """With weights the classifier's size (not the majority's) is what every image must have."""
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(hetpure.load_classifier("cifar_resnet20").state_dict(), weights)
    data = image_tree(tmp_path / "data", {"cat/0.png": (28, 28), "cat/1.png": (28, 28), "cat/2.png": (28, 28),
                                          "dog/0.png": (28, 28)})
    cfg = plain(assets, data, tmp_path / "run", classifier={"path": str(weights)})
    with pytest.raises(ConfigError, match=r"cat/0\.png is 3×28×28.*but 2 are 3×32×32; fix: --set "
                                          r"'data\.options=\{resize: \[32, 32\]\}'"):
        evaluate(cfg)


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_corrupt_image_is_named_before_the_first_batch(assets: Path, tmp_path: Path, damage: str) -> None:
    data = image_tree(tmp_path / "data")
    bad = data / "test" / "dog" / "2.png"
    raw = bad.read_bytes()
    bad.write_bytes(os.urandom(200) if damage == "random bytes" else raw[: len(raw) // 2])
    out = tmp_path / "run"
    with pytest.raises(DataError, match=rf"cannot read image {bad}: .*fix: re-save it as PNG or JPEG, or move it "
                                        r"out of the data folder"):
        evaluate(plain(assets, data, out, run={"batch_size": 1}))
    assert not out.exists()


# --- the run folder: records of other settings, unwritable folders, the lock ----------------------------------


def test_records_of_other_settings_refuse_the_folder_even_without_config_json(assets: Path, tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    evaluate(plain(assets, data, out))
    before = (out / "records.jsonl").read_bytes()
    (out / "config.json").unlink()
    with pytest.raises(RecordsError, match=r"its records have settings hash [0-9a-f]{16}, this run [0-9a-f]{16} "
                                           r"\(config\.json, which would name the keys that differ, is missing"):
        evaluate(plain(assets, data, out, run={"seed": 1}))
    assert (out / "records.jsonl").read_bytes() == before
    evaluate(plain(assets, data, out))  # the same settings still resume (nothing to do)
    assert (out / "records.jsonl").read_bytes() == before


def test_a_stale_config_json_does_not_hide_records_of_other_settings(assets: Path, tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    evaluate(plain(assets, data, out))
    config_a = (out / "config.json").read_text()
    (out / "config.json").write_text(json.dumps({"settings_hash": "0123456789abcdef"}))
    with pytest.raises(RecordsError, match="config.json, which would name the keys that differ, is not about"):
        evaluate(plain(assets, data, out, run={"seed": 1}))
    (out / "config.json").write_text(config_a)
    with pytest.raises(RecordsError, match=r"run\.seed"):  # with config.json the keys that differ are named
        evaluate(plain(assets, data, out, run={"seed": 1}))


def test_an_unwritable_run_folder_is_a_records_error_with_the_fix(assets: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(RecordsError, match=r"cannot create the output folder .*a_file/run: .*give another "
                                           r"run\.out \(--out DIR\)"):
        evaluate(plain(assets, data, a_file / "run"))

    import filelock

    def denied(self: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", denied)
    with pytest.raises(RecordsError, match=r"cannot write into .*run2: Permission denied; fix: make the folder "
                                           r"writable \(chmod u\+w\), or give this run another run\.out \(--out DIR\)"):
        evaluate(plain(assets, data, tmp_path / "run2"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder(assets: Path, tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(RecordsError, match=r"cannot write into .*--out DIR"):
            evaluate(plain(assets, data, out))
    finally:
        out.chmod(0o755)


def test_the_lock_message_speaks_evaluate(assets: Path, tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out), pytest.raises(RecordsError, match=r"another hetpure run is writing into .*run\.out \(--out "
                                                         r"DIR\)"):
        evaluate(plain(assets, data, out))


# --- settings refused with the fix ----------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("data.seed=-1", "data.seed: must be greater than or equal to 0, got -1; fix: --set data.seed=0"),
    ("data.seed=4294967296", "data.seed: must be less than or equal to 4294967295"),
    ("run.seed=18446744073709551616", "run.seed: must be less than or equal to 18446744073709551615"),
    ("run.device=meta", "run.device meta holds no data (a meta tensor is a shape without values), so nothing can "
                        "be computed on it; fix: --set run.device=cpu"),
    ("run.device=cuda:7", "fix: --set run.device="),
    ("run.device=tpu", "run.device 'tpu' is not a device"),
    ("data.n=100", "data.n is 100 but the imagefolder 'test' split has only 2 images; fix: --set data.n=2 or "
                   "--set data.n=null (all of them)"),
])
def test_bad_settings_are_refused_with_the_fix(assets: Path, tmp_path: Path, setting: str, message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    path = write_cfg(tmp_path, plain(assets, data, out))
    assert cli.main(["evaluate", str(path), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_predict_refuses_a_meta_device(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    path = write_cfg(tmp_path, plain(assets, data, tmp_path / "run"))
    assert cli.main(["predict", str(path), str(data / "test"), "--set", "run.device=meta"]) == 2
    assert "run.device meta holds no data" in capsys.readouterr().err


def test_the_api_refuses_a_seed_numpy_cannot_take(tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", per_class=1)
    for seed in (-1, 2**32, 1.5):
        with pytest.raises(InputError, match=r"seed must be a whole number from 0 to 2\*\*32 - 1"):
            hetpure.load_dataset("imagefolder", root=data, n=1, seed=seed)
    with pytest.raises(DataError, match=r"use n <= 2 or n=None"):  # the API speaks Python
        hetpure.load_dataset("imagefolder", root=data, n=5)


def test_a_symlink_loop_is_not_reported_as_missing(assets: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert cli.main(["evaluate", str(loop)]) == 2
    assert f"config file {loop} is a symbolic link that points back at itself (a link loop)" in capsys.readouterr().err
    cfg_path = write_cfg(tmp_path, config(assets, tmp_path / "run"))
    assert cli.main(["predict", str(cfg_path), str(loop)]) == 2
    assert "link loop" in capsys.readouterr().err
    for call in (lambda: hetpure.load_state_dict_file(loop), lambda: hetpure.load_dataset("imagefolder", root=loop)):
        with pytest.raises(hetpure.HetpureError, match="link loop"):
            call()
