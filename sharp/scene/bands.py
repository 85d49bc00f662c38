"""Band selection and the scaling between a scene's values and the model's [0, 1].

Selection: `--bands 3,2,1` (1-based indices, repeats allowed: a panchromatic Ref is "1,1,1"),
or colour names "red,green,blue" matched against the file's colour interpretation; by default
the bands interpreted as red, green, blue, else the first three image bands, else (one band)
that band three times. An alpha band is never an image band: it is the validity mask.

Validity: a pixel is valid iff no selected band holds the nodata value (or NaN) and, where the
file marks validity by GDAL's mask instead (an alpha band, or a per-dataset mask such as an
internal or .msk mask), the mask says valid (`read_mask`, `valid_mask`).

Scaling rule (per band, the same for LR and Ref, each with its own statistics):
  * uint8: v / 255 (exactly what the in-memory path does with 8-bit images);
  * otherwise: the 0.1 and 99.9 percentiles (lo, hi) of the band's valid pixels, estimated on a
    decimated read of the whole scene (at most STATS_SIDE px on the long side), or a given
    --range: "LO,HI" for every band, or "LO,HI;LO,HI;LO,HI" one pair per selected band (in
    --bands order); u = clip((v - lo) / (hi - lo), 0, 1).
Back (`from_unit`): v = lo + u (hi - lo), rounded half up and clipped for integer types; a valid
pixel that would equal the nodata value is moved one step into the range, so it never reads as
a hole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import SceneError

STATS_SIDE = 1024
PERCENTILES = (0.1, 99.9)
COLOURS = ("red", "green", "blue")


def alpha_band(ds) -> Optional[int]:
    """1-based index of ds's alpha band (colour interpretation "alpha"), or None."""
    names = [ci.name.lower() for ci in ds.colorinterp]
    return names.index("alpha") + 1 if "alpha" in names else None


def mask_kind(ds, band: int) -> Optional[str]:
    """How ds marks invalid pixels beside any nodata value: "alpha" (an alpha band), "mask" (a
    per-dataset mask, internal or .msk, of `band`), or None."""
    from rasterio.enums import MaskFlags
    if alpha_band(ds) is not None:
        return "alpha"
    return "mask" if MaskFlags.per_dataset in ds.mask_flag_enums[band - 1] else None


def read_mask(ds, band: int, **window) -> Optional[np.ndarray]:
    """The validity mask [h, w] (0 = invalid) ds has beside any nodata value (mask_kind): its
    alpha band, or its per-dataset mask as GDAL reads it for `band`; None if neither.
    window: rasterio read arguments (window=..., out_shape=...)."""
    kind = mask_kind(ds, band)
    if kind == "alpha":
        return ds.read(alpha_band(ds), **window)
    return ds.read_masks(band, **window) if kind == "mask" else None


def select_bands(ds, spec: Optional[str], what: str) -> list[int]:
    """1-based band indices of ds for the model's R, G, B (see the module docstring)."""
    n = ds.count
    names = [ci.name.lower() for ci in ds.colorinterp]
    alpha = alpha_band(ds)
    image = [b for b in range(1, n + 1) if b != alpha]
    if spec:
        out = []
        for part in str(spec).split(","):
            part = part.strip().lower()
            if part.isdigit():
                idx = int(part)
            elif part in names:
                idx = names.index(part) + 1
            else:
                raise SceneError(f"{what}: band {part!r} does not exist: {ds.name} has {n} band(s) "
                                 f"{list(range(1, n + 1))} with colour interpretation {names}; "
                                 "pass 1-based indices, e.g. --bands 3,2,1")
            if not 1 <= idx <= n:
                raise SceneError(f"{what}: band {idx} does not exist: {ds.name} has {n} band(s) "
                                 f"(1..{n})")
            if idx == alpha:
                raise SceneError(f"{what}: band {idx} of {ds.name} is its alpha band, the mask of "
                                 f"valid pixels, not an image band: pick from {image}")
            out.append(idx)
        if len(out) != 3:
            raise SceneError(f"{what}: the model needs 3 bands (R,G,B), got {len(out)} ({spec!r}); "
                             "repeat a band for grey, e.g. 1,1,1")
        return out
    if all(c in names for c in COLOURS):
        return [names.index(c) + 1 for c in COLOURS]
    if len(image) >= 3:
        return image[:3]
    if len(image) == 1:
        return image * 3
    raise SceneError(f"{what}: {ds.name} has {len(image)} image bands and no red/green/blue "
                     "colour interpretation: say which to use, e.g. --bands 1,2,1")


def parse_range(text: Optional[str], bands: Sequence[int]) -> Optional[list[tuple[float, float]]]:
    """--range as one (lo, hi) per selected band: "LO,HI" (every band) or "LO,HI;LO,HI;..."
    (one pair per band of `bands`, in order; a band selected twice needs the same pair)."""
    if not text:
        return None
    pairs = []
    for part in text.split(";"):
        try:
            lo, hi = (float(v) for v in part.split(","))
        except ValueError:
            raise SceneError(f"range must be 'LO,HI' or one 'LO,HI' per band separated by ';', "
                             f"got {text!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise SceneError(f"range LO,HI needs finite LO < HI, got {part!r} in {text!r}")
        pairs.append((lo, hi))
    if len(pairs) == 1:
        return pairs * len(bands)
    if len(pairs) != len(bands):
        raise SceneError(f"range {text!r} has {len(pairs)} LO,HI pairs for {len(bands)} selected "
                         f"bands {list(bands)}: give one pair for all, or one per band")
    for b in set(bands):
        if len({pairs[i] for i, v in enumerate(bands) if v == b}) > 1:
            raise SceneError(f"range {text!r}: band {b} is selected more than once with different "
                             "LO,HI pairs; a band has one scaling")
    return pairs


@dataclass(frozen=True)
class BandScale:
    """Per-band affine map between native values and [0, 1]."""
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    dtype: str
    nodata: Optional[float] = None

    def to_unit(self, arr: np.ndarray) -> np.ndarray:
        """[C, h, w] native -> float32 in [0, 1] (NaN stays NaN)."""
        lo = np.asarray(self.lo, np.float32)[:, None, None]
        span = (np.asarray(self.hi, np.float64) - np.asarray(self.lo, np.float64)).astype(np.float32)
        out = arr.astype(np.float32)            # then in place: one image-sized array per tile
        out -= lo
        out /= span[:, None, None]
        return _clip(out, 0.0, 1.0)

    def from_unit(self, arr: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """[C, h, w] in [0, 1] -> native dtype; invalid pixels (valid False) become nodata."""
        lo = np.asarray(self.lo, np.float64)[:, None, None]
        hi = np.asarray(self.hi, np.float64)[:, None, None]
        val = arr.astype(np.float64)            # lo + u (hi - lo), in place
        val *= hi - lo
        val += lo
        return to_native(val, self.dtype, self.nodata, valid, overwrite=True)


def _clip(x: np.ndarray, lo, hi) -> np.ndarray:
    """np.clip(x, lo, hi) in place (NaN stays NaN), by maximum / minimum: the same values, at a
    fraction of np.clip's cost on image-sized arrays."""
    np.maximum(x, lo, out=x)
    return np.minimum(x, hi, out=x)


def to_native(val: np.ndarray, dtype: str, nodata: Optional[float],
              valid: Optional[np.ndarray] = None, overwrite: bool = False) -> np.ndarray:
    """float values [C, h, w] -> dtype (ints: half-up rounding, clipped to the type), nodata
    (0 without a nodata value) where not valid, and no valid pixel equal to nodata.
    overwrite: val may be used as scratch space (the result is computed in place)."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if overwrite:
            val += 0.5
        else:
            val = val + 0.5
        val = _clip(np.floor(val, out=val), info.min, info.max)
        if nodata is not None and np.isfinite(nodata):
            step = 1 if nodata < info.max else -1
            val[val == nodata] = nodata + step
    elif nodata is not None and np.isfinite(nodata):
        val = np.where(val == nodata, np.nextafter(np.float32(nodata), np.float32(np.inf)), val)
    out = val.astype(dt)
    if valid is not None:        # nodata, or 0 where a mask / alpha band marks the holes
        out[:, ~valid] = dt.type(nodata if nodata is not None else 0)
    return out


def valid_mask(arr: np.ndarray, nodata: Optional[float],
               mask: Optional[np.ndarray] = None, every_band: bool = False) -> np.ndarray:
    """[C, h, w] native -> [h, w] bool: a pixel is valid iff no band is nodata (or NaN) and
    GDAL's mask (mask: [h, w], 0 = invalid, from ds.read_masks; None: no mask) says valid.
    every_band: nodata only where every band holds the nodata value (GDAL's warper rule,
    UNIFIED_SRC_NODATA=PARTIAL; NaN in any band still invalid)."""
    bad = np.zeros(arr.shape[1:], bool) if mask is None else mask == 0
    if arr.dtype.kind == "f":
        bad |= np.isnan(arr).any(0)
    if nodata is not None:
        hit = np.isnan(arr) if np.isnan(nodata) else arr == nodata
        bad |= hit.all(0) if every_band else hit.any(0)
    return ~bad


def scene_scale(ds, bands: Sequence[int], given: Optional[Sequence[tuple[float, float]]] = None
                ) -> BandScale:
    """The scaling of ds's bands by the module's rule (given: one (lo, hi) per band, from
    parse_range)."""
    dtype = ds.dtypes[bands[0] - 1]
    nodata = ds.nodata
    if given is not None:
        return BandScale(tuple(float(lo) for lo, _ in given), tuple(float(hi) for _, hi in given),
                         dtype, nodata)
    if dtype == "uint8":
        return BandScale((0.0,) * len(bands), (255.0,) * len(bands), dtype, nodata)
    f = max(1, -(-max(ds.height, ds.width) // STATS_SIDE))
    shape = (len(bands), max(1, ds.height // f), max(1, ds.width // f))
    arr = ds.read(list(bands), out_shape=shape)             # nearest decimation (or overviews)
    ok = valid_mask(arr, nodata, read_mask(ds, bands[0], out_shape=shape[1:]))
    lo, hi = [], []
    for b in range(len(bands)):
        v = arr[b][ok].astype(np.float64)
        if v.size == 0:
            raise SceneError(f"{ds.name}: band {bands[b]} has no valid pixel (all nodata)")
        a, z = np.percentile(v, PERCENTILES)
        if not z > a:
            a, z = float(v.min()), float(v.max())
        if not z > a:
            z = a + 1.0                                    # a constant band
        lo.append(float(a))
        hi.append(float(z))
    return BandScale(tuple(lo), tuple(hi), dtype, nodata)
