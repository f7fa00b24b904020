"""Band registry: names, centre wavelengths and native ground sample distance per sensor.

Wavelengths are the Sentinel-2A spectral response centres (ESA S2 MSI spectral response
functions, rounded to 0.1 nm); 2B differs by at most a few nm, below what the model resolves.
"""
from __future__ import annotations

# name -> (centre wavelength nm, native gsd m)
SENTINEL2 = {
    "B01": (442.7, 60.0),
    "B02": (492.4, 10.0),
    "B03": (559.8, 10.0),
    "B04": (664.6, 10.0),
    "B05": (704.1, 20.0),
    "B06": (740.5, 20.0),
    "B07": (782.8, 20.0),
    "B08": (832.8, 10.0),
    "B8A": (864.7, 20.0),
    "B09": (945.1, 60.0),
    "B10": (1373.5, 60.0),
    "B11": (1613.7, 20.0),
    "B12": (2202.4, 20.0),
}

# L2A products have no B10 (cirrus band is used by the atmospheric correction only).
S2_L2A_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2_L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]

def canonical_s2_band(name: str) -> str:
    """'B2', 'b02', 'B8a' -> 'B02', 'B02', 'B8A'."""
    n = name.strip().upper()
    if not n.startswith("B"):
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    rest = n[1:]
    if rest == "8A":
        return "B8A"
    if not rest.isdigit():
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    out = f"B{int(rest):02d}"
    if out not in SENTINEL2:
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    return out


# SAR has no optical wavelength; the band-agnostic patch embedding needs one number per band.
# Convention: pseudo-wavelengths in a range no optical/thermal sensor uses (> 15000 nm), one per
# polarisation, so S1 VV/VH get their own stable codes. They are identifiers, not physics.
SAR_PSEUDO_WAVELENGTH_NM = {"VV": 40000.0, "VH": 42000.0, "HH": 44000.0, "HV": 46000.0}
