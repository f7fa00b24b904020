"""The development benchmark (configs/finetune/eurosat_dev.yaml) run small: 80 real EuroSAT_MS
tiles, repeated stratified splits, every protocol next to its random-init twin and the
input-statistics baseline."""
import json
from pathlib import Path

import finetune.train
from finetune.cli import main
from tests.conftest import ROOT

RECIPE = Path(__file__).resolve().parents[2] / "configs/finetune/eurosat_dev.yaml"
L2A_STATS = {"sentinel2_l2a": {"bands": ["B02", "B03", "B04", "B08"], "wavelengths_nm": [490.0, 560.0, 665.0, 842.0],
                               "mean": [0.1] * 4, "std": [0.1] * 4, "gsd_m": 10.0, "units": "surface reflectance"}}


def test_eurosat_dev_benchmark(capsys, monkeypatch, tmp_path, make_export):
    data = ROOT / "data/eurosat_dev"     # the same 80 tiles, bundled (pixel-identical copies)
    export = make_export(tmp_path / "export", L2A_STATS, seed=1)
    extracted = []
    real_extract = finetune.train.extract_features
    monkeypatch.setattr(finetune.train, "extract_features",
                        lambda *a, **k: extracted.append(a[0]) or real_extract(*a, **k))
    out = tmp_path / "out"
    rc = main([str(RECIPE), f"model.export={export}", f"data.path={data}", f"output.path={out}", "data.repeats=3",
               "finetune.epochs=1", "--quiet"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())

    # the data: 80 tiles, 10 classes; each split tests 3 tiles per class and trains on the other 5
    assert m["n_samples"] == 80 and len(m["label_source"]["classes"]) == 10 and len(m["bands"]) == 13
    assert m["repeats"] == 3 and m["split"]["split_seeds"] == [0, 1, 2]
    assert {(r["n_train"], r["n_test"]) for r in m["runs"]} == {(50, 30)}
    assert set(m["class_counts"]["test"].values()) == {3}
    assert len(extracted) == 2            # frozen features once per encoder, not once per split

    # every protocol: pretrained / random init / input statistics, each over the 3 splits
    for protocol in ("linear_probe", "knn", "finetune"):
        cols = m["comparison"][protocol]["1.0"]
        assert set(cols) == {"pretrained", "random_init", "input_stats"}
        for stats in cols.values():
            assert stats["accuracy"]["n"] == 3 and 0.0 <= stats["accuracy"]["mean"] <= 1.0
    assert {r["split_seed"] for r in m["runs"] if r["protocol"] == "finetune_random_init"} == {0, 1, 2}
    probes = [r["probe"] for r in m["runs"] if r["protocol"] in ("linear_probe", "input_stats")]
    assert len(probes) == 6 and all(p["l2"] in m["protocols"]["linear_probe"]["settings"]["l2_grid"] for p in probes)

    # a real signal: per-band mean and std of EuroSAT tiles classify far above chance (0.1)
    base = m["comparison"]["linear_probe"]["1.0"]["input_stats"]["accuracy"]
    assert base["mean"] >= 0.45, base
    assert "input stats" in stdout and "random init" in stdout and "3 splits" in stdout


def test_recipe():
    """The recipe itself (no data needed): 10 stratified splits of 3 test tiles per class, all
    three protocols, both baselines."""
    from data_prep.recipe import load_recipe
    from finetune.config import FinetuneConfig

    cfg = load_recipe(FinetuneConfig, RECIPE)
    d = cfg.data
    assert (d.format, d.split, d.repeats, round(d.test_fraction * 8), d.path) == \
        ("eurosat", "random", 10, 3, "../shared/data/real/EuroSAT_MS_dev")
    assert cfg.protocols == ["linear_probe", "knn", "finetune"] and cfg.random_baseline and cfg.input_stats_baseline
