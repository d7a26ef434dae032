"""The run contract: typed config, portable identity, records that are never duplicated, truncated or mislabelled.

Each case is a bad input a user could give (or a fault a machine could cause) and the clear error or
correct result it must get — raised before any model work, with nothing already computed lost.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TinyClassifier, config, tiny_unet
from PIL import Image

from hetpure import cli
from hetpure.data import CIFAR10_CLASSES, load_dataset
from hetpure.errors import ConfigError, HetpureError, RecordsError
from hetpure.evaluate import evaluate, resolve_config
from hetpure.evaluation.migrate import map_path, migrate_run
from hetpure.evaluation.records import RunLock, append_records, read_records, repair_tail

REPO = Path(__file__).resolve().parents[2]  # tests/evaluation/ → the repository root

# --------------------------------------------------------------------------------------------------
# 1. The config is typed: every bad value is a ConfigError naming the key and the fix
# --------------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("attack", "eps", "8/255", r"attack\.eps must be a number, got '8/255'.*0\.0313725"),
    ("defense", "ddim_steps", "10", r"defense\.ddim_steps must be a whole number, got '10'"),
    ("attack", "steps", 1.5, r"attack\.steps must be a whole number, got 1\.5"),
    ("attack", "steps", None, r"attack\.steps must be a whole number, got nothing"),
    ("attack", "eps", 8, r"attack\.eps: 8 is an L∞ radius above 1.*--set attack\.eps=0\.0313725"),
    ("classifier", "trust_pickle", "false", r"classifier\.trust_pickle must be the boolean true or false.*"
                                            r"--set classifier\.trust_pickle=true"),
    ("defense", "resize", "yes", r"defense\.resize must be the boolean"),
    ("run", "batch_size", 0, r"run\.batch_size: must be greater than or equal to 1"),
    ("defense", "t_l", 2.0, r"defense\.t_l: must be less than or equal to 1"),
    ("attack", "gradient", "exakt", r"attack\.gradient: must be 'surrogate', 'exact', 'bpda' or 'adjoint'"),
    ("defense", "tua", 0.5, r"unknown key defense\.tua \(did you mean tau"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_VALUES,
                         ids=[f"{s}.{k}={v!r}" for s, k, v, _ in BAD_VALUES])
def test_bad_config_values_are_refused_with_the_key_and_fix(assets: Path, tmp_path: Path, section: str, key: str,
                                                           value: object, message: str) -> None:
    cfg = config(assets, tmp_path / "run")
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=message):
        resolve_config(cfg)
    assert not (tmp_path / "run").exists()


def test_whole_numbers_are_numbers_and_types_are_normalised(assets: Path, tmp_path: Path) -> None:
    cfg = config(assets, tmp_path / "run", defense={"t_l": 1, "t_s": 0})
    resolved = resolve_config(cfg)
    assert resolved["defense"]["t_l"] == 1.0 and isinstance(resolved["defense"]["t_l"], float)


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_user_errors_exit_2_without_traceback(assets: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = write_yaml(tmp_path / "cfg.yaml", config(assets, tmp_path / "run"))
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    cases = [
        (["evaluate", str(tmp_path)], "is a folder"),
        (["evaluate", str(good), "--out", str(a_file)], "is a file, not a folder"),
        (["evaluate", str(good), "--set", "attack.steps="], "attack.steps must be a whole number, got nothing"),
        (["evaluate", str(good), "--set", "attack.eps=8/255"], "attack.eps must be a number"),
        (["evaluate", str(good), "--set", "classifier.trust_pickle='false'"], "classifier.trust_pickle"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "run").exists()  # refused before any work


class _Payload:
    """Unpickling this writes a marker file: the stand-in for a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickle_payload_never_runs_unless_trust_pickle_is_the_boolean_true(assets: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Payload(str(marker))}, fh)
    for trust in ("false", "true", 1, "yes"):
        cfg = config(assets, tmp_path / f"run{trust}", classifier={"path": str(evil), "trust_pickle": trust})
        with pytest.raises(ConfigError, match="classifier.trust_pickle must be the boolean"):
            evaluate(cfg)
    with pytest.raises(HetpureError):
        evaluate(config(assets, tmp_path / "run_bool", classifier={"path": str(evil), "trust_pickle": False}))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# 2. Records: never rewritten by a reader, corrupt lines named, appends atomic, one writer per folder
# --------------------------------------------------------------------------------------------------


def test_read_records_keeps_a_complete_last_line_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"index": 0}\n{"index": 1}')  # complete, final newline missing
    assert [r["index"] for r in read_records(path)] == [0, 1]
    assert path.read_text() == '{"index": 0}\n{"index": 1}'
    torn = '{"index": 0}\n{"index": 1}\n{"index": 2, "lab'
    path.write_text(torn)  # another process's append in flight, or a kill mid-write
    assert [r["index"] for r in read_records(path)] == [0, 1]
    assert path.read_text() == torn  # reading never truncates
    assert repair_tail(path) == len('{"index": 2, "lab')  # only the lock holder repairs
    append_records(path, [{"index": 2}])
    assert [r["index"] for r in read_records(path)] == [0, 1, 2]


def test_a_corrupt_middle_line_names_file_and_line_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    text = '{"index": 0}\n{"index": 1, oops}\n{"index": 2}\n'
    path.write_text(text)
    with pytest.raises(RecordsError, match=re.escape(f"{path}, line 2")):
        read_records(path)
    assert path.read_text() == text


def test_a_second_run_into_a_locked_folder_is_refused(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out), pytest.raises(RecordsError, match="another hetpure run is writing into"):
        evaluate(config(assets, out))
    assert not (out / "records.jsonl").exists()


def test_other_settings_are_refused_naming_the_keys(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(assets, out)
    cfg["data"]["n"] = 2
    evaluate(cfg)
    before = (out / "records.jsonl").read_text()
    cfg["defense"]["tau"] = 0.7
    with pytest.raises(RecordsError, match=r"defense\.tau: 0\.5 → 0\.7"):
        evaluate(cfg)
    assert (out / "records.jsonl").read_text() == before


def test_a_failed_run_leaves_nothing_that_refuses_the_corrected_rerun(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    bad = config(assets, out, defense={"ddim_steps": 4})  # stride 250: no DDIM step below t_l = 0.2
    bad["data"]["n"] = 2
    with pytest.raises(ConfigError, match="ddim_steps"):
        evaluate(bad)
    assert not (out / "config.json").exists()
    good = config(assets, out)
    good["data"]["n"] = 2
    assert evaluate(good)["n"] == 2


def test_a_read_only_finished_run_is_summarised(assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    cfg = config(assets, out)
    cfg["data"]["n"] = 2
    first = evaluate(cfg)
    stamp = (out / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr("hetpure.evaluation.runner.os.access", lambda *a: False)  # root ignores chmod
    again = evaluate(cfg)
    assert again["robust_accuracy"] == first["robust_accuracy"] and again["n"] == 2
    assert (out / "summary.json").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------------------------------
# 3. Data that would be mislabelled or mis-sized
# --------------------------------------------------------------------------------------------------


def _png(path: Path, size: int = 8, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def test_folders_are_labelled_by_the_models_class_names(tmp_path: Path) -> None:
    (tmp_path / "a" / "aaa_extra").mkdir(parents=True)  # an empty folder sorted first
    _png(tmp_path / "a" / "ship" / "0.png")
    _png(tmp_path / "a" / "truck" / "0.png")
    ds = load_dataset("imagefolder", root=tmp_path / "a", split=None, class_names=CIFAR10_CLASSES)
    assert [ds[i][1] for i in range(len(ds))] == [8, 9]
    with pytest.raises(HetpureError, match="hold no images.*shift the labels"):
        load_dataset("imagefolder", root=tmp_path / "a", split=None)
    _png(tmp_path / "b" / "spaceship" / "0.png")
    with pytest.raises(HetpureError, match="spaceship.*not classes of the model"):
        load_dataset("imagefolder", root=tmp_path / "b", split=None, class_names=CIFAR10_CLASSES)


def test_evaluate_labels_a_one_class_folder_by_name(assets: Path, tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / "data" / "test" / "ship" / f"{i}.png", 16, 60 * i)
    cfg = config(assets, tmp_path / "run", data={"root": str(tmp_path / "data"), "n": None})
    evaluate(cfg)
    assert {r["label"] for r in read_records(tmp_path / "run" / "records.jsonl")} == {8}


def test_images_of_the_wrong_size_for_the_weights_are_refused_before_loading(assets: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from hetpure.models.classifiers import CifarResNet

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in CifarResNet(20).state_dict().items()}, str(weights))
    for i in range(2):
        _png(tmp_path / "big" / "test" / "cat" / f"{i}.png", 64)
    cfg = config(assets, tmp_path / "run", data={"root": str(tmp_path / "big"), "n": None},
                 classifier={"path": str(weights)}, defense={"resize": True})
    with pytest.raises(ConfigError, match=r"images are 3×64×64 but classifier cifar_resnet20 takes 3×32×32.*"
                                          r"data\.options=\{resize: \[32, 32\]\}"):
        evaluate(cfg)
    assert not (tmp_path / "run" / "config.json").exists()


def test_mixed_image_sizes_are_a_clear_error(assets: Path, tmp_path: Path) -> None:
    _png(tmp_path / "mixed" / "test" / "cat" / "0.png", 16)
    _png(tmp_path / "mixed" / "test" / "cat" / "1.png", 20)
    cfg = config(assets, tmp_path / "run", data={"root": str(tmp_path / "mixed"), "n": None})
    with pytest.raises(HetpureError, match=r"not all one size: .*cat/(0|1)\.png is 3×(16|20)×(16|20)"):
        evaluate(cfg)  # every file checked from its header before the first batch (not when its batch is stacked)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------
# 4. The Python API
# --------------------------------------------------------------------------------------------------


def test_purify_casts_float64_and_predict_refuses_zero_runs() -> None:
    import hetpure

    pur = hetpure.UniformPurifier(hetpure.DiffusersEps(tiny_unet()), TinyClassifier(),
                                  hetpure.PurifyConfig(t_star=0.1, ddim_steps=20, runs=2))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    out64 = pur.purify(x.double(), generator=g)
    out32 = pur.purify(x, generator=torch.Generator().manual_seed(1))
    assert out64.dtype == torch.float64 and torch.allclose(out64.float(), out32)
    with pytest.raises(ConfigError, match="runs must be a positive integer"):
        pur.predict(x, runs=0)


# --------------------------------------------------------------------------------------------------
# 5. Portable identity and migration
# --------------------------------------------------------------------------------------------------


def test_identity_holds_no_path_and_survives_a_move(assets: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    cfg = config(assets, out)
    cfg["data"]["n"] = 2
    first = evaluate(cfg)
    stored = json.loads((out / "config.json").read_text())
    text = json.dumps(stored) + (out / "summary.json").read_text()
    assert str(tmp_path) not in text and str(assets) not in text
    moved = tmp_path / "elsewhere"
    shutil.copytree(assets, moved)  # the same files at another path: the same run
    n_before = len(read_records(out / "records.jsonl"))
    again = evaluate(config(moved, out, data={"n": 2}))
    assert again["settings_hash"] == first["settings_hash"]
    assert len(read_records(out / "records.jsonl")) == n_before


def test_migrate_moves_an_old_run_to_the_new_identity_without_recomputing(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(assets, out)
    cfg["data"]["n"] = 2
    summary = evaluate(cfg)
    new_hash = summary["settings_hash"]
    # make it look like a run of hetpure 0.1: an absolute-path config and another hash everywhere
    old_cfg = resolve_config(cfg)
    (out / "config.json").write_text(json.dumps({"settings_hash": "0ld0ld0ld0ld0ld0", "config": old_cfg}))
    records = read_records(out / "records.jsonl")
    (out / "records.jsonl").write_text("".join(json.dumps({**r, "settings_hash": "0ld0ld0ld0ld0ld0"}) + "\n"
                                               for r in records))
    result = migrate_run(out)
    assert result == {"folder": str(out), "status": "migrated", "old_hash": "0ld0ld0ld0ld0ld0",
                      "new_hash": new_hash, "records": 2}
    assert migrate_run(out)["status"] == "current"
    size = (out / "records.jsonl").stat().st_size
    assert evaluate(cfg)["n"] == 2 and (out / "records.jsonl").stat().st_size == size  # nothing recomputed


def test_map_path() -> None:
    assert map_path("/some/machine/shared/models/x") == "$HETPURE_SHARED/models/x"
    assert map_path("/data/ckpt.pt", {"/data": "/mnt/data"}) == "/mnt/data/ckpt.pt"
    assert map_path("relative/x") == "relative/x" and map_path(None) is None


ABSOLUTE = re.compile(r"(?<![\w.$/])/(?:work|home|root|tmp|Users|mnt|data|var|opt|srv)/")


def test_no_committed_result_holds_an_absolute_path() -> None:
    offenders = []
    for path in sorted((REPO / "docs" / "results").rglob("*")):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md"):
            if ABSOLUTE.search(path.read_text(errors="replace")):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"absolute paths in {offenders[:5]}: run scripts/migrate_runs.py"


def test_config_reference_in_the_docs_is_generated_from_the_schema() -> None:
    from hetpure.evaluation.config import config_reference_markdown

    doc = (REPO / "docs" / "evaluation.md").read_text()
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    assert start in doc and end in doc
    assert doc.split(start)[1].split(end)[0].strip() == config_reference_markdown().strip(), (
        "docs/evaluation.md is stale: python -m hetpure.evaluation.config --write-docs")

