"""Scene path core: equality with super_resolve, the output grid and metadata, seams, nodata,
value scaling, reprojected references. Small RRSSRD crops as GeoTIFFs (sharp.scene needs the
[geo] extra: rasterio, rio-cogeo; CI installs it)."""
import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from scene.scene_helpers import (LR_PIXEL, ORIGIN, RRSSRD, lr_transform, masked_tif, read,
                                 reproject_ref, triplet,
                                 write_pair, write_tif)
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve
from sharp.scene import super_resolve_scene
from sharp.scene.bands import BandScale, PERCENTILES, parse_range, scene_scale, to_native
from sharp.scene.errors import SceneError
from sharp.scene.grid import output_grid
from sharp.scene.windows import read_ref, ref_resampling

pytestmark = pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                                reason=f"RRSSRD test data not found at {RRSSRD}")


@pytest.fixture(scope="module")
def model():
    return load_dsdit(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def crop():
    lr, hr, ref = triplet()
    return lr[:64, :80], hr[:256, :320], ref[:256, :320]


def quantise(img_hwc):
    """super_resolve's [0, 1] float output -> uint8 [C, H, W] by the stated rule (half up)."""
    return np.moveaxis(np.floor(np.clip(img_hwc, 0, 1).astype(np.float64) * 255 + 0.5), -1, 0
                       ).astype(np.uint8)


def unit(a):
    return a.astype(np.float32) / 255


def test_one_tile_equals_super_resolve(tmp_path, model, crop):
    """Defaults (registration, detail transfer): one tile covering the image == in-memory."""
    lr, _, ref = crop
    a, b = write_pair(tmp_path, lr, ref)
    for kw in ({}, {"temperature": 1.0, "seed": 7}):
        out = tmp_path / "sr.tif"
        s = super_resolve_scene(a, b, out, model, steps=2, tile=512, overwrite=True, **kw)
        assert s["tiles"] == 1
        want = super_resolve(model, unit(lr), unit(ref), steps=2, tile=512, **kw)
        assert np.array_equal(read(out), quantise(want)), kw


def test_tiled_without_per_image_stages_equals_tiled_super_resolve(tmp_path, crop):
    """Registration and transfer off, every remaining stage is local: the windowed reads (LR
    halo), the streamed cell blend and super_resolve's run_tiled (with the scene's even tile
    plan) give the same bits on 9 tiles.
    The model: the "small" preset (global alignment, no matching-confidence input: the confidence
    is block matching over the whole window, another per-image stage), random weights."""
    import torch

    from sharp.refsr.config import PRESETS
    from sharp.refsr.model import DSDiT

    torch.manual_seed(0)
    model = DSDiT(PRESETS["small"]).eval()
    lr, _, ref = crop
    a, b = write_pair(tmp_path, lr, ref)
    # temperature 0: multi-tile scenes draw position-keyed block noise (sharp.refsr.stages.block_noise),
    # super_resolve one stream; without noise the two must agree bit for bit
    s = super_resolve_scene(a, b, tmp_path / "sr.tif", model, steps=2, tile=128, overlap=32,
                            register=False, ref_transfer=0, temperature=0)
    assert s["tiles"] == 9 and s["cells"] > s["tiles"]
    want = super_resolve(model, unit(lr), unit(ref), steps=2, tile=128, overlap=32,
                         register=False, ref_transfer=0, temperature=0, tile_plan="even")
    assert np.array_equal(read(tmp_path / "sr.tif"), quantise(want))


def test_grid_metadata_and_cog(tmp_path, model, crop):
    from rio_cogeo.cogeo import cog_validate
    lr, _, ref = crop
    a, b = write_pair(tmp_path, lr, ref)
    with rasterio.open(a, "r+") as ds:
        ds.update_tags(MISSION="test", AREA_OR_POINT="Area")
        ds.set_band_description(1, "red band")
        ds.update_tags(2, WAVELENGTH="560nm")
    out = tmp_path / "sr.tif"
    s = super_resolve_scene(a, b, out, model, steps=1, tile=128, overlap=32)
    assert s["cog"] and not (tmp_path / "sr.tif.partial").exists()
    assert not (tmp_path / "sr.tif.refsr-journal").exists()
    ok, errors, _ = cog_validate(str(out), quiet=True)
    assert ok, errors
    with rasterio.open(a) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform.almost_equals(src.transform @ src.transform.scale(0.25), 1e-12)
        assert np.allclose(dst.bounds, src.bounds, rtol=0, atol=1e-6)
        assert (dst.width, dst.height) == (4 * src.width, 4 * src.height)
        assert dst.tags()["MISSION"] == "test" and "SHARP_REFSR_SCENE" in dst.tags()
        assert dst.descriptions[0] == "red band"
        assert dst.tags(2)["WAVELENGTH"] == "560nm"
        assert [c.name for c in dst.colorinterp] == ["red", "green", "blue"]
        assert dst.dtypes[0] == "uint8" and len(dst.overviews(1)) >= 1


def line_steps(img):
    """Mean |step| across every column line (x -> x+1) and row line of the band mean."""
    f = img.astype(np.float64).mean(0)
    return np.abs(np.diff(f, axis=1)).mean(0), np.abs(np.diff(f, axis=0)).mean(1)


def test_no_seams_across_tiles(tmp_path, model, monkeypatch):
    """Per-tile registration differs from tile to tile; the raised-cosine blend hides it: on
    every line where a tile's piece starts or ends, the mean step across the line is what it is
    in the untiled result (float output: no quantisation). A 1-px misregistration seam at one
    tile edge is measured the same way, so the test can see a seam. And the tiles agree in
    their overlaps: two tiles' pieces differ there less than a tile differs from the untiled
    result in its interior, and the blended result is no further from the untiled one in the
    overlaps than in the interiors (measured: 0.9 vs 2.2 grey levels; 0.95x)."""
    from sharp.refsr.tiling import even_starts
    from sharp.scene.blend import CellBlender
    pieces = {}
    add = CellBlender.add

    def recording(self, index, arrays):
        pieces[index] = (self.tiles[index].box(self.height, self.width), arrays["sr"].numpy().copy())
        return add(self, index, arrays)

    monkeypatch.setattr(CellBlender, "add", recording)
    lr, _, ref = triplet()
    lr, ref = lr[:60, :60], ref[:240, :240]
    a = write_tif(tmp_path / "lr.tif", lr.astype(np.float32), lr_transform())
    b = write_tif(tmp_path / "ref.tif", ref, lr_transform(0.6))
    kw = dict(steps=2, value_range="0,255")
    s = super_resolve_scene(a, b, tmp_path / "t.tif", model, tile=96, overlap=32, **kw)
    tiled_pieces = dict(pieces)
    super_resolve_scene(a, b, tmp_path / "o.tif", model, tile=512, **kw)
    img, one = read(tmp_path / "t.tif"), read(tmp_path / "o.tif")
    cover = np.zeros((240, 240), int)
    for (y, x, h, w), _ in tiled_pieces.values():
        cover[y:y + h, x:x + w] += 1
    disagree, interior = [], []
    for i, ((y, x, h, w), p) in tiled_pieces.items():
        alone = cover[y:y + h, x:x + w] == 1
        interior.append(np.abs(255 * p - one[:, y:y + h, x:x + w]).mean(0)[alone])
        for j, ((y2, x2, h2, w2), q) in tiled_pieces.items():
            ya, yb, xa, xb = max(y, y2), min(y + h, y2 + h2), max(x, x2), min(x + w, x2 + w2)
            if j > i and ya < yb and xa < xb:
                disagree.append(255 * np.abs(p[:, ya - y:yb - y, xa - x:xb - x] -
                                             q[:, ya - y2:yb - y2, xa - x2:xb - x2]).mean(0).ravel())
    assert len(tiled_pieces) == 16
    assert np.concatenate(disagree).mean() < np.concatenate(interior).mean()
    diff = np.abs(img.astype(np.float64) - one).mean(0)
    assert diff[cover > 1].mean() < 1.25 * diff[cover == 1].mean()
    starts, size = even_starts(240, 96, 32, model.cfg.unit)
    lines = sorted({v for t in starts[1:] for v in (t - 1, t + 32 - 1)} | {t + size - 1 for t in starts[:-1]})
    ox, oy = line_steps(one)

    def worst(x):
        dx, dy = line_steps(x)
        return max((dx[lines] / ox[lines]).max(), (dy[lines] / oy[lines]).max())

    assert s["tiles"] == 16 and worst(img) < 1.15
    c = starts[2]        # a tile's first column: the line c - 1 | c
    seam = np.concatenate([img[:, :, :c], img[:, :, c + 1:], img[:, :, -1:]], 2)
    assert worst(seam) > 1.15


def test_nodata_never_leaks(tmp_path, model):
    """A hole in a uint16 LR: the output is nodata exactly on the hole's footprint, and the
    valid pixels do not depend on the nodata value (0 vs 65535) nor on what a Ref hole holds."""
    lr8, _, ref8 = triplet()
    lr8, ref8 = lr8[:64, :64], ref8[:256, :256]
    lr16 = lr8.astype(np.uint16) * 257
    lr16 = np.clip(lr16, 1, 65534)
    hole = np.zeros(lr16.shape[:2], bool)
    hole[20:30, 25:40] = True
    hole[:3, :] = True                                              # at the border too
    outs = {}
    for nd in (0, 65535):
        x = lr16.copy()
        x[hole] = nd
        rhole = ref8.copy()
        rhole[100:160, 40:120] = 0 if nd == 0 else 255            # Ref nodata (0) vs garbage
        a = write_tif(tmp_path / f"lr{nd}.tif", x, lr_transform(), nodata=nd)
        rnd = 0 if nd == 0 else None
        b = write_tif(tmp_path / f"ref{nd}.tif", rhole, lr_transform(0.6), nodata=rnd)
        if nd:   # declare the garbage as missing through a mask-free route: a separate nodata
            with rasterio.open(b, "r+") as ds:
                ds.nodata = 255
            r = read(b)
            r[:, 100:160, 40:120] = 255
            with rasterio.open(b, "r+") as ds:
                ds.write(r)
        o = tmp_path / f"sr{nd}.tif"
        super_resolve_scene(a, b, o, model, steps=2, tile=128, overlap=32,
                            value_range="0,65535")
        outs[nd] = read(o)
    mask = np.repeat(np.repeat(hole, 4, 0), 4, 1)
    for nd, img in outs.items():
        assert (img[:, mask] == nd).all() and (img[:, ~mask] != nd).all()
    assert np.array_equal(outs[0][:, ~mask], outs[65535][:, ~mask])


def test_alpha_band_and_mask_are_holes_like_nodata(tmp_path, model):
    """The same holes in LR and Ref marked by a nodata value, an alpha band (RGBA, as drone
    orthomosaics come) or an internal mask, with garbage under the alpha / mask: the valid
    output pixels are the same in all three (the garbage never reaches them; the nodata file's
    valid 0s are moved to 1, the rule for a nodata value), and the output marks its holes the
    way the LR does, on exactly the upsampled hole: alpha band last (colour interpretation
    alpha, the LR's alpha values), or an internal mask; COG and tiled GeoTIFF output."""
    from rio_cogeo.cogeo import cog_validate
    lr, _, ref = triplet()
    lr, ref = lr[:64, :64], ref[:256, :256]
    hole = np.zeros(lr.shape[:2], bool)
    hole[20:30, 25:40] = True
    hole[:3, :] = True
    rhole = np.zeros(ref.shape[:2], bool)
    rhole[100:160, 40:120] = True
    up = np.repeat(np.repeat(hole, 4, 0), 4, 1)
    outs = {}
    for kind, cog in (("nodata", True), ("alpha", True), ("mask", True), ("mask", False)):
        a = masked_tif(tmp_path / f"lr_{kind}.tif", lr, lr_transform(), hole, kind)
        b = masked_tif(tmp_path / f"ref_{kind}.tif", ref, lr_transform(0.6), rhole, kind)
        o = tmp_path / f"sr_{kind}_{cog}.tif"
        s = super_resolve_scene(a, b, o, model, steps=2, tile=128, overlap=32, cog=cog)
        if cog:
            ok, errors, _ = cog_validate(str(o), quiet=True)
            assert ok, errors
        with rasterio.open(o) as ds:
            img = ds.read([1, 2, 3])
            names = [c.name for c in ds.colorinterp]
            if kind == "alpha":
                assert s["bands"] == ds.count == 4 and names == ["red", "green", "blue", "alpha"]
                assert np.array_equal(ds.read(4), np.where(up, 0, 255))
            else:
                assert s["bands"] == ds.count == 3 and names == ["red", "green", "blue"]
            if kind == "mask":
                assert ds.nodata is None
                assert np.array_equal(ds.dataset_mask(), np.where(up, 0, 255))
            if kind == "nodata":
                assert (img[:, up] == 0).all() and (img[:, ~up] != 0).all()
            else:
                assert (img[:, up] == 0).all()            # holes zeroed, not model output
        outs[kind, cog] = img
    want = np.maximum(outs["nodata", True][:, ~up], 1)
    for key, img in outs.items():
        assert np.array_equal(np.maximum(img[:, ~up], 1), want), key


def test_uint16_round_trip(tmp_path, model, crop):
    """uint16 = 257 x uint8 with the range 0..65535 is the uint8 scene, written back in uint16."""
    lr, _, ref = crop
    a = write_tif(tmp_path / "lr.tif", lr.astype(np.uint16) * 257, lr_transform())
    b = write_tif(tmp_path / "ref.tif", ref.astype(np.uint16) * 257, lr_transform(0.6))
    out = tmp_path / "sr.tif"
    super_resolve_scene(a, b, out, model, steps=2, tile=512, value_range="0,65535",
                        ref_range="0,65535")
    got = read(out)
    assert got.dtype == np.uint16
    want = np.moveaxis(super_resolve(model, unit(lr), unit(ref), steps=2), -1, 0) * 65535.0
    assert np.abs(got - want).max() <= 2.0           # rounding + float32 ulps of the inputs


def test_per_band_range(tmp_path, model, crop):
    """--range with one LO,HI per band: band b holds k_b x the uint8 scene, its range 0..255 k_b;
    the output is the uint8 result x k_b per band, written back in uint16."""
    lr, _, ref = crop
    k = np.array([257, 200, 100], np.uint16)                # per band; the crops are [H, W, 3]
    a = write_tif(tmp_path / "lr.tif", lr.astype(np.uint16) * k, lr_transform())
    b = write_tif(tmp_path / "ref.tif", ref.astype(np.uint16) * k, lr_transform(0.6))
    ranges = "0,65535;0,51000;0,25500"
    out = tmp_path / "sr.tif"
    super_resolve_scene(a, b, out, model, steps=2, tile=512, value_range=ranges, ref_range=ranges)
    got = read(out)
    want = np.moveaxis(super_resolve(model, unit(lr), unit(ref), steps=2) * (255.0 * k), -1, 0)
    assert got.dtype == np.uint16
    assert np.abs(got - want).max() <= 2.0


def test_parse_range():
    assert parse_range(None, [1, 2, 3]) is None
    assert parse_range("0,10", [3, 2, 1]) == [(0.0, 10.0)] * 3
    assert parse_range("0,10;1,20;2,30", [3, 2, 1]) == [(0.0, 10.0), (1.0, 20.0), (2.0, 30.0)]
    assert parse_range("0,10;0,10", [1, 1]) == [(0.0, 10.0)] * 2
    for bad, why in (("0,10;0,20", "2 LO,HI pairs for 3"), ("5,1", "LO < HI"), ("a,b", "one 'LO,HI' per band"),
                     ("0,1,2", "one 'LO,HI' per band"), ("0,inf", "LO < HI")):
        with pytest.raises(SceneError, match=why):
            parse_range(bad, [1, 2, 3])
    with pytest.raises(SceneError, match="band 1 is selected more than once"):
        parse_range("0,10;0,20", [1, 1])


def test_percentile_rule_and_write_back():
    """The stated rule, re-derived: 0.1 / 99.9 percentiles of the valid pixels; back = lo + u
    (hi - lo) rounded half up, nodata kept out of valid pixels."""
    rng = np.random.default_rng(0)
    arr = rng.integers(100, 4000, (3, 50, 60)).astype(np.uint16)
    arr[:, :5] = 0
    from rasterio.io import MemoryFile
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=60, height=50, count=3, dtype="uint16", nodata=0,
                      crs="EPSG:32616", transform=lr_transform(30.0)) as ds:
            ds.write(arr)
        with mem.open() as ds:
            bs = scene_scale(ds, [3, 1, 2])
    for i, b in enumerate([3, 1, 2]):
        v = arr[b - 1][5:].astype(np.float64)
        assert (bs.lo[i], bs.hi[i]) == tuple(np.percentile(v, PERCENTILES))
    u = np.array([[[0.0, 0.5, 1.0, 0.25]]])
    s = BandScale((10.0,), (20.0,), "uint16", nodata=15)
    assert s.from_unit(u).tolist() == [[[10, 16, 20, 13]]]   # 15 = nodata -> 16
    assert to_native(np.array([[[70000.0, -3.0]]]), "uint16", None).tolist() == [[[65535, 0]]]
    # the conversions work in place on their own copies: inputs are left as they were
    u = np.array([[[0.0, 0.5, 1.0, 0.25]]])
    v = np.array([[[70000.0, -3.0, 14.6]]])
    s.from_unit(u), to_native(v, "uint16", 15)
    assert u.tolist() == [[[0.0, 0.5, 1.0, 0.25]]] and v.tolist() == [[[70000.0, -3.0, 14.6]]]
    nat = np.array([[[5.0, 12.5, 25.0, np.nan, np.inf, -np.inf]]], np.float32)
    assert np.array_equal(s.to_unit(nat), np.array([[[0, 0.25, 1, np.nan, 1, 0]]], np.float32),
                          equal_nan=True)               # clipped to [0, 1]; NaN stays NaN
    assert np.isnan(nat[0, 0, 3]) and nat[0, 0, 0] == 5.0


def test_reprojected_ref(tmp_path, model, crop):
    """A Ref in another CRS (UTM 50N) and pixel size (0.5 m) is warped onto the output grid: it
    matches the original Ref there, and the scene result is close to the one with the original."""
    lr, _, ref = crop
    a, b = write_pair(tmp_path, lr, ref)
    c = reproject_ref(b, tmp_path / "ref_utm.tif", "EPSG:32650", 0.5)
    with rasterio.open(a) as L, rasterio.open(b) as R, rasterio.open(c) as U:
        assert U.crs.to_epsg() == 32650 and abs(U.transform.a - 0.5) < 1e-9
        grid = output_grid(L, 4)
        same = BandScale((0.0,) * 3, (255.0,) * 3, "uint8")
        box = (16, 16, 224, 288)                                  # away from the warped edges
        warped = read_ref(U, [1, 2, 3], same, grid, box, ref_resampling(0.5, 0.6))
        orig = read_ref(R, [1, 2, 3], same, grid, box, ref_resampling(0.6, 0.6))
        assert not np.isnan(warped).any()
        assert np.abs(warped - orig).mean() < 0.03          # two bilinear resamplings apart
    super_resolve_scene(a, b, tmp_path / "o1.tif", model, steps=2, tile=512)
    s2 = super_resolve_scene(a, c, tmp_path / "o2.tif", model, steps=2, tile=512)
    assert s2["coverage"] > 0.99
    d = np.abs(read(tmp_path / "o1.tif").astype(float) - read(tmp_path / "o2.tif"))
    assert d.mean() < 2.0


@pytest.mark.parametrize("kind", ["nodata", "mask", "float-nan", "uint16", "none"])
def test_aligned_ref_is_read_as_the_warp_reads_it(tmp_path, kind):
    """A Ref on the output grid shifted by whole pixels (partly outside the output, with holes,
    and pixels where only one band has the nodata value) is read by window: aligned_offset
    finds the shift, and the values and holes are the warp's bit for bit, inside, across the
    Ref's edge and outside it."""
    from affine import Affine
    from sharp.scene.grid import Grid
    from sharp.scene.windows import aligned_offset
    rng = np.random.default_rng(1)
    _, _, ref = triplet()
    img = ref[:200, :240].copy()
    hole = np.zeros(img.shape[:2], bool)
    hole[40:70, 100:130] = True
    hole[rng.random(hole.shape) < 0.02] = True
    px = LR_PIXEL / 4
    t = Affine(px, 0.0, ORIGIN[0], 0.0, -px, ORIGIN[1])
    path = tmp_path / "ref.tif"
    one = (slice(150, 160), slice(20, 30), 0)       # band 1 only: GDAL keeps such pixels
    if kind in ("nodata", "mask"):
        if kind == "nodata":
            img[one] = 0
        masked_tif(path, img, t, hole, kind)
    elif kind == "float-nan":
        x = img.astype(np.float32) * 1.5
        x[hole] = np.nan
        x[one] = np.nan
        write_tif(path, x, t, nodata=float("nan"))
    elif kind == "uint16":
        x = img.astype(np.uint16) * 200 + 7
        x[hole] = 65535
        x[one] = 65535
        write_tif(path, x, t, nodata=65535)
    else:
        write_tif(path, img, t)
    grid = Grid(rasterio.crs.CRS.from_epsg(3857), t @ Affine.translation(-13, 9), 300, 260)
    with rasterio.open(path) as R:
        assert aligned_offset(R, grid) == (9, -13)
        scale = scene_scale(R, [1, 2, 3])
        for box in [(0, 0, 260, 300), (20, 30, 64, 96), (150, 200, 110, 100)]:
            warp = read_ref(R, [3, 1, 2], scale, grid, box, ref_resampling(px, px))
            fast = read_ref(R, [3, 1, 2], scale, grid, box, ref_resampling(px, px),
                            aligned_offset(R, grid))
            assert np.array_equal(np.isnan(warp), np.isnan(fast))
            assert np.array_equal(np.nan_to_num(warp, nan=-1), np.nan_to_num(fast, nan=-1))
        assert np.isnan(fast).any() and not np.isnan(fast).all()


def test_aligned_offset_only_for_whole_pixel_shifts(tmp_path):
    """Half a pixel off, another pixel size, another CRS or an alpha band: warped."""
    from affine import Affine
    from sharp.scene.grid import Grid
    from sharp.scene.windows import aligned_offset
    _, _, ref = triplet()
    px = LR_PIXEL / 4
    t = Affine(px, 0.0, ORIGIN[0], 0.0, -px, ORIGIN[1])
    crs = rasterio.crs.CRS.from_epsg(3857)
    hole = np.zeros(ref.shape[:2], bool)
    hole[:10] = True
    a = write_tif(tmp_path / "a.tif", ref, t)
    b = masked_tif(tmp_path / "b.tif", ref, t, hole, "alpha")
    with rasterio.open(a) as A, rasterio.open(b) as B:
        assert aligned_offset(A, Grid(crs, t, 10, 10)) == (0, 0)
        assert aligned_offset(A, Grid(crs, t @ Affine.translation(0.5, 0), 10, 10)) is None
        assert aligned_offset(A, Grid(crs, t @ Affine.scale(0.5), 10, 10)) is None
        assert aligned_offset(A, Grid(rasterio.crs.CRS.from_epsg(32650), t, 10, 10)) is None
        assert aligned_offset(B, Grid(crs, t, 10, 10)) is None
