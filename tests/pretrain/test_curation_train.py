"""Curation inside real training runs (eofm-pretrain as users start it): rounds on schedule,
the keep-list drives the stream, and a resumed run continues with the same selection and batches."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, prep_ssl4eo

TINY = ["model.size=tiny", "model.depth=1", "model.patch_size=8", "objective.decoder_dim=32",
        "objective.decoder_depth=1", "objective.decoder_heads=2", "data.batch_size=8", "data.num_workers=0",
        "data.shuffle_buffer=8", "optim.warmup_steps=2", "optim.schedule_steps=8", "train.log_every=1",
        "train.progress=false", "train.log_batch_keys=true", "train.keep_checkpoints=5"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(prep_ssl4eo(tmp_path_factory.mktemp("curation_train"), target_shard_mb=0.1))


def _run(dataset, out, *extra):
    r = subprocess.run([sys.executable, "-m", "pretrain", "configs/pretrain/mae_quickstart.yaml", f"data.path={dataset}",
                        f"train.out={out}", *TINY, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _keys(out):
    return {r["step"]: r["keys"] for r in map(json.loads, (out / "batch_keys.jsonl").read_text().splitlines())}


CURATE = ["curation.warmup_steps=2", "curation.every_steps=3", "curation.levels=[6,2]", "curation.keep_fraction=0.4",
          "curation.embed_batch_size=16"]


def test_kmeans_curated_run_resumes_exactly(dataset, tmp_path):
    cur = ["curation.mode=kmeans", *CURATE]
    full = _run(dataset, tmp_path / "full", "train.steps=8", "train.checkpoint_every=100", *cur)
    _run(dataset, tmp_path / "cut", "train.steps=4", "train.checkpoint_every=100", *cur)
    resumed = _run(dataset, tmp_path / "cut", "train.steps=8", "train.checkpoint_every=100", *cur)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed[4:]] == [r["loss"] for r in full[4:]]
    keys_full, keys_cut = _keys(tmp_path / "full"), _keys(tmp_path / "cut")
    assert all(keys_cut[s] == keys_full[s] for s in range(1, 9))
    rounds = [json.loads(x) for x in (tmp_path / "full" / "curation" / "curation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rounds] == [2, 5, 8]
    # after the first round only kept samples are streamed: 40 % of the dataset
    kept = rounds[0]["kept"]
    assert kept == round(0.4 * rounds[0]["embedded"])
    assert len({k for s in (3, 4, 5) for k in keys_full[s]}) <= kept
    assert (tmp_path / "full" / "curation" / "curation_round001.png").is_file()


def test_loss_curated_run_drops_well_learned_samples(dataset, tmp_path):
    metrics = _run(dataset, tmp_path / "run", "train.steps=20", "optim.schedule_steps=20", "curation.mode=loss", "curation.loss_ratio=0.9",
                   "curation.loss_stop=1.0", "data.shuffle_buffer=1",
                   "optim.lr=1e-9")      # (almost) no learning: the remembered losses stay comparable
    # 128 samples, batches of 8: from step 17 on, samples come back; the well-learned ones are dropped
    kept = [r["curation_kept_fraction"] for r in metrics]
    assert kept[0] == 1.0 and min(kept) < 1.0
