"""`eofm-prep scan` and auto-detection in `eofm-prep run` (the reader-specific checks live beside each reader)."""
import json
import shutil
import subprocess
import sys

from data_prep.cli import main
from tests.conftest import ROOT, SSL4EO_S2A, prep_recipe


def _scan(*args):
    return subprocess.run([sys.executable, "-m", "data_prep", "scan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _archive(tmp_path):
    """A mixed archive: two readable S2 products, one broken product, one file of unknown kind."""
    root = tmp_path / "archive"
    for p in sorted(SSL4EO_S2A.iterdir()):
        shutil.copytree(p, root / "s2" / p.name)
    broken = root / "broken" / sorted(SSL4EO_S2A.iterdir())[0].name
    shutil.copytree(sorted(SSL4EO_S2A.iterdir())[0], broken)
    (broken / "B8.tif").unlink()
    (root / "misc").mkdir()
    (root / "misc" / "mystery.tif").write_bytes(b"II*\x00garbage")
    return root


def test_scan_lists_products_and_reasons_without_writing(tmp_path):
    root = _archive(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    r = _scan(str(root), "--json")
    assert r.returncode == 1                                   # something unreadable
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    readable = [x for x in recs if x["readable"]]
    assert len(readable) == 2 and {x["sensor"] for x in readable} == {"sentinel2_l2a"}
    assert all(x["bands"][0] == "B01" and x["width"] == 264 and x["time"].startswith("2020-") for x in readable)
    reasons = [x["reason"] for x in recs if not x["readable"]]
    assert any("missing band file(s) B08" in why for why in reasons)
    assert any("unknown product kind" in why and "mystery.tif" in why for why in reasons)
    assert sorted(p for p in tmp_path.rglob("*")) == before   # wrote nothing


def test_scan_text_and_exit_zero_when_all_readable():
    r = _scan(str(SSL4EO_S2A))
    assert r.returncode == 0 and r.stdout.count("sentinel2_folder") == 2 and "264x264 @ 10 m" in r.stdout


def test_run_on_a_mixed_archive_records_every_outcome(tmp_path):
    root = _archive(tmp_path)
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [root], out, size=64)), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    outcomes = sorted((p["outcome"], p.get("kind", "?")) for p in m["products"])
    assert outcomes == [("skipped", "?"), ("skipped", "sentinel2_folder"),
                        ("written", "sentinel2_folder"), ("written", "sentinel2_folder")]
    assert m["samples"] == 32


def test_all_nodata_product_is_skipped_with_reason(tmp_path):
    import numpy as np
    import rasterio
    product = tmp_path / "p" / sorted(SSL4EO_S2A.iterdir())[0].name
    shutil.copytree(sorted(SSL4EO_S2A.iterdir())[0], product)
    with rasterio.open(product / "B2.tif", "r+") as dst:
        dst.write(np.zeros((1, dst.height, dst.width), dst.dtypes[0]))
    good = tmp_path / "p" / sorted(SSL4EO_S2A.iterdir())[1].name
    shutil.copytree(sorted(SSL4EO_S2A.iterdir())[1], good)
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [tmp_path / "p"], out, size=64)), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    bad = [p for p in m["products"] if p["outcome"] == "skipped"]
    assert len(bad) == 1 and "no valid pixels (all-nodata or fully masked product)" in bad[0]["reason"]
