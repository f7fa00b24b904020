"""eofm-pretrain: self-supervised pretraining from prepared shards.

  eofm-pretrain CONFIG.yaml [key=value ...]      train (or resume) as the recipe says
  eofm-pretrain plot RUN_DIR                     redraw training.png from RUN_DIR/metrics.jsonl

Runs as one process, or under torchrun / deepspeed / srun with the same arguments, e.g.
  torchrun --nproc_per_node 8 -m pretrain configs/pretrain/mae_vit_base.yaml train.out=runs/b16
(launch/torchrun.sh, launch/slurm.sbatch and launch/deepspeed_hostfile.sh wrap these).
The run folder (train.out) receives config.yaml (the resolved recipe), metrics.jsonl,
tensorboard/ (when installed), checkpoints/ (DeepSpeed; resumed automatically, also on another
world size), training.png and reconstructions.png.

Exit status: 0 done; 2 bad recipe or data; 3 non-finite loss (the last good checkpoint is
kept); 75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint (run again to resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

from data_prep.recipe import ConfigError


def _parser() -> argparse.ArgumentParser:
    from data_prep.recipe import describe
    from pretrain.config import OBJECTIVE_SPECS, PretrainConfig

    keys = describe(PretrainConfig, sections={"objective": OBJECTIVE_SPECS})
    p = argparse.ArgumentParser(prog="eofm-pretrain", description=__doc__,
                                epilog="recipe keys (YAML sections, or dotted key=value overrides):\n" + keys,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="pretraining recipe (YAML), e.g. configs/pretrain/quickstart.yaml; "
                                  "or the word 'plot' followed by a run folder")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. objective.mask_ratio=0.8 train.steps=100 engine.zero_stage=2")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher; eofm reads LOCAL_RANK from the environment")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.config == "plot":
        if len(args.overrides) != 1:
            print("eofm-pretrain: error: usage: eofm-pretrain plot RUN_DIR", file=sys.stderr)
            return 2
        from pretrain.plots import plot_run
        try:
            print(plot_run(args.overrides[0]))
        except FileNotFoundError as err:
            print(f"eofm-pretrain: error: {err}", file=sys.stderr)
            return 2
        return 0
    from data_prep.manifest import ManifestError
    from data_prep.recipe import load_recipe
    from pretrain.config import PretrainConfig
    try:
        cfg = load_recipe(PretrainConfig, args.config, args.overrides)
        import torch
        if cfg.engine.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("engine.precision: fp16 needs a GPU (DeepSpeed has no fp16 on CPU); use bf16 or fp32")
        from pretrain.models import BACKBONES
        if cfg.engine.activation_checkpointing and not hasattr(BACKBONES[cfg.model.arch], "set_grad_checkpointing"):
            raise ConfigError(f"engine.activation_checkpointing: backbone {cfg.model.arch!r} cannot recompute "
                              "activations (no set_grad_checkpointing)")
        from data_prep.manifest import read
        read(cfg.data.path)  # fail before starting processes/engines if the data is not there
    except (ConfigError, ManifestError) as err:
        print(f"eofm-pretrain: error: {err}", file=sys.stderr)
        return 2
    from pretrain.checkpoint import CheckpointError
    from pretrain.engine import EXIT_PREEMPTED, teardown_distributed
    from pretrain.train import NonFiniteLoss, Stopped, train
    try:
        record = train(cfg)
    except NonFiniteLoss as err:          # every rank saw it (engine.agree)
        teardown_distributed()
        print(f"eofm-pretrain: error: {err}", file=sys.stderr)
        return 3
    except CheckpointError as err:
        print(f"eofm-pretrain: error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:                # every rank stops at the same step
        teardown_distributed()
        print(f"eofm-pretrain: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    teardown_distributed()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"run folder: {cfg.train.out}  final loss: {record.get('loss', float('nan')):.4f}  "
              f"step: {record.get('step')}  checkpoints: {cfg.train.out}/checkpoints")
    return 0


def run() -> None:
    """The command's entry point (`eofm-pretrain`, `python -m pretrain`): main(), then leave with
    its exit code even if the interpreter's own shutdown hangs (joining a stuck loader worker,
    tearing down a communication library): by then the run's work is saved, and a hung process
    holds a node, or a CI job, until someone kills it. Not for in-process callers of main()."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()

    grace = float(os.environ.get("EOFM_EXIT_GRACE_S", 120))

    def leave():
        time.sleep(grace)
        print(f"eofm-pretrain: the interpreter's shutdown took over {grace:g} s; exiting",
              file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=leave, name="exit-watchdog", daemon=True).start()
    sys.exit(code)


if __name__ == "__main__":
    run()
