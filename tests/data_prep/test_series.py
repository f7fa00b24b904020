"""Multi-date series: footprint grouping, frame selection, series chips and radiometric harmonisation."""
import numpy as np
import pytest

from data_prep import sample as sample_contract
from data_prep.chips import chip_key
from data_prep.series import (cut_series, footprint_key, group_by_footprint, season_of, select_frames)
from data_prep.sources import ProductError, Scene, Window, find_products, open_product
from tests.conftest import SSL4EO_S1, SSL4EO_S2A

UTM = (10.0, 0.0, 600000.0, 0.0, -10.0, 5000000.0)


def item(time, sensor="sentinel2_l2a", crs="EPSG:32633", transform=UTM, size=100):
    return {"sensor": sensor, "crs": crs, "transform": transform, "width": size, "height": size, "time": time}


def fake_scene(pid, time, stored, valid=None, scale=1e-4, offset=0.0, transform=UTM, dtype="uint16",
               sensor="sentinel2_l2a"):
    stored = np.asarray(stored, dtype=dtype)
    c, h, w = stored.shape
    valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)

    def read(win: Window):
        sl = (slice(win.row, win.row + win.height), slice(win.col, win.col + win.width))
        return stored[(slice(None), *sl)].copy(), valid[sl].copy()
    return Scene(product_id=pid, path=f"/data/{pid}", sensor=sensor, bands=[f"B{i}" for i in range(c)],
                 wavelengths_nm=[490.0 + 10 * i for i in range(c)], gsd_m=10.0, crs="EPSG:32633",
                 transform=transform, height=h, width=w, time=time, scale=[scale] * c, offset=[offset] * c,
                 dtype=dtype, units="surface reflectance", reader=read)


# -- footprints ---------------------------------------------------------------------------------

def test_footprint_key_tolerates_float_noise_not_shifts():
    k = footprint_key("sentinel2_l2a", "EPSG:32633", UTM, 100, 100)
    noisy = (10.000000000001, 0.0, 600000.0000001, 0.0, -10.0, 4999999.9999999)
    assert footprint_key("sentinel2_l2a", "EPSG:32633", noisy, 100, 100) == k
    assert footprint_key("sentinel2_l2a", "epsg:32633", UTM, 100, 100) == k
    from rasterio.crs import CRS
    assert footprint_key("sentinel2_l2a", CRS.from_epsg(32633).to_wkt(), UTM, 100, 100) == k
    shifted = (10.0, 0.0, 600003.0, 0.0, -10.0, 5000000.0)           # 0.3 pixel
    assert footprint_key("sentinel2_l2a", "EPSG:32633", shifted, 100, 100) != k
    assert footprint_key("sentinel2_l1c", "EPSG:32633", UTM, 100, 100) != k
    assert footprint_key("sentinel2_l2a", "EPSG:32634", UTM, 100, 100) != k
    assert footprint_key("sentinel2_l2a", "EPSG:32633", (20.0, 0, 600000.0, 0, -20.0, 5000000.0), 100, 100) != k
    assert footprint_key("sentinel2_l2a", "EPSG:32633", UTM, 100, 101) != k


def test_group_by_footprint_groups_sorts_by_time_and_orders_groups():
    other = (10.0, 0.0, 610000.0, 0.0, -10.0, 5000000.0)
    near = (10.0, 0.0, 600001.0, 0.0, -10.0, 4999999.0)             # 0.1 pixel off: same grid
    half = (10.0, 0.0, 600005.0, 0.0, -10.0, 5000000.0)             # half a pixel off: another grid
    items = [item("2021-07-01T10:00:00Z", transform=other),           # 0
             item("2021-05-01T10:00:00Z"),                            # 1
             item("2021-03-01T10:00:00Z", transform=near),            # 2
             item("2021-04-01T10:00:00Z", transform=other),           # 3
             item("2021-01-01T10:00:00Z", sensor="sentinel1"),        # 4
             item("2021-02-01T10:00:00Z", transform=half),            # 5
             item("2021-03-01T10:00:00Z")]                            # 6 (same time as 2)
    assert group_by_footprint(items) == [[3, 0], [2, 6, 1], [4], [5]]
    assert group_by_footprint([]) == []


@pytest.fixture(scope="module")
def ssl4eo_scenes():
    found = find_products(str(SSL4EO_S2A))[0] + find_products(str(SSL4EO_S1))[0]
    return [open_product(kind, url) for kind, url in found]


def test_real_ssl4eo_products_group_by_sensor(ssl4eo_scenes):
    scenes = ssl4eo_scenes
    items = [{"sensor": s.sensor, "crs": s.crs, "transform": s.transform, "width": s.width,
              "height": s.height, "time": s.time} for s in scenes]
    groups = group_by_footprint(items)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    assert [{scenes[i].sensor for i in g} for g in groups] == [{"sentinel2_l2a"}, {"sentinel1"}]
    for g in groups:
        assert scenes[g[0]].time < scenes[g[1]].time


def test_cut_series_on_real_ssl4eo_s2(ssl4eo_scenes):
    s2 = [s for s in ssl4eo_scenes if s.sensor == "sentinel2_l2a"]
    later_first = sorted(s2, key=lambda s: s.time, reverse=True)       # cut_series sorts by time itself
    out = list(cut_series(later_first, size=64, stride=100, min_valid=0.0))
    assert len(out) == 9                                               # windows at 0, 100, 200 per axis
    first, second = sorted(s2, key=lambda s: s.time)
    for sample, best in out:
        assert sample is not None and 0.0 <= best <= 1.0
        sample_contract.check(sample)
        assert sample["image"].shape == (2, 12, 64, 64) and sample["image"].dtype == np.uint16
        assert sample["valid"].shape == (2, 64, 64)
        assert sample["times"] == [first.time, second.time] == ["2020-06-04T05:46:39Z", "2020-08-13T05:46:39Z"]
        assert sample["product_ids"] == [first.product_id, second.product_id]
        assert sample["scale"] == first.scale and sample["offset"] == first.offset
        assert sample["sensor"] == "sentinel2_l2a" and sample["crs"] == "EPSG:4326"
        assert "." not in sample["key"] and sample["key"].endswith("_20200604T054639Z_20200813T054639Z")
    sample = out[4][0]                                                 # window (100, 100)
    win = Window(100, 100, 64, 64)
    for t, scene in enumerate((first, second)):
        stored, valid = scene.read(win)
        np.testing.assert_array_equal(sample["image"][t], stored)
        np.testing.assert_array_equal(sample["valid"][t], valid)
    assert sample["key"] == chip_key(first, win, times=[first.time, second.time])
    assert sample["key"].rsplit("_", 1)[0] == chip_key(first, win)      # cell + first time as for T=1
    assert sample["transform"][2] == pytest.approx(first.transform[2] + 100 * first.transform[0])
    assert len({s["key"] for s, _ in out}) == 9
    # stable across runs
    again = next(cut_series(s2, size=64, stride=100, min_valid=0.0))[0]
    assert again["key"] == out[0][0]["key"]
    np.testing.assert_array_equal(again["image"], out[0][0]["image"])


def test_cut_series_drops_frames_below_min_valid_and_short_series():
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) + 100
    cloudy = np.ones((8, 8), bool)
    cloudy[:, :6] = False                                              # 25 % valid
    a = fake_scene("A", "2021-01-01T00:00:00Z", data)
    b = fake_scene("B", "2021-02-01T00:00:00Z", data + 1, valid=cloudy)
    c = fake_scene("C", "2021-03-01T00:00:00Z", data + 2)
    (s, best), = cut_series([a, b, c], size=8, stride=8, min_valid=0.5)
    assert best == 1.0 and s["product_ids"] == ["A", "C"] and s["image"].shape == (2, 2, 8, 8)
    np.testing.assert_array_equal(s["image"][1], data + 2)
    assert s["key"].endswith("_20210101T000000Z_20210301T000000Z")
    (s, best), = cut_series([a, b, c], size=8, stride=8, min_valid=0.5, min_frames=3)
    assert s is None and best == 1.0
    (s, best), = cut_series([b], size=8, stride=8, min_valid=0.5, min_frames=1)
    assert s is None and best == 0.25


def test_cut_series_refuses_scenes_of_different_grids():
    data = np.ones((1, 8, 8), np.uint16)
    a = fake_scene("A", "2021-01-01T00:00:00Z", data)
    b = fake_scene("B", "2021-02-01T00:00:00Z", data, transform=(10.0, 0.0, 600040.0, 0.0, -10.0, 5000000.0))
    with pytest.raises(ProductError, match="A \\+ B: not one footprint group"):
        next(cut_series([a, b], size=8, stride=8, min_valid=0.0))
    c = fake_scene("C", "2021-02-01T00:00:00Z", data, sensor="landsat_oli")
    with pytest.raises(ProductError, match="sensor landsat_oli"):
        next(cut_series([a, c], size=8, stride=8, min_valid=0.0))


# -- radiometric harmonisation -------------------------------------------------------------------

def test_offset_frames_are_converted_exactly_to_the_first_frames_convention():
    old = np.array([[[500, 1200], [0, 3000]], [[800, 64000], [10, 20]]], np.uint16)   # baseline < 04.00
    new = np.array([[[1500, 2345], [1000, 0]], [[1800, 1010], [9999, 0]]], np.uint16)  # offset -0.1
    valid_new = np.array([[True, True], [True, False]])                              # 0 = nodata
    a = fake_scene("S2_OLD", "2021-11-01T00:00:00Z", old, offset=0.0)
    b = fake_scene("S2_NEW", "2022-03-01T00:00:00Z", new, valid=valid_new, offset=-0.1)
    (s, _), = cut_series([b, a], size=2, stride=2, min_valid=0.0)
    assert s["offset"] == [0.0, 0.0] and s["product_ids"] == ["S2_OLD", "S2_NEW"]
    np.testing.assert_array_equal(s["image"][0], old)
    np.testing.assert_array_equal(s["image"][1], [[[500, 1345], [0, 0]], [[800, 10], [8999, 0]]])
    assert s["image"].dtype == np.uint16
    np.testing.assert_array_equal(s["valid"][1], valid_new)
    phys = sample_contract.physical(s)[1]
    own = new.astype(np.float32) * 1e-4 - 0.1
    np.testing.assert_allclose(phys[:, valid_new], own[:, valid_new], atol=1e-6)

    # the other way round: an offset -0.1 first frame, then an offset 0 frame -> DN + 1000
    c = fake_scene("S2_NEW", "2022-03-01T00:00:00Z", new, valid=valid_new, offset=-0.1)
    d = fake_scene("S2_LATER_OLD", "2022-06-01T00:00:00Z", old, offset=0.0)
    (s, _), = cut_series([c, d], size=2, stride=2, min_valid=0.0)
    assert s["offset"] == [-0.1, -0.1]
    np.testing.assert_array_equal(s["image"][1], old.astype(np.int64) + 1000)

    # an integer scale ratio is exact too: 2e-4 steps -> 1e-4 steps (x * 2)
    e = fake_scene("COARSE", "2022-07-01T00:00:00Z", np.array([[[7]]], np.uint16), scale=2e-4)
    f = fake_scene("FINE", "2022-01-01T00:00:00Z", np.array([[[1]]], np.uint16), scale=1e-4)
    (s, _), = cut_series([e, f], size=1, stride=1, min_valid=0.0)
    np.testing.assert_array_equal(s["image"][:, 0, 0, 0], [1, 14])


def test_harmonisation_refuses_what_cannot_be_exact():
    x = np.full((1, 2, 2), 2000, np.uint16)
    ref = fake_scene("REF", "2021-01-01T00:00:00Z", x)
    half_step = fake_scene("HALF", "2021-02-01T00:00:00Z", x, offset=-0.00005)
    with pytest.raises(ProductError, match="HALF.*cannot be converted exactly.*REF"):
        next(cut_series([ref, half_step], size=2, stride=2, min_valid=0.0))
    finer = fake_scene("FINER", "2021-02-01T00:00:00Z", x, scale=2.5e-5)
    with pytest.raises(ProductError, match="FINER.*cannot be converted exactly"):
        next(cut_series([ref, finer], size=2, stride=2, min_valid=0.0))

    # a valid DN below 1000 with offset -0.1 is a negative reflectance: not representable in
    # uint16 with offset 0 -> error by default, or those pixels become invalid on request
    dark = np.array([[[1500, 950], [1200, 1100]]], np.uint16)
    neg = fake_scene("DARK", "2022-03-01T00:00:00Z", dark, offset=-0.1)
    with pytest.raises(ProductError, match="REF \\+ DARK: band B0 of DARK has 1 valid value\\(s\\) \\(950..950\\)"):
        next(cut_series([ref, neg], size=2, stride=2, min_valid=0.0))
    (s, _), = cut_series([ref, neg], size=2, stride=2, min_valid=0.0, out_of_range="invalid")
    np.testing.assert_array_equal(s["valid"][1], [[True, False], [True, True]])
    np.testing.assert_array_equal(s["image"][1, 0], [[500, 0], [200, 100]])


# -- frame selection ------------------------------------------------------------------------------

MONTHLY = [f"2021-{m:02d}-15T00:00:00Z" for m in range(1, 13)]


def test_select_all_keeps_time_order_and_caps_over_the_span():
    shuffled = [MONTHLY[i] for i in (5, 0, 11, 3, 8, 1, 10, 2, 9, 4, 7, 6)]
    order = select_frames(shuffled, "all", 0)
    assert [shuffled[i] for i in order] == MONTHLY
    capped = select_frames(shuffled, "all", 3)
    assert [shuffled[i][:10] for i in capped] == ["2021-01-15", "2021-07-15", "2021-12-15"]
    assert [shuffled[i][:10] for i in select_frames(shuffled, "all", 1)] == ["2021-07-15"]
    assert select_frames(MONTHLY[:2], "all", 5) == [0, 1]
    assert select_frames([], "seasons", 0) == []


def test_select_spread_targets_the_year_evenly():
    shuffled = MONTHLY[::-1]
    picked = select_frames(shuffled, "spread", 4)              # targets ~Feb 15, May 17, Aug 16, Nov 15
    assert [shuffled[i][:7] for i in picked] == ["2021-02", "2021-05", "2021-08", "2021-11"]
    assert picked == sorted(picked, key=lambda i: shuffled[i])
    # day-of-year distance is circular: Dec 25 is nearer to mid-February than Apr 20 is
    times = ["2021-04-20T00:00:00Z", "2021-05-17T00:00:00Z", "2021-08-16T00:00:00Z",
             "2021-11-15T00:00:00Z", "2021-12-25T00:00:00Z"]
    assert select_frames(times, "spread", 4) == [1, 2, 3, 4]
    # frames of several years compete for the same day-of-year targets; ties go to the earlier frame
    assert select_frames(["2022-07-02T12:00:00Z", "2021-07-02T12:00:00Z", "2021-01-10T00:00:00Z"],
                         "spread", 1) == [1]
    assert select_frames(times, "spread", 10) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_frames > 0"):
        select_frames(times, "spread", 0)
    with pytest.raises(ValueError, match="mode 'monthly' unknown"):
        select_frames(times, "monthly", 4)


def test_select_seasons_north_and_south():
    times = ["2021-01-10T00:00:00Z",   # 0 DJF 2020/21, middle Jan 15: 5 days off
             "2021-01-20T00:00:00Z",   # 1 DJF, also 5 days off: the earlier frame wins
             "2021-02-25T00:00:00Z",   # 2 DJF
             "2021-04-01T00:00:00Z",   # 3 MAM, middle Apr 16
             "2021-04-16T00:00:00Z",   # 4 MAM, at the middle
             "2021-05-30T00:00:00Z",   # 5 MAM
             "2021-07-17T00:00:00Z",   # 6 JJA, middle Jul 17
             "2021-08-30T00:00:00Z",   # 7 JJA
             "2021-10-16T00:00:00Z",   # 8 SON, middle Oct 16 12:00
             "2021-11-29T00:00:00Z",   # 9 SON
             "2021-12-20T00:00:00Z"]   # 10 DJF 2021/22, middle Jan 15 2022: 26 days off
    rev = times[::-1]
    back = {i: len(times) - 1 - i for i in range(len(times))}
    assert [back[i] for i in select_frames(rev, "seasons", 0)] == [0, 4, 6, 8]
    assert select_frames(times, "seasons", 0, lat=-33.9) == [0, 4, 6, 8]      # labels differ, picks do not
    # a cap keeps summer, then winter, then spring: JJA/DJF/MAM in the north, DJF/JJA/SON in the south
    assert select_frames(times, "seasons", 1, lat=48.0) == [6]
    assert select_frames(times, "seasons", 1, lat=-33.9) == [0]
    assert select_frames(times, "seasons", 3, lat=48.0) == [0, 4, 6]
    assert select_frames(times, "seasons", 3, lat=-33.9) == [0, 6, 8]
    # a season without a frame is skipped
    assert select_frames([times[6], times[0], times[7]], "seasons", 0) == [1, 0]
    assert season_of("2021-07-17T00:00:00Z", 48.0) == ("JJA", "summer")
    assert season_of("2021-07-17T00:00:00Z", -33.9) == ("JJA", "winter")
    assert season_of("2021-12-01T00:00:00Z") == ("DJF", "winter")
    assert season_of("2021-03-01T00:00:00Z", -1.0) == ("MAM", "autumn")
