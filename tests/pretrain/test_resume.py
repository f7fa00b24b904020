"""Real multi-process runs of the engine: SIGTERM -> checkpoint -> bit-exact resume (ZeRO-3,
2 ranks via launch/torchrun.sh), then elastic resume of that checkpoint on 1 rank and on 3 ranks
(universal checkpoints; 3 ranks via launch/deepspeed_hostfile.sh)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from pretrain.engine import lr_multiplier
from tests.conftest import ROOT, prep_ssl4eo

pytestmark = pytest.mark.slow

SCHEDULE = 200      # schedule length, independent of train.steps, so runs of different lengths share it
LR, WARMUP, MIN_LR = 1e-3, 2, 1e-5


def _env(**extra):
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env=None, ok=(0,)):
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env or _env(), timeout=600)
    assert r.returncode in ok, f"{' '.join(map(str, args))} -> {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prep_ssl4eo(tmp_path_factory.mktemp("resume_data"), "data")


def _args(data, run, *more):
    return ["configs/pretrain/mae_quickstart.yaml", f"data.path={data}", f"train.out={run}", "data.batch_size=8",
            "data.num_workers=0", "model.depth=1", "objective.decoder_depth=1", "objective.decoder_dim=32",
            "train.log_every=1", "train.progress=false", "train.checkpoint_every=100", "engine.zero_stage=3",
            f"optim.lr={LR}", f"optim.min_lr={MIN_LR}", f"optim.warmup_steps={WARMUP}",
            f"optim.schedule_steps={SCHEDULE}", *more]


def test_sigterm_exact_resume_and_elastic_resume(shards, tmp_path):
    torchrun = ["bash", "launch/torchrun.sh"]
    env2 = _env(NPROC="2")

    # 1. a long run, SIGTERM to the whole process group (as SLURM/kill do) once step 2 is logged
    run = tmp_path / "run"
    proc = subprocess.Popen(torchrun + _args(shards, run, "train.steps=200", "data.num_workers=1"), cwd=ROOT,
                            env=env2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(_metrics(run)) >= 2:
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.2)
    out, err = proc.communicate(timeout=300)
    assert "stopped by SIGTERM" in err, err[-4000:]
    stopped = _metrics(run)[-1]["step"]
    assert 2 <= stopped < 200
    tag = (run / "checkpoints" / "latest").read_text().strip()
    assert tag == f"step{stopped:08d}"
    meta = json.loads((run / "checkpoints" / tag / "eofm.json").read_text())
    assert meta["step"] == stopped and meta["world"] == 2 and meta["zero_stage"] == 3
    assert {p.name for p in (run / "checkpoints" / tag).glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}

    # 2. resume to stopped+2 gives bit-for-bit the losses of an uninterrupted run
    end = stopped + 2
    straight = tmp_path / "straight"
    _run(torchrun + _args(shards, straight, f"train.steps={end}", "data.num_workers=1"), env=env2)
    _run(torchrun + _args(shards, run, f"train.steps={end}", "data.num_workers=1"), env=env2)
    resumed = [m for m in _metrics(run) if m["step"] > stopped]
    reference = [m for m in _metrics(straight) if m["step"] > stopped]
    assert [m["step"] for m in resumed] == [stopped + 1, end]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in reference]
    assert [m["samples_seen"] for m in resumed] == [m["samples_seen"] for m in reference]

    # 3. elastic: the 2-rank ZeRO-3 checkpoint continues on 1 rank and on 3 ranks
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    before = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=f"step{end:08d}")
    one, three = tmp_path / "one", tmp_path / "three"
    shutil.copytree(run, one)
    shutil.copytree(run, three)
    _run([sys.executable, "-m", "pretrain"] + _args(shards, one, f"train.steps={end + 1}"))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=3\n")
    _run(["bash", "launch/deepspeed_hostfile.sh"] + _args(shards, three, f"train.steps={end + 1}"),
         env=_env(HOSTFILE=str(hostfile), NO_SSH="1", NODE_RANK="0", MASTER_PORT=str(_port())))
    for folder, world in ((one, 1), (three, 3)):
        last = _metrics(folder)[-1]
        assert last["step"] == end + 1 and last["samples_seen"] == end * 16 + 8 * world
        # the scheduler continued (not restarted at warm-up)
        assert last["lr"] == pytest.approx(LR * lr_multiplier(end + 1, SCHEDULE, WARMUP, MIN_LR / LR), rel=1e-6)
        meta = json.loads((folder / "checkpoints" / f"step{end + 1:08d}" / "eofm.json").read_text())
        assert meta["world"] == world and meta["data_generation"] == 1          # a new seeded data stream
        assert not (folder / "checkpoints" / "universal").exists()            # superseded by the new save
        after = get_fp32_state_dict_from_zero_checkpoint(str(folder / "checkpoints"), tag=f"step{end + 1:08d}")
        # one Adam step from the saved weights (a restart from scratch would be far off)
        step_size = max((after[k] - before[k]).abs().max().item() for k in before)
        assert 0 < step_size < 3 * LR, step_size
