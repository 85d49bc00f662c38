"""Tile plan, cells, the order-independent blend and the windowed bicubic, without a model."""
import random

import pytest
import torch

from sharp.refsr.data import upsample
from sharp.refsr.tiling import run_tiled
from sharp.scene.blend import CellBlender
from sharp.scene.plan import lr_window, make_cells, make_tiles
from sharp.scene.seams import open_seams
from sharp.scene.tile import TileJob, _window_up


@pytest.mark.parametrize("h,w,tile,overlap", [(200, 232, 64, 16), (96, 96, 512, 64), (130, 70, 48, 24)])
def test_cells_partition_the_image(h, w, tile, overlap):
    tiles = make_tiles(h, w, 8, tile, overlap)
    cells = make_cells(tiles, h, w)
    cover = torch.zeros(h, w, dtype=torch.int64)
    for c in cells:
        cover[c.y0:c.y1, c.x0:c.x1] += 1
        n = sum(1 for t in tiles if t.y <= c.y0 and c.y1 <= t.y + t.h and t.x <= c.x0 and c.x1 <= t.x + t.w)
        assert len(c.cover) == n >= 1
    assert bool((cover == 1).all())


@pytest.mark.parametrize("on_disk", [False, True])
def test_blend_is_run_tiled_in_any_order(on_disk, tmp_path):
    """Pieces arriving in any order give the same bits as run_tiled (which adds in plan order),
    with the waiting pieces in memory or in the seam file on disk (what scenes use)."""
    h, w, tile, overlap = 150, 170, 64, 24
    tiles = make_tiles(h, w, 1, tile, overlap)
    pieces = {t.index: torch.rand(1, 3, t.h, t.w, generator=torch.Generator().manual_seed(t.index))
              for t in tiles}
    by_pos = {(t.y, t.x): pieces[t.index] for t in tiles}
    want = run_tiled(lambda y, x, th, tw: by_pos[(y, x)], 1, 3, h, w, tile, overlap, 1)[0]
    cells = make_cells(tiles, h, w)
    for seed in (0, 1):
        order = [t.index for t in tiles]
        random.Random(seed).shuffle(order)
        blender = CellBlender(tiles, cells, h, w, overlap,
                              seams=open_seams(tmp_path if on_disk else None))
        got = torch.full((3, h, w), float("nan"))
        for i in order:
            t = tiles[i]
            for c, arr in blender.add(i, {"sr": pieces[i][0, :, :h - t.y, :w - t.x]}):
                got[:, c.y0:c.y1, c.x0:c.x1] = arr["sr"]
                blender.mark_done(c.index)
            assert blender.add(i, {"sr": pieces[i][0]}) == []     # a retried tile is ignored
        assert torch.equal(got, want) and not blender.pending
        if on_disk:     # slots are reused: the file holds at most the widest front, not all seams
            seam_px = sum(c.pixels * (len(c.cover) - 1) for c in cells)
            assert 0 < blender.seams.file_bytes < seam_px * 3 * 4
        blender.close()


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_windowed_bicubic_equals_whole_image(scale):
    """The LR window with its halo, upsampled and cropped, is bit-equal to the whole-image
    bicubic upsampling on every tile (tile starts need not be multiples of the scale)."""
    lh, lw = 37, 29
    lr = torch.rand(1, 3, lh, lw, generator=torch.Generator().manual_seed(scale))
    H, W = lh * scale, lw * scale
    whole = upsample(lr, (H, W))
    for t in make_tiles(H, W, 4, 60, 20):
        r0, c0, rows, cols = lr_window(t, H, W, scale, 2)
        job = TileJob(t.index, t.box(H, W), (t.h, t.w), (r0, c0), None, None, None)
        y0, x0, h, w = job.box
        got = _window_up(lr[..., r0:r0 + rows, c0:c0 + cols], job, scale, clamp=True)
        assert torch.equal(got, whole[..., y0:y0 + h, x0:x0 + w])
