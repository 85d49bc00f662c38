"""The family table: detection and per-family embedders, on ids built as each family builds them
(written here from the ComfyUI sources each row cites), checked against stock EmbedND."""
import numpy as np
import pytest
import torch

from sharp import families
from sharp.families import FAMILIES, UnsupportedModelError, detect_family
from reference_rope import np_frequencies, np_mscale, stock_embed_nd


def fake_model(class_name, attr, theta, axes_dim, txt_ids_dims=None, params=()):
    emb = type("EmbedND", (), {"theta": theta, "axes_dim": list(axes_dim)})()
    fields = dict(params, **({"txt_ids_dims": list(txt_ids_dims)} if txt_ids_dims is not None else {}))
    params = type("Params", (), fields)() if fields else None
    *outer, last = attr.split(".")
    for name in reversed(outer):  # OmniGen2: a wrapper that carries theta / axes_dim too, the EmbedND inside
        emb = type("OmniGen2RotaryPosEmbed", (), {"theta": theta, "axes_dim": list(axes_dim), last: emb})()
        last = name
    return type(class_name, (), {last: emb, "params": params})()


def test_names_are_unique_and_rows_consistent():
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    for f in FAMILIES:
        assert all(0 <= a < len(f.axes_dim) for a in f.spatial_axes) and len(f.spatial_axes) == 2
        assert f.base_len == f.base_resolution / f.px_per_token
        assert f.source


@pytest.mark.parametrize("f", FAMILIES, ids=lambda f: f.name)
def test_each_row_is_detected_from_its_own_model(f):
    model = fake_model(f.classes[0], f.embedder_attr, f.theta, f.axes_dim, f.txt_ids_dims, f.params)
    assert detect_family(model) is f


def test_detection_tells_apart_families_sharing_a_class():
    assert detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), [])).name == "Flux.1"
    assert detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56))).name == "Flux.1"  # 0.3.64: no field
    ovis = {"yak_mlp": True, "txt_norm": True, "context_in_dim": 2048, "vec_in_dim": None}
    longcat = {"yak_mlp": False, "txt_norm": False, "context_in_dim": 3584, "vec_in_dim": None}
    assert detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), [1, 2], ovis)).name == "Ovis-Image"
    assert detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), [1, 2], longcat)).name == "LongCat-Image"
    with pytest.raises(UnsupportedModelError, match="matches no known family"):  # neither: no guess
        detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), [1, 2]))
    assert detect_family(fake_model("QwenImageTransformer2DModel", "pe_embedder", 10000, (16, 56, 56))).name == "Qwen-Image"
    assert detect_family(fake_model("MageFlowTransformer2DModel", "pe_embedder", 10000, (16, 56, 56))).name == "MageFlow"
    assert detect_family(fake_model("BooguTransformer2DModel", "rope_embedder.rope_embedder", 10000,
                                    (40, 40, 40))).name == "Boogu"
    assert detect_family(fake_model("Flux", "pe_embedder", 2000, (32, 32, 32, 32), [3])).name == "Flux.2"
    assert detect_family(fake_model("NextDiT", "rope_embedder", 256.0, (32, 48, 48))).name == "Z-Image"
    assert detect_family(fake_model("NextDiT", "rope_embedder", 10000.0, (32, 32, 32))).name == "Lumina 2"
    # an unknown subclass with known constants is matched on the embedder alone
    assert detect_family(fake_model("MyQwenFork", "pe_embedder", 256, (64, 64))).name == "HunyuanImage 2.1"


def test_unsupported_models_name_what_is_supported():
    sdxl = type("UNetModel", (), {})()
    with pytest.raises(UnsupportedModelError, match="SDXL.*Supported: Flux.1 \\(ComfyUI >= 0.3.64\\)"):
        detect_family(sdxl)
    odd = fake_model("Flux", "pe_embedder", 10000, (8, 8))
    with pytest.raises(UnsupportedModelError, match="matches no known family"):
        detect_family(odd)
    with pytest.raises(UnsupportedModelError, match="unknown family override"):
        detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), []), override="SD3")
    with pytest.raises(UnsupportedModelError, match="expects rope_embedder"):
        detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), []), override="Z-Image")
    assert detect_family(fake_model("Flux", "pe_embedder", 10000, (16, 56, 56), [1, 2], {"yak_mlp": True}),
                         override="Flux.1").name == "Flux.1"


@pytest.mark.parametrize("cls", sorted(families.NOT_PATCHABLE))
def test_known_unpatchable_models_are_refused_by_name(cls):
    """Even with a look-alike embedder (or an override) the refusal names the model and the reason."""
    model = fake_model(cls, "pos_embed", 256.0, (32, 48, 48))
    name, why = families.NOT_PATCHABLE[cls]
    for override in (None, "Lens"):
        with pytest.raises(UnsupportedModelError, match=f"{name} \\({cls}\\) is not supported: ") as err:
            detect_family(model, override=override)
        assert why in str(err.value) and "Supported: Flux.1" in str(err.value)


# --- ids as each family builds them ------------------------------------------------------------

def grid(h, w):
    r = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    c = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    return r, c


def family_ids(name, h, w, txt=6):
    """[1, L, n_axes] ids for an h x w token image plus text, per the family's source."""
    r, c = grid(h, w)
    n = r.numel()
    if name in ("Flux.1", "Chroma", "Chroma Radiance"):
        img = torch.stack([torch.zeros(n), r, c], -1)
        return torch.cat([torch.zeros(txt, 3), img])[None]
    if name == "Flux.2":  # text positions on axis 3 only
        img = torch.stack([torch.zeros(n), r, c, torch.zeros(n)], -1)
        text = torch.zeros(txt, 4)
        text[:, 3] = torch.arange(txt, dtype=torch.float32)
        return torch.cat([text, img])[None]
    if name == "Ovis-Image":  # text positions on both spatial axes
        img = torch.stack([torch.zeros(n), r, c], -1)
        text = torch.zeros(txt, 3)
        text[:, 1] = text[:, 2] = torch.arange(txt, dtype=torch.float32)
        return torch.cat([text, img])[None]
    if name == "Qwen-Image":  # centred image, text on the diagonal after it
        img = torch.stack([torch.zeros(n), r - h // 2, c - w // 2], -1)
        start = round(max(h // 2, w // 2))
        text = torch.arange(start, start + txt, dtype=torch.float32)[:, None].repeat(1, 3)
        return torch.cat([text, img])[None]
    if name in ("Z-Image", "Lumina 2"):  # the image call: axis 0 = caption length + 1
        return torch.stack([torch.full((n,), float(txt + 1)), r, c], -1)[None]
    if name == "HunyuanImage 2.1":
        return torch.cat([torch.zeros(txt, 2), torch.stack([r, c], -1)])[None]
    if name == "OmniGen2":  # comfy/ldm/omnigen/omnigen2.py OmniGen2RotaryPosEmbed: caption k at (k, k, k),
        # then the generated image at index cap_len (no references), rows / cols from 0
        text = torch.arange(txt, dtype=torch.float32)[:, None].repeat(1, 3)
        return torch.cat([text, torch.stack([torch.full((n,), float(txt)), r, c], -1)])[None]
    if name == "HiDream":  # comfy/ldm/hidream/model.py _forward: image ids (0, row, col) first, text zeros after
        img = torch.stack([torch.zeros(n), r, c], -1)
        return torch.cat([img, torch.zeros(txt, 3)])[None]
    if name == "LongCat-Image":  # Flux class, txt_ids_dims [1, 2], rope_options shift_t 1, shift_y = shift_x = txt
        img = torch.stack([torch.ones(n), r + txt, c + txt], -1)
        text = torch.zeros(txt, 3)
        text[:, 1] = text[:, 2] = torch.arange(txt, dtype=torch.float32)
        return torch.cat([text, img])[None]
    if name == "Krea 2":  # comfy/ldm/krea2/model.py: text zeros first, image (0, row, col)
        return torch.cat([torch.zeros(txt, 3), torch.stack([torch.zeros(n), r, c], -1)])[None]
    if name == "Lens":  # comfy/ldm/lens/model.py _lens_position_ids: centred image first, text on the diagonal after
        img = torch.stack([torch.zeros(n), r - (h - h // 2), c - (w - w // 2)], -1)
        start = max(h // 2, w // 2)
        return torch.cat([img, torch.arange(start, start + txt, dtype=torch.float32)[:, None].repeat(1, 3)])[None]
    if name == "MageFlow":  # comfy/ldm/mage_flow/model.py: text zeros first, image centred as [-ceil(n/2), floor(n/2))
        return torch.cat([torch.zeros(txt, 3), torch.stack([torch.zeros(n), r - (h - h // 2), c - (w - w // 2)], -1)])[None]
    if name == "Boogu":  # OmniGen2RotaryPosEmbed, as OmniGen2
        text = torch.arange(txt, dtype=torch.float32)[:, None].repeat(1, 3)
        return torch.cat([text, torch.stack([torch.full((n,), float(txt)), r, c], -1)])[None]
    if name == "ErnieImage":  # comfy/ldm/ernie/model.py forward: image (T, row, col) first, then text k at (k, 0, 0)
        text = torch.zeros(txt, 3)
        text[:, 0] = torch.arange(txt, dtype=torch.float32)
        return torch.cat([torch.stack([torch.full((n,), float(txt)), r, c], -1), text])[None]
    raise AssertionError(name)


def ernie_embed_nd3(ids, axes_dim, theta):
    """ErnieImageEmbedND3 (comfy/ldm/ernie/model.py) re-derived: per axis cos / sin of pos * theta^(-arange(0, d, 2)
    / d) in float64, concatenated; block n = [[cos_{n//2}, -sin_{n//2}], [sin_{N/2+n//2}, cos_{N/2+n//2}]];
    [B, L, 1, N, 2, 2] float32."""
    ang = torch.cat([ids[..., i].double()[..., None] / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
                     for i, d in enumerate(axes_dim)], -1)  # [B, L, N]
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    n = ang.shape[-1]
    top, bot = torch.arange(n) // 2, n // 2 + torch.arange(n) // 2
    rot = torch.stack([cos[..., top], -sin[..., top], sin[..., bot], cos[..., bot]], -1)
    return rot.reshape(*rot.shape[:-1], 2, 2).unsqueeze(2)


def by_axis(f, out, axis):
    """The entries of an embedder output that depend on `axis` only: EmbedND layout, the axis' blocks; ErnieImage's
    split-half layout, the axis' (cos, sin) pairs read back from its blocks."""
    ch = channel_ranges(f)[axis]
    if f.layout != "split_half":
        return out[..., ch, :, :]
    n = out.shape[-3]
    k = torch.arange(n // 2)
    top = torch.stack([out[..., 2 * k, 0, 0], -out[..., 2 * k, 0, 1]], -1)  # frequencies 0 .. N/2 - 1
    bot = torch.stack([out[..., 2 * k, 1, 1], out[..., 2 * k, 1, 0]], -1)  # N/2 .. N - 1
    assert torch.equal(out[..., 2 * k, :, :], out[..., 2 * k + 1, :, :])  # each block twice
    return torch.cat([top, bot], -2)[..., ch, :]


def hidream_embed_nd(ids, axes_dim, theta):
    """HiDream's own EmbedND (comfy/ldm/hidream/model.py): the Flux rope per axis, concatenated on dim -3,
    then `.unsqueeze(2)`: [B, L, 1, sum(axes_dim)/2, 2, 2] (Flux's EmbedND: unsqueeze(1))."""
    flux_layout = stock_embed_nd(ids, axes_dim, theta)  # [B, 1, L, ...]
    return flux_layout.squeeze(1).unsqueeze(2)


def stock(f, ids):
    """The family's own stock embedder output for ids."""
    if f.name == "HiDream":
        return hidream_embed_nd(ids, f.axes_dim, f.theta)
    if f.name == "ErnieImage":
        return ernie_embed_nd3(ids, f.axes_dim, f.theta)
    return stock_embed_nd(ids, f.axes_dim, f.theta)


def channel_ranges(f):
    out, start = {}, 0
    for a, d in enumerate(f.axes_dim):
        out[a] = slice(start, start + d // 2)
        start += d // 2
    return out


def prepared(f, method, ids, h, w, t=0.6):
    """The family's embedder at time t for an h x w token image, with the extents the promotion sets."""
    emb = families.build_embedder(f, method)
    emb.set_time(t)
    emb.set_extents(f.latent_extents(h * f.px_per_token // f.latent_px, w * f.px_per_token // f.latent_px))
    return emb


@pytest.mark.parametrize("f", FAMILIES, ids=lambda f: f.name)
def test_base_is_stock_for_every_family(f):
    h, w = int(f.base_len * 2), int(f.base_len * 1.5)
    ids = family_ids(f.name, h, w)
    emb = prepared(f, "base", ids, h, w)
    assert torch.equal(emb(ids), stock(f, ids))


@pytest.mark.parametrize("f", FAMILIES, ids=lambda f: f.name)
def test_sharp_changes_only_spatial_axes_and_only_above_the_base_grid(f):
    L0 = int(f.base_len)
    # taller than the base grid, narrower than it: only the height axis is promoted
    h, w = 2 * L0, L0 - 3
    ids = family_ids(f.name, h, w)
    emb = prepared(f, "sharp", ids, h, w)
    out, want = emb(ids), stock(f, ids)
    assert out.shape == want.shape
    height, width = f.spatial_axes
    assert emb.axis_scales() == pytest.approx({height: h / f.base_len, width: w / f.base_len})
    assert not torch.equal(by_axis(f, out, height), by_axis(f, want, height))
    assert torch.equal(by_axis(f, out, width), by_axis(f, want, width))
    for a in range(len(f.axes_dim)):
        if a not in f.spatial_axes:
            assert torch.equal(by_axis(f, out, a), by_axis(f, want, a))
    # at the base grid nothing changes at all
    ids = family_ids(f.name, L0, L0)
    emb = prepared(f, "sharp", ids, L0, L0)
    assert torch.equal(emb(ids), stock(f, ids))


@pytest.mark.parametrize("name", ("Qwen-Image", "Ovis-Image", "Flux.2", "OmniGen2"))
def test_text_tokens_on_spatial_axes_get_the_promoted_rotation_of_their_position(name):
    # RoPE stays relative across text and image tokens: a text token at position p on a promoted axis
    # is rotated by the same promoted frequencies (and mscale) as an image token at p would be.
    f = families.family(name)
    h = w = int(f.base_len * 2)
    t = 0.6
    ids = family_ids(name, h, w, txt=6)
    out = prepared(f, "sharp", ids, h, w, t)(ids)[0, 0].double().numpy()
    s = h / f.base_len
    text = range(6)  # family_ids puts the text first
    for axis in range(len(f.axes_dim)):
        D = f.axes_dim[axis]
        promoted = axis in f.spatial_axes
        freqs = np_frequencies(D, f.theta, s if promoted else 1.0, t, "sharp", f.base_len)
        m = np_mscale(s, "sharp") if promoted else 1.0
        for i in text:
            angle = float(ids[0, i, axis]) * freqs
            want = m * np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                                 np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
            np.testing.assert_allclose(out[i, channel_ranges(f)[axis]], want, atol=1e-6, rtol=0)


def test_latent_extents_follow_each_family_patchify():
    assert families.family("Flux.1").latent_extents(255, 128, 8) == {1: 128.0, 2: 64.0}  # /8 latent, 2x2 patches, padded
    assert families.family("HunyuanImage 2.1").latent_extents(64, 80, 32) == {0: 64.0, 1: 80.0}
    assert families.family("Qwen-Image").base_len == 83.0


def test_latent_extents_per_family_latent_and_patch():
    # Flux.2: the /16 latent is already patchified (patch 1): one position per latent px
    assert families.family("Flux.2").latent_extents(64, 48) == {1: 64.0, 2: 48.0}
    # Chroma Radiance: called with the image itself, 16 px patches, padded up
    assert families.family("Chroma Radiance").latent_extents(1030, 512) == {1: 65.0, 2: 32.0}
    # Z-Image / Lumina 2: /8 latent, 2x2 patches on the padded latent
    assert families.family("Z-Image").latent_extents(129, 64) == {1: 65.0, 2: 32.0}
    # Qwen-Image is called with [B, C, T, H, W]
    assert families.family("Qwen-Image").extents_from_x(torch.zeros(1, 16, 1, 166, 100)) == {1: 83.0, 2: 50.0}
    assert families.family("HunyuanImage 2.1").extents_from_x(torch.zeros(1, 64, 64, 96)) == {0: 64.0, 1: 96.0}
    with pytest.raises(ValueError, match="image latent"):
        families.family("Flux.1").extents_from_x(torch.zeros(2, 16))


def test_schedule_facts():
    # ModelSamplingFlux families carry their ComfyUI default shift; flow families (fixed shift) none
    shifts = {f.name: f.flux_shift for f in FAMILIES}
    assert shifts["Flux.1"] == 1.15 and shifts["Flux.2"] == 2.02 and shifts["Qwen-Image"] == 1.15
    assert shifts["Z-Image"] is shifts["Lumina 2"] is shifts["HunyuanImage 2.1"] is None
    assert {f.name for f in FAMILIES if f.resolution_shift} == {"Flux.1", "Ovis-Image", "Chroma", "Chroma Radiance"}


def test_hidream_row_layout_and_ids():
    f = families.family("HiDream")
    assert detect_family(fake_model("HiDreamImageTransformer2DModel", "pe_embedder", 10000, [64, 32, 32])) is f
    assert (f.axes_dim, f.theta, f.base_len, f.latent_px, f.flux_shift) == ((64, 32, 32), 10000.0, 64.0, 8, None)
    h, w, txt = 96, 40, 7
    ids = family_ids(f.name, h, w, txt)
    out = prepared(f, "sharp", ids, h, w, t=1.0)(ids)
    assert out.shape == (1, h * w + txt, 1, sum(f.axes_dim) // 2, 2, 2)  # HiDream's [B, L, 1, ...]
    # the text tokens sit at position 0 on every axis: the identity rotation, scaled by mscale on the
    # promoted height axis only (mscale is 1 on the unpromoted width axis and on the index axis)
    ch = channel_ranges(f)
    text = out[0, h * w:, 0]
    eye = torch.eye(2).expand_as(text[:, ch[0]])
    assert torch.equal(text[:, ch[0]], eye) and torch.equal(text[:, ch[2]], torch.eye(2).expand_as(text[:, ch[2]]))
    m = np_mscale(h / 64, "sharp")
    assert m > 1 and torch.allclose(text[:, ch[1]], m * torch.eye(2).expand_as(text[:, ch[1]]), atol=1e-6)


def test_omnigen2_inner_embedder_is_found():
    f = families.family("OmniGen2")
    model = fake_model("OmniGen2Transformer2DModel", "rope_embedder.rope_embedder", 10000, [40, 40, 40])
    assert detect_family(model) is f
    attr, emb = families.find_embedder(model)
    assert attr == "rope_embedder.rope_embedder" and emb is model.rope_embedder.rope_embedder
    # Lumina 2 (NextDiT) keeps its EmbedND at rope_embedder itself: still found there
    lumina = fake_model("NextDiT", "rope_embedder", 10000.0, (32, 32, 32))
    assert families.find_embedder(lumina)[0] == "rope_embedder" and detect_family(lumina).name == "Lumina 2"
    assert (f.axes_dim, f.theta, f.base_len, f.latent_px, f.flux_shift, f.head_axis) == ((40, 40, 40), 10000.0,
                                                                                          64.0, 8, None, 1)


def test_subclasses_and_compiled_models_are_detected():
    chroma = type("Chroma", (), {"pe_embedder": type("E", (), {"theta": 10000, "axes_dim": [16, 56, 56]})(),
                                 "params": None})
    radiance = type("ChromaRadiance", (chroma,), {})
    fork = type("MyRadianceFork", (radiance,), {})
    assert detect_family(radiance()).name == "Chroma Radiance"  # not its base class's row
    assert detect_family(fork()).name == "Chroma Radiance"
    assert detect_family(chroma()).name == "Chroma"
    compiled = type("OptimizedModule", (), {"_orig_mod": radiance()})()  # torch.compile wrapper
    assert detect_family(compiled).name == "Chroma Radiance"


def test_ernie_image_promoted_rotation_matches_the_formulas():
    """ErnieImage's split-half blocks carry SHARP's frequencies of the numpy re-derivation (on ErnieImage's own
    arange grid, which differs from EmbedND's only in the last bits) and its mscale, at every position."""
    f = families.family("ErnieImage")
    h, w, t = int(2 * f.base_len), int(f.base_len) - 3, 0.6
    ids = family_ids(f.name, h, w)
    got = by_axis(f, prepared(f, "sharp", ids, h, w, t)(ids), 1)[0, :, 0].double().numpy()  # [L, 24, (cos, sin)]
    s = h / f.base_len
    angle = ids[0, :, 1].double().numpy()[:, None] * np_frequencies(48, f.theta, s, t, "sharp", f.base_len)
    want = np_mscale(s, "sharp") * np.stack([np.cos(angle), np.sin(angle)], -1)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert not np.allclose(got, np.stack([np.cos(ids[0, :, 1].double().numpy()[:, None] * np_frequencies(
        48, f.theta, 1.0, t, "base", f.base_len)), np.sin(ids[0, :, 1].double().numpy()[:, None] * np_frequencies(
            48, f.theta, 1.0, t, "base", f.base_len))], -1), atol=1e-3)  # and it is promoted
