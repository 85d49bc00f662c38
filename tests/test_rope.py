"""sharp.rope / sharp.RoPEEmbedder against the independent re-derivation in reference_rope.py."""
import math

import numpy as np
import pytest
import torch

import sharp
from sharp.rope import METHODS, axis_frequencies, axis_mscale, kappa_sharp
from reference_rope import flux_ids, np_frequencies, reference_embed, stock_embed_nd

TIMES = (1.0, 0.9, 0.5, 0.1, 0.01, 0.0)
FLUX_AXES = (16, 56, 56)


def flux_embedder(hw, *args, **kw):
    """A Flux RoPEEmbedder for an image of hw = (rows, cols) tokens (its extents, as the promotion sets them)."""
    emb = sharp.RoPEEmbedder(*args, **kw)
    emb.set_extents(dict(zip(emb.spatial_axes, hw)))
    return emb


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("extent", (48, 64, 80, 100, 128, 200, 256))
@pytest.mark.parametrize("dim", (16, 56, 32))
def test_axis_frequencies_match_formulas(method, t, extent, dim):
    s = extent / 64
    got = axis_frequencies(dim, 10000.0, s, t, method=method, base_len=64)
    want = np_frequencies(dim, 10000.0, s, t, method, 64)
    assert got.dtype == torch.float64 and got.shape == (dim // 2,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_axis_frequencies_custom_constants(method):
    kw = dict(alpha_s=2.5, beta=(2.0, 0.5), gamma=(24.0, 3.0))
    ref_kw = dict(alpha_s=2.5, pair1=(2.0, 0.5), pair2=(24.0, 3.0))
    for t in TIMES:
        got = axis_frequencies(56, 2000.0, 3.0, t, method=method, base_len=80, **kw)
        want = np_frequencies(56, 2000.0, 3.0, t, method, 80, **ref_kw)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("hw", [(48, 48), (64, 64), (128, 128), (160, 235), (256, 100), (90, 256)])
def test_embedder_matches_per_token_reference(method, t, hw):
    ids = flux_ids(*hw, txt=4, batch=2)
    emb = flux_embedder(hw, 10000.0, FLUX_AXES, method=method, base_len=64)
    emb.set_time(t)
    out = emb(ids)
    assert out.shape == (2, 1, ids.shape[1], sum(FLUX_AXES) // 2, 2, 2)
    assert out.dtype == torch.float32
    # text tokens, the first and last image rows, and a random sample in between
    n = ids.shape[1]
    tokens = np.unique(np.concatenate([np.arange(4 + 2 * hw[1]), np.arange(n - hw[1], n),
                                       np.random.default_rng(0).integers(0, n, 1500)]))
    want = reference_embed(ids, FLUX_AXES, 10000.0, t, method, 64, tokens=tokens)
    np.testing.assert_allclose(out[:, :, tokens].numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (128, 96), (235, 160)])
def test_base_is_stock_flux_rope_bit_for_bit(hw):
    ids = flux_ids(*hw, txt=16, batch=2)
    emb = flux_embedder(hw, 10000.0, FLUX_AXES, method="base")
    for t in (1.0, 0.3):
        emb.set_time(t)
        assert torch.equal(emb(ids), stock_embed_nd(ids, FLUX_AXES, 10000.0))


def test_base_bit_for_bit_with_reference_images_and_fractional_positions():
    # Kontext-style reference tokens (index 1, offset) and ScaleROPE-style fractional positions.
    gen = flux_ids(40, 30, txt=8)
    gen[..., 1:] *= 0.75
    ref = flux_ids(20, 20, txt=0, index=1, h_offset=40, w_offset=30)
    ids = torch.cat([gen, ref], dim=1)
    emb = flux_embedder((40, 30), 10000.0, FLUX_AXES, method="base")
    assert torch.equal(emb(ids), stock_embed_nd(ids, FLUX_AXES, 10000.0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("hw", [(64, 64), (32, 64), (48, 20)])
def test_scale_at_most_one_is_identity(method, hw):
    ids = flux_ids(*hw, txt=8)
    emb = flux_embedder(hw, 10000.0, FLUX_AXES, method=method)
    for t in TIMES:
        emb.set_time(t)
        assert torch.equal(emb(ids), stock_embed_nd(ids, FLUX_AXES, 10000.0))


def test_only_promoted_axis_changes_on_rectangles():
    # 128 rows (s = 2), 64 columns (s = 1): the column axis must stay stock.
    ids = flux_ids(128, 64, txt=8)
    out = flux_embedder((128, 64), method="sharp")(ids)
    stock = stock_embed_nd(ids, FLUX_AXES, 10000.0)
    col = slice(8 + 28, 8 + 56)
    row = slice(8, 8 + 28)
    assert torch.equal(out[..., col, :, :], stock[..., col, :, :])
    assert torch.equal(out[..., :8, :, :], stock[..., :8, :, :])  # image-index axis never changes
    assert not torch.equal(out[..., row, :, :], stock[..., row, :, :])


def test_sharp_at_t1_equals_yarn():
    ids = flux_ids(160, 235, txt=8)
    sharp_emb = flux_embedder((160, 235), method="sharp")
    sharp_emb.set_time(1.0)
    yarn_emb = flux_embedder((160, 235), method="yarn")
    assert torch.equal(sharp_emb(ids), yarn_emb(ids))
    for s in (1.5, 2.0, 4.0, 16.0):
        assert torch.equal(axis_frequencies(56, 1e4, s, 1.0, "sharp"), axis_frequencies(56, 1e4, s, 0.7, "yarn"))


@pytest.mark.parametrize("s", (1.01, 2.0, 4.0, 16.0))
def test_sharp_at_t0_is_stock_frequencies_and_finite(s):
    f = axis_frequencies(56, 10000.0, s, 0.0, "sharp")
    base = axis_frequencies(56, 10000.0, 1.0, 0.0, "base")
    assert torch.isfinite(f).all()
    assert torch.equal(f, base)
    # mscale stays (static): t only moves the frequencies
    assert axis_mscale(s, "sharp") == pytest.approx(1 + 0.1 * math.log(s))


def test_kappa_schedule_shape():
    ts = np.linspace(0, 1, 101)
    k = np.array([kappa_sharp(t, 4.0) for t in ts])
    assert k[0] == 0 and k[-1] == 1
    assert np.all(np.diff(k) > 0)
    assert np.all(k[1:-1] < ts[1:-1])  # alpha_s > 1 relaxes the promotion earlier than linear
    np.testing.assert_allclose([kappa_sharp(t, 0.2) for t in ts], ts)  # alpha_s clamped to 1 -> kappa = t


def test_sharp_promotion_relaxes_monotonically_in_t():
    # As t falls, every frequency moves from YaRN's toward the stock one without overshooting.
    yarn = axis_frequencies(56, 1e4, 4.0, 1.0, "yarn").numpy()
    base = axis_frequencies(56, 1e4, 4.0, 1.0, "base").numpy()
    prev_gap = np.abs(yarn - base)
    for t in np.linspace(1, 0, 21)[1:]:
        f = axis_frequencies(56, 1e4, 4.0, float(t), "sharp").numpy()
        gap = np.abs(f - base)
        assert np.all(gap <= prev_gap + 1e-15)
        prev_gap = gap


@pytest.mark.parametrize("method", METHODS)
def test_mscale_only_where_the_method_applies_it(method):
    ids = flux_ids(128, 128, txt=4)
    out = flux_embedder((128, 128), method=method)(ids)
    det = torch.linalg.det(out[0, 0].double())  # [L, 64]: mscale^2 per block
    m = 1 + 0.1 * math.log(2.0) if method in ("yarn", "dype", "sharp") else 1.0
    torch.testing.assert_close(det[:, 8:], torch.full_like(det[:, 8:], m * m), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(det[:, :8], torch.ones_like(det[:, :8]), rtol=1e-6, atol=1e-6)
    no_m = flux_embedder((128, 128), method=method, mscale=False)(ids)
    det = torch.linalg.det(no_m[0, 0].double())
    torch.testing.assert_close(det, torch.ones_like(det), rtol=1e-6, atol=1e-6)


def test_reference_tokens_leave_the_image_tokens_alone():
    gen = flux_ids(96, 96, txt=8)
    ref = flux_ids(64, 64, txt=0, index=1, h_offset=96, w_offset=96)  # past the image: positions up to 160
    emb = flux_embedder((96, 96))
    assert emb.axis_scales() == {1: 1.5, 2: 1.5}
    both = emb(torch.cat([gen, ref], 1))
    alone = emb(gen)
    assert torch.equal(both[:, :, : gen.shape[1]], alone)


def test_base_resolution_and_per_axis_base_len():
    emb = flux_embedder((128, 128), base_len=(64, 128))
    assert emb.axis_scales() == {1: 2.0, 2: 1.0}
    assert sharp.rope.base_len_from_resolution(1328) == 83.0


def test_time_outside_unit_interval_is_clamped():
    ids = flux_ids(128, 128)
    emb = flux_embedder((128, 128))
    emb.set_time(1.7)
    high = emb(ids).clone()
    emb.set_time(1.0)
    assert torch.equal(emb(ids), high)
    emb.set_time(-0.3)
    low = emb(ids).clone()
    emb.set_time(0.0)
    assert torch.equal(emb(ids), low)


def test_cache_reuses_within_a_step_and_refreshes_on_new_time_ids_or_extents():
    ids = flux_ids(128, 128, txt=8)
    emb = flux_embedder((128, 128))
    computed = []
    embed = emb._embed
    emb._embed = lambda i: computed.append(i.shape) or embed(i)
    emb.set_time(0.8)
    first = emb(ids)
    again = emb(ids.clone())
    assert len(computed) == 1 and torch.equal(again, first)  # cond + uncond: one computation
    assert again is not first  # but each call its own tensor, as EmbedND's
    again.mul_(0)  # a patch that rewrites pe in place does not reach the next call
    assert torch.equal(emb(ids), first) and len(computed) == 1
    other_ids = flux_ids(96, 128, txt=8)
    other = emb(other_ids)
    assert other.shape != first.shape
    assert torch.equal(emb(ids), first) and len(computed) == 2  # both kept for the step
    emb.set_time(0.4)
    second = emb(ids)
    assert len(computed) == 3 and not torch.equal(second, first)
    ids_mut = ids.clone()
    emb(ids_mut)
    ids_mut[0, -1, 1] += 50  # caller edits ids in place: must not serve the stale entry
    assert not torch.equal(emb(ids_mut), second)
    emb.set_extents({1: 160, 2: 128})  # a new image size: recomputed, not served from the cache
    third = emb(ids)
    assert len(computed) == 5 and not torch.equal(third, second)


@pytest.mark.parametrize("method", METHODS)
def test_large_extents_stay_finite(method):
    for L in (512, 1024):
        for t in TIMES:
            f = axis_frequencies(56, 10000.0, L / 64, t, method)
            assert torch.isfinite(f).all() and (f > 0).all()
    emb = flux_embedder((1024, 1024), method=method)
    emb.set_time(0.5)
    ids = torch.zeros(1, 3, 3)
    ids[0, :, 1] = torch.tensor([0.0, 512.0, 1023.0])
    ids[0, :, 2] = torch.tensor([1023.0, 5.0, 0.0])
    assert torch.isfinite(emb(ids)).all()


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="valid methods are: sharp, dype, yarn, dy-ntk, ntk, pi, base"):
        axis_frequencies(56, 1e4, 2.0, 0.5, method="linear")
    with pytest.raises(ValueError, match="valid methods"):
        sharp.RoPEEmbedder(method="Sharp")
    with pytest.raises(ValueError, match="even"):
        axis_frequencies(55, 1e4, 2.0, 0.5)
    with pytest.raises(ValueError, match="even"):
        sharp.RoPEEmbedder(axes_dim=(16, 56, 57))
    for t in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            axis_frequencies(56, 1e4, 2.0, t)
        with pytest.raises(ValueError, match="finite"):
            sharp.RoPEEmbedder().set_time(t)
    emb = sharp.RoPEEmbedder()
    with pytest.raises(ValueError, match=r"no extents: call set_extents"):
        emb(flux_ids(8, 8))
    with pytest.raises(ValueError, match="rank 3"):
        emb(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="axes"):
        emb(torch.zeros(1, 10, 4))
    with pytest.raises(ValueError, match="unknown RoPE parameter.*alpha"):
        sharp.RoPEEmbedder(alpha=3.0)
    with pytest.raises(ValueError, match="pair"):
        sharp.RoPEEmbedder(beta=(1.25,))
    with pytest.raises(ValueError, match="base_len"):
        sharp.RoPEEmbedder(base_len=0)
    with pytest.raises(ValueError, match="scale"):
        axis_frequencies(56, 1e4, float("nan"), 0.5)


def test_distinct_positions_reconstructs_every_position():
    from sharp.embedder import distinct_positions

    grid = flux_ids(30, 20, txt=5)[..., 1]
    frac = grid * 0.37
    for pos in (grid, frac, torch.cat([grid, grid + 900.0], 1)):
        values, index = distinct_positions(pos)
        assert torch.equal(values[index], pos)


def test_peak_memory_tracker_sees_allocations():
    from sharp.profiling import PeakMemory

    with PeakMemory() as m:
        a = torch.ones(1 << 18)  # 1 MiB
        b = a * 2  # another 1 MiB while a is alive
        del a, b
        c = torch.zeros(1 << 16)
    assert m.peak_bytes == 2 << 20
    assert m.current_bytes == c.untyped_storage().nbytes()


def test_extents_are_set_per_spatial_axis():
    ids = flux_ids(128, 64, txt=4)[..., 1:]  # two axes, no image index (HunyuanImage 2.1 style)
    emb = sharp.RoPEEmbedder(256.0, (64, 64), spatial_axes=(0, 1))
    assert emb.extents is None
    emb.set_extents({0: 64, 1: 256})  # whatever the ids span: the extents are what they are set to
    assert emb.axis_scales() == {0: 1.0, 1: 4.0} and emb.extents == {0: 64.0, 1: 256.0}
    fixed = emb(ids)
    assert not torch.equal(fixed[..., 32:, :, :], stock_embed_nd(ids, (64, 64), 256.0)[..., 32:, :, :])
    assert torch.equal(fixed[..., :32, :, :], stock_embed_nd(ids, (64, 64), 256.0)[..., :32, :, :])
    with pytest.raises(ValueError, match="each spatial axis"):
        emb.set_extents({0: 64})


def test_head_axis_two_gives_the_hidream_layout():
    ids = flux_ids(96, 80, txt=4)
    flux = flux_embedder((96, 80), method="sharp")(ids)
    hidream = flux_embedder((96, 80), method="sharp", head_axis=2)(ids)
    assert hidream.shape == (1, ids.shape[1], 1, 64, 2, 2)
    assert torch.equal(hidream, flux.transpose(1, 2))
    with pytest.raises(ValueError, match="head_axis"):
        sharp.RoPEEmbedder(head_axis=0)
