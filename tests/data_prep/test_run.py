"""`eofm-prep run` / `verify` as users start them, on real products."""
import json
import subprocess
import sys

import numpy as np
import pytest

from data_prep.cli import main
from data_prep.sample import decode, physical
from data_prep.tario import iter_tar_samples
from tests.conftest import DATA, MT_N0400, ROOT, SSL4EO_S2A, needs_shared, prep_recipe


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT, capture_output=True, text=True)


def test_run_writes_shards_manifest_and_verifies(tmp_path):
    out = tmp_path / "ds"
    recipe = prep_recipe(tmp_path, [SSL4EO_S2A], out, size=64)
    assert main(["run", str(recipe), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "eofm-dataset" and m["samples"] == 2 * 16
    assert [p["outcome"] for p in m["products"]] == ["written", "written"]
    assert all(p["checksum"].startswith("sha256:") for p in m["products"])
    assert (out / "config.yaml").is_file()
    stats = m["sensors"]["sentinel2_l2a"]["stats"]
    assert set(stats) == {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"}
    assert 0.0 < stats["B04"]["mean"] < 0.5 and stats["B04"]["p1"] <= stats["B04"]["mean"] <= stats["B04"]["p99"]
    keys = []
    for shard in m["shards"]:
        with open(out / shard["path"], "rb") as f:
            for key, files in iter_tar_samples(f):
                s = decode(files, key)
                keys.append(key)
                assert s["image"].shape == (1, 12, 64, 64) and s["image"].dtype == np.uint16
                assert -0.2 < physical(s).mean() < 1.0
    assert len(set(keys)) == len(keys) == 32
    assert main(["verify", str(out), "--quiet"]) == 0


def test_verify_detects_a_changed_shard(tmp_path):
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=64)), "--quiet"]) == 0
    shard = next((out / "shards").iterdir())
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = _cli("verify", str(out), "--quiet")
    assert r.returncode == 1 and "sha256 differs" in r.stdout


def test_keys_are_stable_across_runs(tmp_path):
    def keys(out):
        main(["run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=64)), "--quiet"])
        m = json.loads((out / "manifest.json").read_text())
        return [s["sha256"] for s in m["shards"]]
    assert keys(tmp_path / "a") == keys(tmp_path / "b")


def test_bad_products_are_skipped_and_recorded(tmp_path, ssl4eo_copy):
    broken, good = sorted(ssl4eo_copy.iterdir())
    (broken / "B11.tif").unlink()
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [ssl4eo_copy], out, size=64)), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    outcomes = {p["path"].split("/")[-1]: p for p in m["products"]}
    assert outcomes[broken.name]["outcome"] == "skipped" and "B11" in outcomes[broken.name]["reason"]
    assert outcomes[good.name]["outcome"] == "written" and m["samples"] == 16


def test_chip_larger_than_product_is_a_clear_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    r = _cli("run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=512)))
    assert r.returncode == 2
    assert "chip size 512 is larger than the product (264x264 pixels)" in r.stderr
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tar"))


def test_output_holding_a_different_dataset_is_refused(tmp_path):
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=64)), "--quiet"]) == 0
    r = _cli("run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=32)))
    assert r.returncode == 2 and "already holds a different dataset (recipe differs at chips.size: 64 -> 32)" in r.stderr
    # same recipe again: nothing to do, still fine
    assert _cli("run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=64))).returncode == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("user files")
    r = _cli("run", str(prep_recipe(tmp_path, [SSL4EO_S2A], tmp_path / "other", size=64)))
    assert r.returncode == 2 and "is not empty and holds no eofm dataset" in r.stderr


def test_bad_recipe_key_fails_before_work(tmp_path):
    r = _cli("run", str(prep_recipe(tmp_path, [SSL4EO_S2A], tmp_path / "ds")), "chips.sise=3")
    assert r.returncode == 2 and "chips.sise: unknown key" in r.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("cell", ["bundled", "full"])
def test_major_tom_product_chips(tmp_path, cell):
    # bundled: a 300 px window of the cell; full: the whole 1068 px cell from ../shared (optional)
    product, side = (MT_N0400, 300) if cell == "bundled" else \
        (needs_shared(*MT_N0400.relative_to(DATA).parts), 1068)
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [product], out, size=256, min_valid_fraction=0.5)), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == (side // 256) ** 2
    assert m["products"][0]["radiometry"]["add_offset"] == -1000.0


@pytest.mark.parametrize("cmd", [["--help"], ["run", "--help"], ["verify", "--help"]])
def test_help(cmd):
    r = _cli(*cmd)
    assert r.returncode == 0 and "usage" in r.stdout


def test_help_lists_every_recipe_key():
    out = _cli("run", "--help").stdout
    for key in ("sources[].kind", "sources[].paths", "sources[].resampling", "chips.size", "chips.stride",
                "chips.min_valid_fraction", "chips.gsd_m", "chips.per_sensor", "output.path", "output.format",
                "output.target_shard_mb", "output.overwrite"):
        assert key in out, key
