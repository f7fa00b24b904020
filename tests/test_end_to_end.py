"""prep -> 2-rank DeepSpeed pretraining under torchrun -> resume -> export -> finetune, on real data."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import MT_N9999, ROOT, SSL4EO_S2A, prep_recipe

pytestmark = pytest.mark.slow


def _run(args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_prep_pretrain_resume_export_finetune(tmp_path):
    data = tmp_path / "data"
    _run([sys.executable, "-m", "data_prep", "run", str(prep_recipe(tmp_path, [SSL4EO_S2A, MT_N9999], data, size=32)),
          "--quiet"])
    run = tmp_path / "pretrain"
    common = ["configs/pretrain/mae_quickstart.yaml", f"data.path={data}", f"train.out={run}", "data.batch_size=8",
              "data.num_workers=1", "engine.zero_stage=2", "train.log_every=1", "train.checkpoint_every=3",
              "train.progress=false", "model.depth=2", "objective.decoder_depth=1", "optim.warmup_steps=2",
              "train.log_batch_keys=true"]
    def torchrun():                      # a free port per launch: a fixed one collides with anything else
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "pretrain"]
    _run(torchrun() + common + ["train.steps=6"])
    first = _metrics(run)
    assert [m["step"] for m in first] == [1, 2, 3, 4, 5, 6]
    assert all(m["samples_seen"] == m["step"] * 8 * 2 for m in first)     # 2 ranks x batch 8
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000006"
    assert {p.name for p in (run / "checkpoints" / "step00000006").glob("zero_pp_rank_*")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert (run / "config.yaml").is_file() and (run / "training.png").is_file() and (run / "reconstructions.png").is_file()

    # resume: continue from step 6 to 9 (same total schedule length is not required)
    _run(torchrun() + common + ["train.steps=9"])
    resumed = _metrics(run)[len(first):]
    assert [m["step"] for m in resumed] == [7, 8, 9]
    assert resumed[0]["samples_seen"] == 7 * 16
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in resumed)

    # exact data resume: the restarted run saw exactly the batches of an uninterrupted 9-step run
    straight = tmp_path / "straight"
    _run(torchrun() + [a.replace(f"train.out={run}", f"train.out={straight}") for a in common] + ["train.steps=9"])
    keys = lambda r: [json.loads(line) for line in (r / "batch_keys.jsonl").read_text().splitlines()]  # noqa: E731
    assert [k["step"] for k in keys(run)] == list(range(1, 10))
    assert keys(run) == keys(straight)

    export = tmp_path / "export"
    _run([sys.executable, "-m", "pretrain.export", str(run), str(export)])
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["steps"] == 9 and cfg["format"] == "eofm-export" and cfg["patch_size"] == 4
    assert cfg["normalization"]["sentinel2_l2a"]["bands"][3] == "B04"
    from pretrain.export import load_exported
    encoder, _ = load_exported(export)
    # the export holds the trained weights of the last checkpoint, not a fresh model
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag="step00000009")
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, state["backbone." + k]), k

    ft = tmp_path / "finetune"
    r = _run([sys.executable, "-m", "finetune", "configs/finetune/ndvi_cover.yaml", f"model.export={export}",
              f"data.path={data}", f"output.path={ft}", "finetune.epochs=1"])
    report = json.loads((ft / "metrics.json").read_text())
    for protocol in ("linear_probe", "finetune"):
        assert 0.0 <= report["protocols"][protocol]["accuracy"] <= 1.0
    assert "accuracy" in r.stdout
