"""Product-folder helpers shared by readers: list a folder, pick its one product, read sidecar JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from data_prep.sources.scene import ProductError


def one_product(path: str, group: Callable[[list[str]], dict], what: str, layout: str) -> tuple[str, object, list[str]]:
    """(product id, its entries, all names in the folder) for the single product in folder `path`;
    `group(names)` maps product id -> its entries.

    Errors name the folder: not a folder (`layout` says what one looks like), no product,
    or several products (each product belongs in its own folder).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ProductError(f"{path}: not a folder ({layout})")
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise ProductError(f"{path}: cannot list folder: {err}") from None
    products = group(names)
    if not products:
        raise ProductError(f"{path}: no {what} files found ({layout})")
    if len(products) > 1:
        raise ProductError(f"{path}: holds the files of {len(products)} {what} products ({', '.join(products)}); "
                           "put each product in its own folder")
    (pid, entries), = products.items()
    return pid, entries, names


def read_sidecar_json(folder: Path, name: str = "metadata.json") -> dict:
    """A product's JSON sidecar ({} when absent; ProductError when unreadable)."""
    p = Path(folder) / name
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise ProductError(f"{p}: unreadable {name}: {err}") from None
