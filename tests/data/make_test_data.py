"""Rebuild tests/data from ../shared/data/real (run from the repository root):

    python tests/data/make_test_data.py [../shared/data/real]

Small products are copied byte for byte. Large ones are cut to a window of the real product:
same folder and file names, same GeoTIFF dtype, CRS, nodata, tags and compression, pixels copied
unchanged, georeferencing moved to the window (`window_transform`). Bands of different
resolutions are cut to the same ground window (from the top-left corner), so they stay aligned.
Previews (thumbnail.png, THUMBNAIL.jpg) are left out. The Sentinel-2 L2A products of SSL4EO-S12
are not here: the tests read the copies in data/quickstart/S2L2A/SSL4EO-S12.
"""
import shutil
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/real")
DST = Path(__file__).resolve().parent

# copied unchanged (folder -> every file below it)
COPY = ["BigEarthNet", "EuroSAT_MS"]

# folder -> (what to cut, ground window from the top-left corner)
MT = "Major-TOM-Core/S2L2A"
CUT = {
    # baseline 04.00 cell: 3000 m = 300 px at 10 m, 150 at 20 m, 50 at 60 m
    f"{MT}/0U/0U_199R/S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419": ("metres", 3000),
    # baseline N9999 cell (a larger 7200 m cut of it is data/quickstart's): 960 m = 96/48/16 px
    f"{MT}/199U/199U_1099R/S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543": ("metres", 960),
    # two dates of one location, dB float32 on EPSG:4326 (264 px): the same 128 px window of each
    "SSL4EO-S12/s1/0000200/S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457": ("pixels", 128),
    "SSL4EO-S12/s1/0000200/S1A_IW_GRDH_1SDV_20200903T131212_20200903T131237_034195_03F8F5_AC1C": ("pixels", 128),
    # EnMAP L2A patches (128 px at 30 m, 224 bands): 64 px of the first, 32 px of the second
    "HySpecNet-11k/ENMAP01-____L2A-DT0000004950_20221103T162438Z_001_V010110_20221118T145147Z-Y01460273_X03110438":
        ("pixels", 64),
    "HySpecNet-11k/ENMAP01-____L2A-DT0000004950_20221103T162438Z_001_V010110_20221118T145147Z-Y01460273_X04390566":
        ("pixels", 32),
}
PREVIEWS = {".png", ".jpg"}


def cut_raster(src_path: Path, dst_path: Path, unit: str, size: float) -> None:
    with rasterio.open(src_path) as s:
        n = round(size / s.res[0]) if unit == "metres" else int(size)
        win = Window(0, 0, min(n, s.width), min(n, s.height))
        profile = s.profile | {"width": win.width, "height": win.height, "transform": s.window_transform(win)}
        if profile.get("tiled") and (profile["blockxsize"] > win.width or profile["blockysize"] > win.height):
            profile["tiled"] = False                   # a tile larger than the image: write strips
        if not profile.get("tiled"):
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(dst_path, "w", **profile) as d:
            d.write(s.read(window=win))
            d.update_tags(**s.tags())
            for b in range(1, s.count + 1):
                if s.tags(b):
                    d.update_tags(b, **s.tags(b))
                if s.descriptions[b - 1]:
                    d.set_band_description(b, s.descriptions[b - 1])
            d.colorinterp = s.colorinterp


def main() -> None:
    if not SRC.is_dir():
        sys.exit(f"{SRC} not found (give the path of shared/data/real)")
    for rel in COPY:
        for f in sorted((SRC / rel).rglob("*")):
            if f.is_file():
                out = DST / f.relative_to(SRC)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)
    for rel, (unit, size) in CUT.items():
        out_dir = DST / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted((SRC / rel).iterdir()):
            if f.suffix.lower() in (".tif", ".tiff"):
                cut_raster(f, out_dir / f.name, unit, size)
            elif f.suffix.lower() not in PREVIEWS:
                shutil.copyfile(f, out_dir / f.name)       # metadata.json
    total = sum(f.stat().st_size for f in DST.rglob("*") if f.is_file())
    print(f"wrote {DST} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
