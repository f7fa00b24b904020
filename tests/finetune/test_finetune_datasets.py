"""Dataset readers on the real samples in tests/data, and the shared task steps."""
import json
import shutil

import numpy as np
import pytest

from finetune import FinetuneError
from finetune.data import build_task, select_bands, tile, train_subset
from finetune.datasets import (BIGEARTHNET_19, IGNORE, EUROSAT_MS_BANDS, corine_to_bigearthnet19,
                               read_bigearthnet, read_eurosat, read_folder, read_split_file)
from tests.finetune.conftest import BEN, EUROSAT


def test_eurosat_reader_real():
    raw = read_eurosat(EUROSAT)
    assert raw.classes == ("AnnualCrop", "Pasture", "SeaLake") and raw.targets.tolist() == [0, 1, 2]
    assert raw.physical.shape == (3, 13, 64, 64) and raw.kind == "classification"
    assert raw.bands == EUROSAT_MS_BANDS and raw.bands[9] == "B10" and raw.bands[-1] == "B8A"
    assert raw.wavelengths_nm[9] == pytest.approx(1373.5) and raw.wavelengths_nm[-1] == pytest.approx(864.7)
    means = raw.physical.mean((2, 3))
    assert (means[:, 9] < 0.005).all()                              # cirrus band: ~10 DN
    assert (means[1, [7, 12]] > 0.35).all()                         # pasture: NIR (B08, B8A) bright
    assert means[2, 7] < 0.05                                       # sea: NIR dark
    assert raw.units == "top-of-atmosphere reflectance" and raw.geo[0]["crs"] == "EPSG:32635"
    assert raw.split is None


def test_bigearthnet_without_reference_map_is_a_clear_error():
    with pytest.raises(FinetuneError, match="none of the 1 S2 patches has a reference map.*_75_43_reference_map.tif"):
        read_bigearthnet(BEN)


def test_bigearthnet_reader_real(bigearthnet_paired):
    raw = read_bigearthnet(bigearthnet_paired)
    assert raw.physical.shape == (1, 12, 120, 120) and raw.kind == "segmentation"
    assert raw.sensor == "sentinel2_l2a" and "B10" not in raw.bands and len(raw.classes) == 19
    counts = {raw.classes[k]: int(n) for k, n in enumerate(np.bincount(raw.targets.ravel(), minlength=19)) if n}
    # reference map codes 211 / 231 / 311 / 313 -> the 19-class nomenclature
    assert counts == {"Arable land": 7075, "Pastures": 1154, "Broad-leaved forest": 4131, "Mixed forest": 2040}
    assert 0.0 < raw.physical[0, 1].mean() < 0.3                     # B02 surface reflectance
    task = build_task(raw, {}, kind="multilabel", tile_size=40, split="random", seed=0)
    assert task.kind == "multilabel" and task.targets.shape == (9, 19)
    on = {task.classes[k] for k in np.flatnonzero(task.targets.sum(0))}
    assert on == {"Arable land", "Pastures", "Broad-leaved forest", "Mixed forest"}


def test_bigearthnet_skips_patches_without_map(bigearthnet_paired, tmp_path):
    root = tmp_path / "ben"
    shutil.copytree(bigearthnet_paired, root)
    shutil.copytree(BEN / "BigEarthNet-S2", root / "BigEarthNet-S2", dirs_exist_ok=True)   # + the unpaired patch
    raw = read_bigearthnet(root)
    assert len(raw.keys) == 1 and raw.n_unlabelled == 1 and "without a reference map" in raw.notes[0]


def test_corine_to_19_classes():
    got = corine_to_bigearthnet19(np.array([111, 112, 211, 231, 333, 321, 523, 122, 241, 0, 999]))
    assert got.tolist() == [0, 0, 2, 4, 11, 11, 18, IGNORE, IGNORE, IGNORE, IGNORE]
    codes = [c for _, cs in BIGEARTHNET_19 for c in cs]
    assert len(codes) == len(set(codes)) == 31     # 44 CORINE codes minus 13 left out


def test_folder_reader_real(folder_dataset):
    raw = read_folder(folder_dataset, "segmentation", [], [], ["arable", "pasture", "broadleaf", "mixed"],
                      "sentinel2_l2a", "", 255)
    assert raw.bands == ["B02", "B03", "B04", "B08"]                       # from the band descriptions
    assert raw.wavelengths_nm == pytest.approx([492.4, 559.8, 664.6, 832.8])
    assert raw.physical.shape == (4, 4, 56, 56) and raw.split == ["train", "train", "train", "test"]
    assert (raw.targets[0, :2, :2] == IGNORE).all() and set(np.unique(raw.targets[1])) <= {0, 1, 2, 3}
    assert raw.physical.max() > 100                                        # no scale tags: stored DN as is
    task = build_task(raw, {}, split="auto")
    assert task.split_info["method"] == "file" and task.is_test.tolist() == [False, False, False, True]
    assert {n["source"] for n in task.normalization} == {"training split"}
    # normalised with training-split statistics: about zero mean, unit std on the training images
    assert abs(task.images[:3].mean()) < 0.05 and task.images[:3].std() == pytest.approx(1.0, abs=0.05)


def test_folder_regression_and_errors(folder_dataset, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(folder_dataset / "images", root / "images")
    shutil.copytree(folder_dataset / "values", root / "labels")
    raw = read_folder(root, "regression", [], [], [], "", "", 255)
    assert raw.targets.dtype == np.float32 and raw.targets.shape == (4, 56, 56) and raw.split is None
    assert -40 < np.nanmean(raw.targets) < 5                               # S1 VV in dB
    with pytest.raises(FinetuneError, match="4 bands, but 3 band names"):
        read_folder(root, "regression", ["B02", "B03", "B04"], [], [], "", "", 255)
    with pytest.raises(FinetuneError, match=r"img0.tif: label \d but only 2 classes"):
        read_folder(folder_dataset, "segmentation", [], [], ["a", "b"], "", "", 255)
    (root / "labels" / "img2.tif").unlink()
    with pytest.raises(FinetuneError, match="img2.tif: no label file"):
        read_folder(root, "regression", [], [], [], "", "", 255)


def test_split_files(tmp_path):
    (tmp_path / "s.csv").write_text("id,split\na.tif,train\nb,test\n")
    assert read_split_file(tmp_path / "s.csv") == {"a": "train", "b": "test"}
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("x.tif\ny.tif\n")
    (tmp_path / "splits" / "val.txt").write_text("z.tif\n")
    assert read_split_file(tmp_path / "splits") == {"x": "train", "y": "train", "z": "val"}
    (tmp_path / "bad.csv").write_text("a,holdout\n")
    with pytest.raises(FinetuneError, match="bad.csv: line 1"):
        read_split_file(tmp_path / "bad.csv")
    with pytest.raises(FinetuneError, match="listed id"):
        read_eurosat(EUROSAT, str(tmp_path / "s.csv"))


def test_tiles_and_band_selection():
    raw = read_eurosat(EUROSAT)
    first = raw.physical[0].copy()
    raw = tile(select_bands(raw, ["B04", "B08", "B10"]), 16)
    assert raw.physical.shape == (48, 3, 16, 16) and raw.targets.tolist() == [0] * 16 + [1] * 16 + [2] * 16
    assert raw.wavelengths_nm == pytest.approx([664.6, 832.8, 1373.5])
    # tile r1_c2 of image 0 is rows 16-31, columns 32-47, and its transform moved there
    i = raw.keys.index("AnnualCrop_1_r1_c2")
    assert np.array_equal(raw.physical[i, 1], first[7, 16:32, 32:48])
    t0, t = raw.geo[0]["transform"], raw.geo[i]["transform"]
    assert t[2] == pytest.approx(t0[2] + 32 * t0[0]) and t[5] == pytest.approx(t0[5] + 16 * t0[4])
    with pytest.raises(FinetuneError, match="B13 not in the dataset's bands"):
        select_bands(read_eurosat(EUROSAT), ["B04", "B13"])


def test_normalization_rules(bigearthnet_paired):
    export = {"normalization": {"sentinel2_l2a": {
        "bands": ["B02", "B04"], "wavelengths_nm": [492.4, 664.6], "mean": [0.05, 0.07], "std": [0.02, 0.03],
        "units": "surface reflectance"}}}
    task = build_task(read_bigearthnet(bigearthnet_paired), export, tile_size=40, split="random", bands=["B02", "B03"])
    src = {n["band"]: n["source"] for n in task.normalization}
    assert src == {"B02": "export (sentinel2_l2a)", "B03": "training split"}
    assert task.normalization[0]["mean"] == 0.05
    with pytest.raises(FinetuneError, match="no statistics for B03"):
        build_task(read_bigearthnet(bigearthnet_paired), export, tile_size=40, split="random",
                   bands=["B02", "B03"], normalization="export")
    # EuroSAT is top-of-atmosphere: surface-reflectance statistics are another quantity, not reused
    eurosat = build_task(read_eurosat(EUROSAT), export, tile_size=16, split="random")
    assert {n["source"] for n in eurosat.normalization} == {"training split"}
    assert json.dumps(eurosat.normalization)                      # JSON-ready for the report


def test_partial_labels_deterministic_and_stratified():
    task = build_task(read_eurosat(EUROSAT), {}, tile_size=8, split="random", seed=0, test_fraction=0.25)
    n_c = np.bincount(task.targets[task.train_idx])
    assert n_c.tolist() == [48, 48, 48]
    a, b = train_subset(task, 0.1, seed=0), train_subset(task, 0.1, seed=0)
    assert np.array_equal(a, b) and np.isin(a, task.train_idx).all()
    assert np.bincount(task.targets[a]).tolist() == [5, 5, 5]                 # round(0.1 * 48) per class
    assert not np.array_equal(a, train_subset(task, 0.1, seed=1))
    assert np.bincount(task.targets[train_subset(task, 0.01, seed=3)]).tolist() == [1, 1, 1]   # every class seen
    assert np.array_equal(train_subset(task, 1.0, seed=5), task.train_idx)


def test_partial_labels_multilabel_covers_classes(bigearthnet_paired):
    task = build_task(read_bigearthnet(bigearthnet_paired), {}, kind="multilabel", tile_size=20, split="random",
                      seed=0)
    sub = train_subset(task, 0.1, seed=0)
    have = task.targets[task.train_idx].sum(0) > 0
    assert (task.targets[sub].sum(0) > 0)[have].all()          # one sample per class present in train
    assert np.array_equal(sub, train_subset(task, 0.1, seed=0))
