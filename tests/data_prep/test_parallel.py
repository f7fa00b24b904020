"""Parallel, split and resumed prep runs give exactly the samples of one uninterrupted run."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_prep.plan import deal, part_from_env, part_of
from data_prep.sample import decode
from data_prep.tario import iter_tar_samples
from tests.conftest import MAJOR_TOM, ROOT, SSL4EO_S2A, prep_recipe

SOURCES = [MAJOR_TOM, SSL4EO_S2A]


def _samples(out) -> dict[str, str]:
    """key -> digest of the decoded sample (image, valid, metadata), over every shard in the manifest."""
    m = json.loads((out / "manifest.json").read_text())
    seen = {}
    for rec in m["shards"]:
        with open(out / rec["path"], "rb") as f:
            for key, files in iter_tar_samples(f):
                s = decode(files, key)
                assert key not in seen, f"duplicate sample {key}"
                seen[key] = hashlib.sha256(s["image"].tobytes() + s["valid"].tobytes() + files["json"]).hexdigest()
    assert len(seen) == m["samples"] == sum(r["samples"] for r in m["shards"])
    return seen


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "ds"
    r = _cli("run", str(prep_recipe(tmp, SOURCES, out, size=32, target_shard_mb=0.5)), "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    return _samples(out)


def test_two_workers_equal_one(tmp_path, reference):
    out = tmp_path / "ds"
    r = _cli("run", str(prep_recipe(tmp_path, SOURCES, out, size=32, target_shard_mb=0.5)), "--quiet", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert _samples(out) == reference


def test_two_part_split_merges_to_the_single_run(tmp_path, reference):
    out = tmp_path / "ds"
    recipe = str(prep_recipe(tmp_path, SOURCES, out, size=32, target_shard_mb=0.5))
    first = _cli("run", recipe, "--quiet", "--part", "1", "--parts", "2")
    assert first.returncode == 0 and "part 1/2 done" in first.stdout
    assert not (out / "manifest.json").exists()
    assert _cli("merge", str(out)).returncode == 2                 # part 0 still missing: refused
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    second = _cli("run", recipe, "--quiet", env=env)               # the last part writes the manifest
    assert second.returncode == 0, second.stderr
    assert _samples(out) == reference
    assert _cli("verify", str(out), "--quiet").returncode == 0


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path, reference):
    out = tmp_path / "ds"
    recipe = str(prep_recipe(tmp_path, SOURCES, out, size=32, target_shard_mb=0.5))
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", "run", recipe, "--quiet", "--workers", "1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ledger = out / "ledger"
    deadline = time.time() + 120
    while time.time() < deadline and not (ledger.exists() and any(p.suffix == ".json" for p in ledger.iterdir())):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)                            # mid-run, after at least one sealed shard
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    sealed_before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()
                     if any(p.name in e.name for e in ledger.iterdir())}
    r = _cli("run", recipe, "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert _samples(out) == reference
    for name, mtime in sealed_before.items():                      # finished shards are never rewritten
        assert (out / "shards" / name).stat().st_mtime_ns == mtime
    assert not [p for p in out.rglob("*") if p.is_file() and (p.name.endswith(".part") or ".tmp" in p.parts)]


def test_plan_functions_are_pure_and_cover_everything():
    units = list(range(10))
    parts = [part_of(units, p, 3) for p in range(3)]
    assert sorted(sum(parts, [])) == units and parts[0] == [0, 3, 6, 9]
    assert sorted(sum(deal(parts[0], 2), [])) == parts[0]
    with pytest.raises(ValueError):
        part_of(units, 3, 3)


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 8)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "9"}, (3, 10)),
    ({"EOFM_PART": "2", "EOFM_PARTS": "4"}, (2, 4)),
    ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
    ({}, None),
])
def test_part_from_env(env, expected):
    assert part_from_env(env) == expected


def test_dask_backend_equals_the_local_run(tmp_path, reference):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "ds"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        r = _cli("run", str(prep_recipe(tmp_path, SOURCES, out, size=32, target_shard_mb=0.5)), "--quiet",
                 "--dask", c.scheduler_address)
    assert r.returncode == 0, r.stderr
    assert _samples(out) == reference
    assert len({p.name.split("-w")[1][:2] for p in (out / "shards").iterdir()}) == 2   # two job streams
