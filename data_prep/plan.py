"""What a prep run does, as pure functions of the input list: units, parts, workers.

A unit is one product (or, for multi-date series, the products of one footprint). Units are
ordered by their paths, so every node that lists the same archive computes the same plan.
Part p of P takes units p, p+P, p+2P, ...; a part's local workers are dealt its remaining
units the same way.
"""
from __future__ import annotations

import hashlib
import os


def unit_id(kind: str, paths: list[str]) -> str:
    return hashlib.sha1(("\n".join([kind, *paths])).encode()).hexdigest()[:16]


def make_unit(kind: str, paths: list[str]) -> dict:
    return {"id": unit_id(kind, paths), "kind": kind, "paths": list(paths)}


def units_from_products(found: list[tuple[str, str]]) -> list[dict]:
    """One unit per product, ordered by path."""
    return [make_unit(kind, [path]) for kind, path in sorted(found, key=lambda kp: kp[1])]


def part_of(units: list, part: int, parts: int) -> list:
    if not (parts >= 1 and 0 <= part < parts):
        raise ValueError(f"part {part} of {parts}: need 0 <= part < parts")
    return units[part::parts]


def deal(units: list, workers: int) -> list[list]:
    """Round-robin units over `workers` lists (empty lists dropped)."""
    return [units[w::workers] for w in range(workers) if units[w::workers]]


def part_from_env(env: dict | None = None) -> tuple[int, int] | None:
    """(part, parts) from a SLURM array job or torchrun-style variables, if any are set."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        if "SLURM_ARRAY_TASK_COUNT" in env:
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            return task - lo, int(env["SLURM_ARRAY_TASK_COUNT"])
        lo, hi = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_MAX", task))
        return task - lo, hi - lo + 1
    if "EOFM_PART" in env and "EOFM_PARTS" in env:
        return int(env["EOFM_PART"]), int(env["EOFM_PARTS"])
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return None
