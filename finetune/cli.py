"""eofm-finetune: evaluate an exported encoder on a labelled task.

  eofm-finetune CONFIG.yaml [key=value ...]

Loads the export (model.export: model.safetensors + config.json; the pretraining recipe is not
needed), builds a labelled task (data.format: a prepared eofm dataset with a label source, a
generic images/ + labels/ folder, EuroSAT class folders, BigEarthNet with reference maps),
splits it (data.repeats times for small sets), runs the protocols (linear probe and k-NN on
frozen features, fine-tuning with layer-wise lr decay) under every partial-label regime
(data.label_fractions x data.label_seeds), each also on a randomly initialised twin of the
encoder, next to an input-statistics baseline (a linear model on per-band mean and std, or on
each pixel's bands), and writes metrics.json, confusion_<protocol>.png and the resolved
config.yaml into output.path.
"""
from __future__ import annotations

import argparse
import sys

from data_prep.recipe import ConfigError

EXAMPLE = """
example:
  eofm-finetune configs/finetune/quickstart.yaml finetune.epochs=10 output.path=runs/ft10
  eofm-finetune configs/finetune/eurosat_dev.yaml model.export=runs/quickstart/export
  eofm-finetune configs/finetune/eurosat.yaml data.path=/data/EuroSAT_MS data.label_fractions=[0.01,0.1,1.0] data.label_seeds=[0,1,2]
"""


def _parser() -> argparse.ArgumentParser:
    from data_prep.recipe import describe
    from finetune.config import FinetuneConfig

    keys = "recipe keys (YAML sections, or dotted key=value overrides):\n" + describe(FinetuneConfig)
    p = argparse.ArgumentParser(prog="eofm-finetune", description=__doc__, epilog=keys + "\n" + EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="fine-tuning recipe (YAML), e.g. configs/finetune/quickstart.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides of recipe keys, e.g. finetune.epochs=10 "
                        "protocols=[linear_probe] (values are read as YAML)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from data_prep.manifest import ManifestError
    from finetune import FinetuneError
    try:
        from data_prep.recipe import load_recipe
        from finetune.config import FinetuneConfig
        from finetune.report import table
        from finetune.train import run
        cfg = load_recipe(FinetuneConfig, args.config, args.overrides)
        report = run(cfg, progress=not args.quiet)
    except (ConfigError, FinetuneError, ManifestError) as err:
        print(f"eofm-finetune: error: {err}", file=sys.stderr)
        return 2
    print(f"labels: {report['label_source']['name']} (derived from the chips: a pipeline check, not a benchmark)"
          if report["label_source"].get("note") else f"labels: {report['label_source']['name']}")
    first = next(iter(report["protocols"].values()))
    repeats = f" x {report['repeats']}" if report["repeats"] > 1 else ""
    print(f"{report['task']}: {report['n_samples']} samples ({report['split']['method']} split{repeats}; "
          f"train {first['n_train']} at {max(report['label_fractions']):.0%} labels, test {first['n_test']}); "
          f"classes {({k: v for k, v in report['class_counts']['all'].items() if v}) or report['label_source']['classes']}")
    print(table(report))
    print(f"outputs: {cfg.output.path}/metrics.json, confusion_<protocol>.png, config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
