"""`eofm-prep scan`: what products are there, of which kind, readable or why not. Writes nothing."""
from __future__ import annotations

from typing import Iterator

from data_prep.sources import ProductError, find_products, open_product


def scan(urls: list[str]) -> Iterator[dict]:
    """One record per product (or unreadable entry) found under each url."""
    for url in urls:
        try:
            found, unknown = find_products(url)
        except ProductError as err:
            yield {"path": url, "readable": False, "reason": str(err)}
            continue
        for kind, path in found:
            try:
                s = open_product(kind, path)
            except ProductError as err:
                yield {"path": path, "kind": kind, "readable": False, "reason": str(err)}
                continue
            yield {"path": path, "kind": kind, "readable": True, "product_id": s.product_id, "sensor": s.sensor,
                   "time": s.time, "bands": s.bands, "width": s.width, "height": s.height, "gsd_m": s.gsd_m,
                   "crs": s.crs, "units": s.units, "notes": s.radiometry.get("notes", [])}
        for path, why in unknown:
            yield {"path": path, "readable": False, "reason": f"{path}: {why}"}


def line(rec: dict) -> str:
    if not rec["readable"]:
        return f"UNREADABLE  {rec['reason']}"
    return (f"{rec['kind']:<18} {rec['sensor']:<16} {rec['time'][:10]}  {len(rec['bands']):>3} bands  "
            f"{rec['width']}x{rec['height']} @ {rec['gsd_m']:g} m  {rec['product_id']}")
