"""End to end: eofm-finetune on a tiny export and a small real dataset; bad inputs."""
import json
import math
from pathlib import Path

import pytest

from data_prep.recipe import load_recipe
from finetune.cli import main
from finetune.config import FinetuneConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs/finetune"
QUICKSTART = str(CONFIGS / "ndvi_cover.yaml")   # an eofm dataset with chip-derived labels

FAST = ["linear_probe.epochs=20", "finetune.epochs=1", "finetune.batch_size=16", "--quiet"]


def run_cli(capsys, *args):
    rc = main([*args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_end_to_end(capsys, tmp_path, small_dataset, tiny_export):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, QUICKSTART, f"model.export={tiny_export}",
                              f"data.path={small_dataset}", f"output.path={out}", *FAST)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["protocols"]) == {"linear_probe", "linear_probe_random_init", "knn", "knn_random_init", "finetune",
                                   "finetune_random_init", "input_stats"}
    for protocol in ("linear_probe", "knn", "finetune"):   # each next to its random twin and the baseline
        assert set(m["comparison"][protocol]["1.0"]) == {"pretrained", "random_init", "input_stats"}
    assert m["protocols"]["input_stats"]["probe"]["l2"] in m["protocols"]["input_stats"]["settings"]["l2_grid"]
    assert {n["source"] for n in m["normalization"]} == {"export (sentinel2_l2a)"}
    for name, r in m["protocols"].items():
        assert math.isfinite(r["accuracy"]) and math.isfinite(r["macro_f1"])
        assert 0 <= r["accuracy"] <= 1
        assert r["n_train"] + r["n_test"] == 32 - m["unlabelled_chips"]
        assert sum(map(sum, r["confusion"])) == r["n_test"]
        assert (out / f"confusion_{name}.png").stat().st_size > 0
    assert m["label_source"]["name"] == "ndvi_cover" and "not a benchmark" in m["label_source"]["note"]
    assert m["data"] == str(small_dataset) and m["export"] == str(tiny_export)
    assert sum(m["class_counts"]["all"].values()) == 32 - m["unlabelled_chips"]
    assert (out / "config.yaml").is_file()
    assert "random init" in stdout and "input stats" in stdout and str(out) in stdout

    # same seed, same numbers
    out2 = tmp_path / "out2"
    assert main([QUICKSTART, f"model.export={tiny_export}", f"data.path={small_dataset}",
                 f"output.path={out2}", *FAST]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert {k: v["confusion"] for k, v in m2["protocols"].items()} == \
           {k: v["confusion"] for k, v in m["protocols"].items()}


def test_bad_export_folder(capsys, tmp_path, small_dataset, make_export):
    for folder, expect in ((tmp_path / "missing", "export folder not found"),
                           (small_dataset, "not an eofm export")):
        rc, _, err = run_cli(capsys, QUICKSTART, f"model.export={folder}", "--quiet")
        assert rc == 2
        assert err.startswith("eofm-finetune: error: ") and str(folder) in err and expect in err
        assert err.count("\n") == 1
    wrong = make_export(tmp_path / "wrong", {"s2": {"bands": [], "wavelengths_nm": [], "gsd_m": 10}}, fmt="other")
    rc, _, err = run_cli(capsys, QUICKSTART, f"model.export={wrong}", "--quiet")
    assert rc == 2 and str(wrong) in err and "format='other'" in err


def test_missing_manifest_and_bad_keys(capsys, tmp_path, tiny_export):
    rc, _, err = run_cli(capsys, QUICKSTART, f"model.export={tiny_export}",
                         f"data.path={tmp_path}", "--quiet")
    assert rc == 2 and "no manifest.json" in err
    rc, _, err = run_cli(capsys, QUICKSTART, "finetune.layer_decay=2")
    assert rc == 2 and "layer_decay" in err
    rc, _, err = run_cli(capsys, QUICKSTART, "protocols=[probe]")
    assert rc == 2 and "protocols[0]" in err


def test_sensor_without_statistics(capsys, tmp_path, small_dataset, make_export):
    other = make_export(tmp_path / "other", {"landsat9": {"bands": ["B4"], "wavelengths_nm": [655.0],
                                                          "mean": [0.1], "std": [0.1], "gsd_m": 30.0,
                                                          "units": "surface reflectance"}})
    # export statistics demanded: a clear error naming the sensor
    rc, _, err = run_cli(capsys, QUICKSTART, f"model.export={other}", f"data.path={small_dataset}",
                         "data.normalization=export", "--quiet")
    assert rc == 2 and "sentinel2_l2a" in err and "normalisation" in err
    # auto: no matching band in the export, so every band is standardised with training-split statistics
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, QUICKSTART, f"model.export={other}", f"data.path={small_dataset}",
                         f"output.path={out}", "protocols=[knn]", *FAST)
    assert rc == 0, err
    norm = json.loads((out / "metrics.json").read_text())["normalization"]
    assert {n["source"] for n in norm} == {"training split"} and len(norm) == 12


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for key in ("model.export", "data.path", "data.labels", "data.test_fraction", "data.block_m",
                "data.seed", "protocols", "linear_probe.epochs", "layer_decay", "output.path", "seed"):
        assert key in text


@pytest.mark.parametrize("name,run", [("ndvi_cover", "quickstart"), ("real_s2", "real_s2")])
def test_bundled_recipes_load(name, run):
    cfg = load_recipe(FinetuneConfig, CONFIGS / f"{name}.yaml")
    assert cfg.model.export == f"runs/{run}/export" and cfg.data.path == f"runs/{run}/data"
    assert cfg.protocols == ["linear_probe", "knn", "finetune"] and cfg.data.labels == "ndvi_cover"


def test_quickstart_recipe_evaluates_on_the_bundled_eurosat_tiles():
    cfg = load_recipe(FinetuneConfig, CONFIGS / "quickstart.yaml")
    root = Path(__file__).resolve().parents[2]
    assert cfg.data.format == "eurosat" and (root / cfg.data.path / "SeaLake").is_dir()
    assert cfg.data.repeats >= 5 and cfg.random_baseline and cfg.input_stats_baseline
