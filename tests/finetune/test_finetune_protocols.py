"""k-NN, linear probe and fine-tuning for every task kind; partial-label regimes end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.cli import main
from finetune.config import FinetuneSpec, KnnSpec, LinearProbeSpec
from finetune.data import Task
from finetune.train import evaluate, extract_features, finetune, knn, linear_probe
from pretrain.models import build_backbone
from tests.finetune.conftest import EUROSAT

CONFIGS = Path(__file__).resolve().parents[2] / "configs/finetune"


def toy_task(kind, n=12, k=3, size=8):
    rng = np.random.default_rng(0)
    targets = {"classification": np.arange(n) % k,
               "multilabel": (rng.random((n, k)) > 0.5).astype(np.float32),
               "segmentation": rng.integers(-1, k, (n, size, size)),
               "regression": rng.normal(5.0, 2.0, (n, size, size)).astype(np.float32)}[kind]
    is_test = np.zeros(n, bool)
    is_test[-4:] = True
    return Task(kind=kind, images=rng.normal(size=(n, 3, size, size)).astype(np.float32),
                valid=np.ones((n, size, size), bool), targets=targets,
                wavelengths_nm=np.array([490.0, 560.0, 665.0], np.float32), gsd_m=np.full(n, 10.0, np.float32),
                keys=[str(i) for i in range(n)], groups=[str(i) for i in range(n)], is_test=is_test,
                classes=tuple("abc"[:k]), sensor="s2", bands=["B02", "B03", "B04"], n_unlabelled=0)


def test_knn_by_hand():
    # 1-D "features": train points at angles, test points nearest to a known neighbour
    task = toy_task("classification", n=6)
    task.targets = np.array([0, 1, 2, 0, 1, 2])
    task.is_test = np.array([0, 0, 0, 1, 1, 1], bool)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [-0.8, -0.1]])
    votes = knn(f, task, task.train_idx, KnnSpec(k=1, temperature=1.0))
    assert votes.argmax(1).tolist() == [0, 1, 2]
    # k = 3 with a tiny temperature: still the nearest wins; weights are exp(cos / T)
    votes = knn(f, task, task.train_idx, KnnSpec(k=3, temperature=0.01))
    assert votes.argmax(1).tolist() == [0, 1, 2]
    v = knn(f, task, task.train_idx, KnnSpec(k=2, temperature=1.0))[0]
    cos = torch.nn.functional.normalize(f, dim=1)[3] @ torch.nn.functional.normalize(f[:3], dim=1).T
    w = (cos[:2] - cos[0]).exp()                # weights relative to the nearest neighbour's
    assert v[0] == pytest.approx(float(w[0])) and v[1] == pytest.approx(float(w[1])) and v[2] == 0
    # multi-label: the weighted mean of the neighbours' label vectors
    ml = toy_task("multilabel", n=4)
    ml.targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], np.float32)
    ml.is_test = np.array([0, 0, 1, 1], bool)
    s = knn(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), ml, ml.train_idx, KnnSpec(k=2))
    assert s[0].tolist() == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.parametrize("kind", ["classification", "multilabel", "segmentation", "regression"])
def test_protocols_every_kind(kind):
    torch.manual_seed(0)
    enc = build_backbone("vit", "tiny", depth=1, patch_size=4, embed_dim=32, num_heads=2)
    task = toy_task(kind)
    feats = extract_features(enc, task, np.arange(12), dense=not task.image_level)
    lp, chosen = linear_probe(feats, task, task.train_idx, LinearProbeSpec(epochs=3, batch_size=4), seed=0)
    assert (chosen["l2"] in LinearProbeSpec().l2_grid) if kind == "classification" else chosen == {}
    ft = finetune(enc, task, task.train_idx, FinetuneSpec(epochs=1, batch_size=4, head="auto"), seed=0)
    for out in (lp, ft):
        m = evaluate(task, out)
        key = {"classification": "accuracy", "multilabel": "map_macro", "segmentation": "miou", "regression": "rmse"}
        assert np.isfinite(m[key[kind]])
    if kind == "segmentation":
        assert lp.shape == ft.shape == (4, 8, 8)
    if kind == "regression":   # predictions come back in the targets' units (mean 5, std 2)
        assert 1.0 < ft.mean() < 9.0


def test_partial_label_regimes_end_to_end(capsys, tmp_path, tiny_export):
    """EuroSAT_MS real files (13 bands incl. B10) through a 12-band L2A export: 16x16 tiles,
    two label fractions x two seeds; summary mean/std per protocol and fraction."""
    out = tmp_path / "out"
    rc = main([str(CONFIGS / "eurosat.yaml"), f"model.export={tiny_export}", f"data.path={EUROSAT}",
               "data.tile=16", "data.split=random", "data.label_fractions=[0.1,1.0]", "data.label_seeds=[0,1]",
               "protocols=[linear_probe,knn,finetune]", "linear_probe.epochs=5", "finetune.epochs=1",
               f"output.path={out}", "--quiet"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "classification" and m["n_samples"] == 48 and "B10" in m["bands"]
    assert len(m["runs"]) == 2 * 2 * 7                      # fractions x seeds x (3 protocols x 2 encoders + input stats)
    s = m["summary"]["linear_probe"]
    assert set(s) == {"0.1", "1.0"} and s["0.1"]["accuracy"]["n"] == 2
    accs = [r["accuracy"] for r in m["runs"] if r["protocol"] == "linear_probe" and r["label_fraction"] == 0.1]
    assert s["0.1"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["0.1"]["accuracy"]["std"] == pytest.approx(np.std(accs))
    n_train = {r["label_fraction"]: r["n_train"] for r in m["runs"]}
    assert n_train[0.1] == 3 and n_train[1.0] == 39        # 13 per class (3 of 16 tested); 10 %: 1 each
    assert m["protocols"]["linear_probe"]["label_fraction"] == 1.0
    assert (out / "confusion_knn.png").is_file() and "+-" in stdout


def test_segmentation_folder_end_to_end(capsys, tmp_path, tiny_export, folder_dataset):
    """Generic folder layout (real pixels, split.csv): linear probe + UPerNet fine-tuning; 4-band
    subset of the export's 12 bands, normalised with the export's statistics (same sensor, units)."""
    common = [str(CONFIGS / "eurosat.yaml"), f"model.export={tiny_export}", "data.format=folder",
              f"data.path={folder_dataset}", "data.task=segmentation", "data.folder.sensor=sentinel2_l2a",
              "data.folder.units=surface reflectance", "data.folder.classes=[arable,pasture,broadleaf,mixed]",
              "--quiet"]
    out = tmp_path / "seg"
    rc = main([*common, "protocols=[linear_probe,finetune]", "finetune.head=upernet", "finetune.epochs=1",
               "linear_probe.epochs=2", f"output.path={out}"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "segmentation" and m["split"]["method"] == "file" and m["chip_size"] == [56, 56]
    assert {n["source"] for n in m["normalization"]} == {"export (sentinel2_l2a)"}
    for name in ("linear_probe", "linear_probe_random_init", "finetune", "finetune_random_init", "input_stats"):
        r = m["protocols"][name]
        assert 0 <= r["miou"] <= 1 and sum(map(sum, r["confusion"])) == 56 * 56   # the test image has no ignored pixel
        assert (out / f"confusion_{name}.png").is_file()
    rc = main([*common, "protocols=[knn]", f"output.path={tmp_path / 'knn'}"])
    assert rc == 2 and "knn needs an image-level task" in capsys.readouterr().err
    rc = main([*common, "data.tile=20", f"output.path={tmp_path / 'odd'}"])
    assert rc == 2 and "not a multiple of the export's patch size 8" in capsys.readouterr().err
