"""launch/*.sh dry runs: the command each node would run, from the environment a scheduler gives.
(Real runs of launch/torchrun.sh and launch/deepspeed_hostfile.sh: tests/pretrain/test_resume*.py.)"""
import os
import subprocess

import pytest

from tests.conftest import ROOT


def _dry(script, tmp_path, **env):
    full = {**os.environ, "DRY_RUN": "1", "PYTHON": "python3", **env}
    for k in ("SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID", "MASTER_ADDR"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run(["bash", f"launch/{script}", "configs/pretrain/mae_quickstart.yaml", "train.steps=5"], cwd=ROOT,
                          capture_output=True, text=True, env=full, timeout=60)


@pytest.mark.parametrize("script", ["torchrun.sh", "slurm.sbatch", "deepspeed_hostfile.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", f"launch/{script}"], cwd=ROOT).returncode == 0


def test_torchrun_single_and_multi_node(tmp_path):
    r = _dry("torchrun.sh", tmp_path, NPROC="4")
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "[node 0 of 1] python3 -m torch.distributed.run --nnodes 1 --nproc_per_node 4 --standalone "
        "-m pretrain configs/pretrain/mae_quickstart.yaml train.steps=5"]
    r = _dry("torchrun.sh", tmp_path, NPROC="8", NNODES="3", MASTER_ADDR="head", MASTER_PORT="1234")
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all("--nnodes 3 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint head:1234 "
                                   "--rdzv_id eofm -m pretrain" in line for line in lines)
    r = _dry("torchrun.sh", tmp_path, NNODES="2")
    assert r.returncode != 0 and "MASTER_ADDR" in r.stderr


def test_slurm_rendezvous_from_the_allocation(tmp_path):
    # SLURM is not installed here: a stand-in scontrol expands the node list as SLURM would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_NUM_NODES="2",
               SLURM_GPUS_ON_NODE="8", SLURM_JOB_ID="4242")
    r = _dry("slurm.sbatch", tmp_path, **env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in lines] == ["[gpu07 node 0 of 2", "[gpu08 node 1 of 2"]
    assert all("--nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint gpu07:29500 --rdzv_id 4242 "
               "-m pretrain configs/pretrain/mae_quickstart.yaml train.steps=5" in line for line in lines)
    r = _dry("slurm.sbatch", tmp_path)
    assert r.returncode != 0 and "not inside a SLURM allocation" in r.stderr


def test_deepspeed_hostfile(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n")
    r = _dry("deepspeed_hostfile.sh", tmp_path, HOSTFILE=str(hosts))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"--hostfile {hosts} --master_addr node-a --master_port 29500 --module pretrain" in out
    assert "[node-a node 0 of 2]" in out and "--no_ssh --node_rank 1" in out.splitlines()[-1]
    r = _dry("deepspeed_hostfile.sh", tmp_path, HOSTFILE=str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such hostfile" in r.stderr
