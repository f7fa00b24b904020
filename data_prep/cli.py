"""eofm-prep: prepare training shards from EO archives.

  eofm-prep scan SOURCE... [--json]           list products (kind, sensor, date, bands, size) or why unreadable
  eofm-prep run CONFIG.yaml [key=value ...]   archives -> shards + manifest.json (parallel, resumable)
  eofm-prep merge DATASET                     write manifest.json after the parts of a split run
  eofm-prep verify DATASET                    re-read a dataset and check it against its manifest
"""
from __future__ import annotations

import argparse
import logging
import sys

from data_prep.recipe import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eofm-prep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="prepare shards and manifest.json from a prep recipe",
                       description="Read the products named by the recipe, cut chips, write WebDataset "
                                   "shards and manifest.json into output.path. Re-running a finished "
                                   "dataset with the same recipe does nothing.")
    from data_prep.config import PrepConfig
    from data_prep.recipe import describe

    r.epilog = "recipe keys (YAML sections, or dotted key=value overrides):\n" + describe(PrepConfig)
    r.formatter_class = argparse.RawDescriptionHelpFormatter
    r.add_argument("config", help="prep recipe (YAML), e.g. configs/prep/quickstart.yaml")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides of recipe keys, e.g. chips.size=64 output.path=runs/data")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--workers", type=int, default=0, help="local worker processes (default 0: one per CPU core)")
    r.add_argument("--part", type=int, default=None,
                   help="this machine's part (0-based) of a run split over several machines; default from "
                        "SLURM_ARRAY_TASK_ID/COUNT, EOFM_PART/EOFM_PARTS or RANK/WORLD_SIZE, else 0")
    r.add_argument("--parts", type=int, default=None, help="number of parts the run is split into (default 1)")
    r.add_argument("--dask", metavar="SCHEDULER", default=None,
                   help="run the workers on a Dask cluster (scheduler address, e.g. tcp://host:8786); its workers "
                        "must reach the sources and output.path. Needs eofm[dask]")
    m = sub.add_parser("merge", help="write manifest.json once every part of a split run is done",
                       description="Read plan.json and the ledger of a dataset folder and write manifest.json "
                                   "(the last part of a split run does this by itself).")
    m.add_argument("dataset", help="dataset folder or fsspec URL")
    sc = sub.add_parser("scan", help="list the products under folders or URLs; writes nothing",
                        description="Walk each SOURCE (folder, product, or fsspec URL), detect every product's "
                                    "kind, open it, and list kind, sensor, date, bands and size, or the reason it "
                                    "cannot be read. Exit status 1 when something is unreadable.")
    sc.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, product path, or fsspec URL")
    sc.add_argument("--json", action="store_true", help="one JSON object per product per line")
    v = sub.add_parser("verify", help="check a dataset against its manifest",
                       description="Re-read every shard: existence, size, sha256, sample count, "
                                   "sample schema, and recomputed statistics vs manifest.json.")
    v.add_argument("dataset", help="dataset folder or fsspec URL (the folder holding manifest.json)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _report(path: str, m: dict) -> int:
    skipped = [p for p in m["products"] if p["outcome"] != "written"]
    print(f"dataset: {path}  samples: {m['samples']}  shards: {len(m['shards'])}  "
          f"products written: {len(m['products']) - len(skipped)}  skipped: {len(skipped)}")
    for p in skipped:
        print(f"  skipped {p['path']}: {p.get('reason')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from data_prep.manifest import ManifestError
    from data_prep.run import PrepError
    try:
        if args.command == "run":
            from data_prep.config import PrepConfig
            from data_prep.plan import part_from_env
            from data_prep.recipe import load_recipe
            from data_prep.run import run
            cfg = load_recipe(PrepConfig, args.config, args.overrides)
            part, parts = (args.part, args.parts) if args.parts else (part_from_env() or (0, 1))
            m = run(cfg, progress=not args.quiet, workers=args.workers, part=part or 0, parts=parts,
                    scheduler=args.dask)
            if m is None:
                print(f"dataset: {cfg.output.path}  part {part}/{parts} done; other parts still running")
                return 0
            return _report(cfg.output.path, m)
        if args.command == "merge":
            from data_prep.run import merge
            return _report(args.dataset, merge(args.dataset))
        if args.command == "scan":
            import json
            from data_prep.scan import line as describe_line, scan
            bad = 0
            for rec in scan(args.sources):
                bad += not rec["readable"]
                print(json.dumps(rec) if args.json else describe_line(rec), flush=True)
            return 1 if bad else 0
        from data_prep.verify import verify
        problems = verify(args.dataset, progress=not args.quiet)
        for line in problems:
            print(f"PROBLEM {line}")
        print(f"{args.dataset}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    except (ConfigError, PrepError, ManifestError) as err:
        print(f"eofm-prep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
