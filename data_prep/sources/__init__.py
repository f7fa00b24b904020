"""Source readers: one module per archive kind, registered in SOURCES (kind -> find, open)."""
from data_prep.sources.scene import ProductError, Scene, Window
from data_prep.sources import sentinel2_folder

# kind -> module with `find_products(path) -> list[str]` and `open_product(path, **opts) -> Scene`
SOURCES = {
    "sentinel2_folder": sentinel2_folder,
}

__all__ = ["SOURCES", "ProductError", "Scene", "Window"]
