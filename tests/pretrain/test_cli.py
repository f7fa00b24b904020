"""eofm-pretrain / eofm-export as users start them: help and bad input (no training here)."""
import dataclasses
import subprocess
import sys
import typing

import pytest

from pretrain.config import MAESpec, PretrainConfig
from tests.conftest import ROOT


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_pretrain_help_lists_every_recipe_key():
    out = _cli("pretrain", "--help").stdout
    sections = typing.get_type_hints(PretrainConfig)
    sections["objective"] = MAESpec
    for name, spec in sections.items():
        for f in dataclasses.fields(spec):
            assert f"{name}.{f.name}" in out, f"{name}.{f.name}"


@pytest.mark.parametrize("args, message", [
    (["configs/pretrain/mae_quickstart.yaml", "data.path=/nonexistent/ds"], "no manifest.json"),
    (["configs/pretrain/mae_quickstart.yaml", "optim.lr=fast"], "optim.lr: expected float"),
    (["configs/missing.yaml"], "recipe file not found"),
])
def test_pretrain_bad_input_is_one_clear_line(args, message):
    r = _cli("pretrain", *args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_export_of_a_folder_without_checkpoint(tmp_path):
    r = _cli("pretrain.export", str(tmp_path), str(tmp_path / "out"))
    assert r.returncode == 2 and "no DeepSpeed checkpoint here" in r.stderr


def test_load_exported_refuses_foreign_folders(tmp_path):
    from pretrain.export import ExportError, load_exported
    with pytest.raises(ExportError, match="not an eofm export"):
        load_exported(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError, match="format='something-else'"):
        load_exported(tmp_path)


@pytest.mark.parametrize("module", ["pretrain", "pretrain.export", "finetune", "data_prep"])
def test_help(module):
    r = _cli(module, "--help")
    assert r.returncode == 0 and "usage" in r.stdout


def test_fp16_without_gpu_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    r = _cli("pretrain", "configs/pretrain/mae_quickstart.yaml", "engine.precision=fp16", "data.path=../shared/data/none")
    assert r.returncode == 2 and "fp16 needs a GPU" in r.stderr


def test_a_hung_interpreter_shutdown_still_exits_with_the_runs_code():
    """`python -m pretrain` leaves after EOFM_EXIT_GRACE_S even if shutdown hangs (here an exit
    handler that sleeps for an hour), with main()'s exit code."""
    import os
    code = ("import atexit, time, pretrain.cli as c; c.main = lambda: 75; "
            "atexit.register(time.sleep, 3600); c.run()")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "EOFM_EXIT_GRACE_S": "2"})
    assert r.returncode == 75 and "shutdown took over 2 s" in r.stderr
