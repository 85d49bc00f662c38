import math

import numpy as np
import pytest
import torch

from refsr.refsr_helpers import TINY, TINY_MATCH as MATCH, randomised, smooth_image
from sharp.refsr.api import super_resolve
from sharp.refsr.data import upsample
from sharp.refsr.flow import euler_sample
from sharp.refsr.registration import align_reference
from sharp.refsr.space import WorkingSpace
from sharp.refsr.tiling import blend_window, even_starts, ramp, run_tiled, tile_starts, tiles


def test_tile_starts_cover_with_overlap():
    for length, tile, ov in [(100, 40, 8), (64, 64, 8), (30, 64, 8), (257, 64, 16)]:
        starts = tile_starts(length, tile, ov)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[0] == 0 and starts[-1] + min(tile, length) == length
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError):
        tile_starts(100, 16, 16)


def _spread_fits(length, size, n, overlap, unit):
    """Brute force: some n starts on the unit grid, 0 first and flush last, cover [0, length)
    with tiles of `size` overlapping by >= overlap (a search over the plan, not its formula)."""
    last = length - size
    reach = {0}                      # starts reachable with every gap in (0, size - overlap]
    for _ in range(n - 1):
        reach = {a + g for a in reach for g in range(unit, size - overlap + 1, unit)
                 if a + g <= last}
    return last in reach


def test_even_plan_is_the_fewest_smallest_tiles():
    """As many tiles as tile_starts, none larger than `tile`, covering with the overlap, on the
    unit grid; no smaller tile size could do it with that many tiles (found by a search); and
    the spread is even (gaps differ by at most one unit)."""
    import random
    rng = random.Random(0)
    cases = [(2048, 512, 64, 16), (608, 512, 64, 16), (240, 96, 32, 4), (96, 96, 16, 8)]
    cases += [(u * rng.randint(1, 40), u * t, u * rng.randint(0, t - 1), u)
              for u in (1, 4, 16) for t in [rng.randint(2, 12) for _ in range(30)]]
    for length, tile, ov, unit in cases:
        starts, size = even_starts(length, tile, ov, unit)
        n = len(tile_starts(length, tile, ov))
        assert len(starts) == n and size <= tile and size % unit == 0
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(a < b <= a + size - ov for a, b in zip(starts, starts[1:]))
        if n > 1:
            gaps = np.diff(starts)
            assert gaps.max() - gaps.min() <= unit
            assert not _spread_fits(length, size - unit, n, ov, unit), (length, tile, ov, unit)
    assert even_starts(2048, 512, 64, 16) == ([0, 400, 800, 1184, 1584], 464)
    with pytest.raises(ValueError):
        even_starts(100, 32, 8, 16)          # not on the unit grid


def test_window_is_one_for_a_lone_tile_and_positive_smooth_otherwise():
    assert torch.equal(blend_window(8, 12, 4, False, False, False, False), torch.ones(8, 12))
    r = ramp(32, 8, True, True)
    assert float(r.min()) > 0 and float(r.max()) == 1.0
    assert float(r[:8].diff().min()) > 0                          # monotone rise
    assert float(r.diff().abs().max()) <= math.pi / (2 * 8) + 1e-9


def test_blending_hides_inconsistent_tiles():
    """Tiles that disagree by a constant offset are cross-faded: the largest pixel-to-pixel jump
    is a small fraction of the offset (a hard cut would jump by the full offset)."""
    h, w, tile, ov = 96, 96, 48, 16
    offsets = {}

    def fn(y, x, th, tw):
        c = offsets.setdefault((y, x), float(len(offsets) % 2))     # 0/1 checkerboard-ish
        return torch.full((1, 1, th, tw), c)

    out = run_tiled(fn, 1, 1, h, w, tile, ov)
    jump = max(float(out.diff(dim=-1).abs().max()), float(out.diff(dim=-2).abs().max()))
    assert jump < 0.25, jump
    # consistent tiles (crops of one image) are reproduced exactly whatever the tiling
    img = torch.rand(2, 3, h, w)
    same = run_tiled(lambda y, x, th, tw: img[:, :, y:y + th, x:x + tw], 2, 3, h, w, tile, ov)
    assert torch.allclose(same, img, atol=1e-6)


def _untiled(model, lr, ref, steps, seed):
    """Reference: the whole image in one euler_sample call, no tiling code involved."""
    lr_t = torch.from_numpy(lr).permute(2, 0, 1)[None]
    ref_t = torch.from_numpy(ref).permute(2, 0, 1)[None]
    up = upsample(lr_t, ref_t.shape[-2:])
    space = WorkingSpace(model.cfg)
    up_z, ref_z = space.encode(up), space.encode(ref_t)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(up_z.shape, generator=g)
    conf = align_reference(ref_t, up, 4, model.cfg.ref_align, register=False)[1]
    x1 = euler_sample(model, x0, up_z, ref_z, steps=steps,
                      ref_conf=conf if model.cfg.ref_confidence else None)
    return space.decode(space.untarget(x1, up_z))[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("cfg", [TINY, MATCH], ids=["small", "matching-options"])
def test_one_tile_equals_untiled_and_small_tiles_have_no_seams(cfg):
    """With the matching options the Ref's matching confidence is cut into the same tiles too."""
    model = randomised(cfg)
    lr, ref = smooth_image(24, 24, 1), smooth_image(96, 96, 2)
    ref_untiled = _untiled(model, lr, ref, steps=3, seed=5)
    one = super_resolve(model, lr, ref, scale=4, steps=3, seed=5, tile=96, overlap=16,
                        register=False)
    assert one.shape == (96, 96, 3)
    assert np.array_equal(one, ref_untiled)
    tiled = super_resolve(model, lr, ref, scale=4, steps=3, seed=5, tile=48, overlap=16,
                          register=False)
    diff = np.abs(tiled - ref_untiled)
    assert diff.max() > 0                                         # tiles really were used
    assert diff.mean() < 0.02
    # no seam: the jump across tile boundaries is no larger than elsewhere in the image
    col_jump = np.abs(np.diff(tiled, axis=1)).mean(axis=(0, 2))  # [W-1]
    ref_jump = np.abs(np.diff(ref_untiled, axis=1)).mean(axis=(0, 2))
    assert col_jump.max() < 1.5 * ref_jump.max() + 1e-3


def test_progress_callback_counts_every_step_of_every_tile():
    model = randomised(TINY)
    lr, ref = smooth_image(24, 24, 1), smooth_image(96, 96, 2)
    calls = []
    super_resolve(model, lr, ref, steps=2, tile=48, overlap=16, progress=lambda d, t: calls.append((d, t)))
    n = len(tiles(96, 96, 48, 16))
    assert calls == [(i + 1, 2 * n) for i in range(2 * n)]


def test_shipped_model_tiles_blend_without_seams_on_a_real_image():
    from pathlib import Path

    from PIL import Image

    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit

    ex = Path(__file__).resolve().parents[2] / "examples" / "refsr"
    if not (ex / "lr.jpg").is_file() or not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("example triplet or shipped checkpoint missing")
    lr = np.asarray(Image.open(ex / "lr.jpg").convert("RGB"), np.float32)[:48, :48] / 255
    ref = np.asarray(Image.open(ex / "ref.jpg").convert("RGB"), np.float32)[:192, :192] / 255
    model = load_dsdit(DEFAULT_CHECKPOINT)
    whole = super_resolve(model, lr, ref, steps=3, tile=192, temperature=1.0)
    tiled = super_resolve(model, lr, ref, steps=3, tile=96, overlap=32, temperature=1.0)
    assert np.abs(tiled - whole).mean() < 0.01
    jump_t = np.abs(np.diff(tiled, axis=1)).mean(axis=(0, 2))
    jump_w = np.abs(np.diff(whole, axis=1)).mean(axis=(0, 2))
    assert jump_t.max() < 1.2 * jump_w.max()
    assert np.abs(jump_t - jump_w).max() < 0.01                 # column by column, no seam lines
