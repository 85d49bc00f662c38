"""The RoPE DiT families SHARP can promote: one row each, detected from the loaded model.

Adding a family is one `Family(...)` row in FAMILIES. Facts are read from ComfyUI's source
(v0.14.1 unless a row says otherwise); each row names the files it comes from.

A row says where the model keeps its positional embedder, its RoPE constants, which axes are
spatial, its latent and patch size (the promotion sets each spatial axis's extent from the latent the
model is called with, `Family.extents_from_x`, for every family: never from the ids), and the
training grid. Our replacement embedder keeps the EmbedND output layout [B, 1, L, sum(axes_dim)/2, 2, 2]
(HiDream's: [B, L, 1, ...], `head_axis`), so any transpose a family applies to the embedder output
(Z-Image and Lumina2 call `.movedim(1, 2)` on it) still happens in the model's own code.
"""
from __future__ import annotations

from dataclasses import dataclass

from sharp import rope


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple            # class names of ComfyUI's diffusion_model for this family
    embedder_attr: str        # attribute (dotted path) of diffusion_model holding the multi-axis RoPE embedder
    axes_dim: tuple
    theta: float
    spatial_axes: tuple       # axes promoted by SHARP (height, width)
    base_resolution: int      # training resolution in px (the base grid)
    px_per_token: int         # image px per RoPE position (VAE downscale x patch size)
    comfyui: str              # oldest ComfyUI we verified has this family (we test 0.3.64, 0.14.1, 0.28.0, 0.33.0)
    source: str               # where the facts come from
    txt_ids_dims: tuple | None = None  # diffusion_model.params.txt_ids_dims that tells Flux-class models apart
    latent_px: int = 8        # image px per px of the x the model is called with (VAE downscale; 1 = pixel space)
    flux_shift: float | None = None  # default mu of the family's ModelSamplingFlux; None: another schedule
                                     # (ModelSamplingDiscreteFlow, a fixed shift independent of the size)
    resolution_shift: bool = False   # ComfyUI's size-dependent ModelSamplingFlux node formula (Flux.1's
                                     # base_shift 0.5 / max_shift 1.15) is this family's own
    rope_options: bool = False  # the family's ids follow ComfyUI's transformer_options["rope_options"] (ScaleROPE)
    params: tuple = ()        # ((name, value), ...) that diffusion_model.params must have (tells Flux-class rows apart)
    head_axis: int = 1        # where the family's embedder puts the singleton head dim: 1 = EmbedND's
                              # [B, 1, L, ...]; 2 = [B, L, 1, ...] (HiDream's own EmbedND, unsqueeze(2))
    layout: str = "embednd"   # "split_half": ErnieImage's own frequencies and blocks (sharp/split_half.py)

    @property
    def base_len(self) -> float:
        """L0: positions along a side at the training resolution."""
        return self.base_resolution / self.px_per_token

    def embedder_kwargs(self) -> dict:
        """The `sharp.RoPEEmbedder` arguments this family needs besides method and params."""
        return dict(theta=self.theta, axes_dim=self.axes_dim, base_len=self.base_len,
                    spatial_axes=self.spatial_axes, head_axis=self.head_axis)

    def latent_extents(self, latent_h: int, latent_w: int, latent_px: int | None = None) -> dict[int, float]:
        """Extent per spatial axis from a latent of latent_h x latent_w (latent_px image px per latent px,
        default the family's), as the family's patchify pads it (ceil)."""
        per_token = self.px_per_token // (self.latent_px if latent_px is None else latent_px)
        h, w = -(-int(latent_h) // per_token), -(-int(latent_w) // per_token)
        return dict(zip(self.spatial_axes, (float(h), float(w))))

    def extents_from_x(self, x) -> dict[int, float]:
        """Extents from the x the model is called with: [B, C, H, W] (or [B, C, T, H, W] for Qwen-Image);
        the last two dims are the latent's height and width."""
        shape = tuple(x.shape)
        if len(shape) < 4:
            raise ValueError(f"{self.name}: expected an image latent [B, C, (T,) H, W], got shape {shape}")
        return self.latent_extents(shape[-2], shape[-1])


FAMILIES = (
    Family("Flux.1", ("Flux",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16, "0.3.64",
           "comfy/ldm/flux/model.py Flux.process_img: ids (index, row, col), h_len = (h + 1) // 2 = ceil on the "
           "padded latent; text ids all 0 (txt_ids_dims []). model_detection.py: axes [16,56,56], theta 10000, "
           "patch 2 on the /8 VAE latent (latent_formats.Flux). Kontext references: index 1 ('offset'), or "
           "index 0 with row/col offsets past the image ('uxo'), so the promotion reads extents from the latent. "
           "supported_models.Flux: ModelSamplingFlux, default shift 1.15. Covers dev, schnell, Krea, Fill, Kontext.",
           (), latent_px=8, flux_shift=1.15, resolution_shift=True, rope_options=True),
    Family("Flux.2", ("Flux",), "pe_embedder", (32, 32, 32, 32), 2000.0, (1, 2), 1024, 16, "0.14.1",
           "model_detection.py (double_stream_modulation_img): axes [32,32,32,32], theta 2000, patch 1, "
           "txt_ids_dims [3] (text positions on axis 3 only; image tokens 0 there), references by 'index' at "
           "10, 20... (ref_index_scale 10). latent_formats.Flux2: 128 channels at /16 (the 2x2 patchify is "
           "in the latent), so 16 px per position as Flux.1. supported_models.Flux2: ModelSamplingFlux, shift 2.02.",
           (3,), latent_px=16, flux_shift=2.02, rope_options=True),
    Family("Ovis-Image", ("Flux",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16,
           "0.14.1",
           "model_detection.py (yak_mlp + txt_norm): the Flux class with txt_ids_dims [1, 2]: text positions "
           "0..n-1 lie on both spatial axes at image index 0, so the extent comes from the latent, not from "
           "max(ids). Flux.1 latent, patch and schedule (supported_models.Flux).",
           (1, 2), latent_px=8, flux_shift=1.15, resolution_shift=True, rope_options=True,
           params=(("yak_mlp", True), ("txt_norm", True))),
    Family("Chroma", ("Chroma",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16, "0.3.64",
           "comfy/ldm/chroma/model.py: EmbedND(axes_dim, theta) as Flux; img ids (0, row, col) with h_len = "
           "ceil(h / 2), text all 0. supported_models.Chroma: Flux latent, ModelSamplingFlux (default 1.15).",
           latent_px=8, flux_shift=1.15, resolution_shift=True),
    Family("Chroma Radiance", ("ChromaRadiance",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16, "0.3.64",
           "comfy/ldm/chroma_radiance/model.py: pixel space (the model is called with the [B, 3, H, W] image), "
           "patch 16 px (model_detection reads img_in_patch; 16 in released checkpoints), h_len = padded h // 16; "
           "embedder and ids as Chroma. 0.33 adds use_sequential_txt_ids (checkpoints with a __sequential__ key, "
           "or ChromaRadianceOptions force_sequential_txt_ids): text token k then sits at (k, 0, 0), i.e. on the "
           "image-index axis (not promoted) with spatial positions 0; image ids are unchanged, so the spatial "
           "extents (from the latent) are the same.",
           latent_px=1, flux_shift=1.15, resolution_shift=True),
    Family("Qwen-Image", ("QwenImageTransformer2DModel",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1328, 16,
           "0.3.64",
           "comfy/ldm/qwen_image/model.py process_img: x is [B, C, T, H, W] (Wan 2.1 latent, /8), patch 2, "
           "positions centred (- h_len // 2); text ids at txt_start + k on all three axes (index axis != 0, so "
           "they do not count); references at index 1, 2... (or -1, -2...). Trained at 1328 px (Qwen-Image's 1:1 "
           "size). supported_models.QwenImage: ModelSamplingFlux, shift 1.15.",
           latent_px=8, flux_shift=1.15),
    Family("Z-Image", ("NextDiT",), "rope_embedder", (32, 48, 48), 256.0, (1, 2), 1024, 16,
           "0.14.1",
           "comfy/ldm/lumina/model.py NextDiT.embed_all: caption and image ids embedded in separate calls; image "
           "ids (caption length padded to 32 + 1, row, col) via pos_ids_x, then padded with (0, 0, 0) rows to a "
           "multiple of 32 tokens; the model calls .movedim(1, 2) on the output. Flux latent (/8), patch 2 on the "
           "padded latent. model_detection.py (dim 3840): axes_dims [32,48,48], rope_theta 256. "
           "supported_models.ZImage: ModelSamplingDiscreteFlow, shift 3 (fixed at every size).",
           latent_px=8, rope_options=True),
    Family("Lumina 2", ("NextDiT",), "rope_embedder", (32, 32, 32), 10000.0, (1, 2), 1024, 16,
           "0.3.64",
           "comfy/ldm/lumina/model.py NextDiT as Z-Image (0.3.64: caption and image ids in one call, image axis 0 = "
           "caption length, theta fixed at 10000); model_detection.py (dim 2304): axes_dims [32,32,32], "
           "rope_theta 10000. supported_models.Lumina2: ModelSamplingDiscreteFlow, shift 6.",
           latent_px=8, rope_options=True),
    Family("HunyuanImage 2.1", ("HunyuanVideo",), "pe_embedder", (64, 64), 256.0, (0, 1), 2048,
           32, "0.3.64",
           "comfy/ldm/hunyuan_video/model.py img_ids_2d: two axes (row, col), text (and byT5) ids all 0; "
           "model_detection.py: 2-D patch_size from img_in ([1, 1]) -> axes [64, 64], theta 256; "
           "latent_formats.HunyuanImage21: 64 channels at /32, so 32 px per position; trained at 2048 px. "
           "supported_models.HunyuanImage21: ModelSamplingDiscreteFlow, shift 5. (HunyuanVideo itself has 3 axes, "
           "theta 256, and matches no row.)",
           latent_px=32),
    Family("HiDream", ("HiDreamImageTransformer2DModel",), "pe_embedder", (64, 32, 32), 10000.0, (1, 2), 1024, 16,
           "0.3.64",
           "comfy/ldm/hidream/model.py (identical in 0.3.64 and 0.14.1): its own EmbedND(theta=10000, "
           "axes_dims_rope) returning emb.unsqueeze(2), i.e. [B, L, 1, sum/2, 2, 2] (head_axis 2); _forward: "
           "pad_to_patch_size, img ids (0, row, col) on the pH x pW patch grid, then text ids all 0 appended "
           "after the image (so max + 1 is the image extent). model_detection.py: axes_dims_rope [64, 32, 32], "
           "patch_size 2, in_channels 16, max_resolution [128, 128] latent px (max_seq 4096 tokens = 64 x 64 "
           "positions = 1024 px). supported_models.HiDream: latent_formats.Flux (/8), sampling_settings {} "
           "(model_base.HiDream is ModelType.FLOW: ModelSamplingDiscreteFlow, a fixed shift; ComfyUI's "
           "templates add ModelSamplingSD3). HiDream-E1 (image_cond) concatenates the reference latent along the "
           "width, so the ids then span twice the width; the promotion sets extents from the generated latent.",
           latent_px=8, head_axis=2),
    Family("OmniGen2", ("OmniGen2Transformer2DModel",), "rope_embedder.rope_embedder", (40, 40, 40), 10000.0, (1, 2),
           1024, 16, "0.3.64",
           "comfy/ldm/omnigen/omnigen2.py (identical in 0.3.64 and 0.14.1): diffusion_model.rope_embedder is an "
           "OmniGen2RotaryPosEmbed (it also carries theta / axes_dim) that builds the ids and calls its inner "
           "comfy.ldm.flux.layers.EmbedND at rope_embedder.rope_embedder once per model call, then .movedim(1, 2) "
           "on the output. Ids: caption token k at (k, k, k) (on both spatial axes), each reference image at "
           "index cap_len + the max(H, W) tokens of the references before it with rows/cols from 0, the "
           "generated image last at the next index with rows/cols from 0 on the padded latent; so the extents "
           "come from the latent, and only the inner EmbedND is replaced. model_detection.py: axes_dim_rope "
           "[40, 40, 40], theta 10000 (fixed in the class), patch 2, in_channels 16; supported_models.Omnigen2: "
           "latent_formats.Flux (/8), sampling shift 2.6 with ModelType.FLOW (ModelSamplingDiscreteFlow, "
           "fixed). Base 1024 px: OmniGen2's default generation size (not stated in ComfyUI's source).",
           latent_px=8),
    # --- families added after 0.14.1 (read from ComfyUI 0.33.0; the oldest version each was tested on is its
    # `comfyui`) ---
    Family("LongCat-Image", ("Flux",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16,
           "0.28.0",
           "model_detection.py (context_in_dim 3584, vec_in_dim None): the Flux class with txt_ids_dims [1, 2] (text "
           "k at (0, k, k)); model_base.LongCatImage._apply_model sets rope_options shift_t 1 and shift_y = shift_x = "
           "the text length, so the generated image sits at index 1, rows/cols from the text length on (its ids say "
           "nothing about the extent: from the latent). supported_models.LongCatImage: Flux latent (/8), patch 2, "
           "ModelSamplingFlux with the default shift 1.15 (no sampling_settings). Base 1024 px: LongCat-Image's "
           "default size (not stated in ComfyUI's source).",
           (1, 2), latent_px=8, flux_shift=1.15, rope_options=True,
           params=(("context_in_dim", 3584), ("vec_in_dim", None))),
    Family("Krea 2", ("SingleStreamDiT",), "pe_embedder", (32, 48, 48), 1000.0, (1, 2), 1024, 16,
           "0.28.0",
           "comfy/ldm/krea2/model.py SingleStreamDiT: pe_embedder = comfy.ldm.flux.layers.EmbedND(theta=int(1e3), "
           "axes [hd - 12 (hd // 16), 6 (hd // 16), 6 (hd // 16)] = [32, 48, 48] for head dim 128 "
           "(model_detection.py: head_dim 128); process_img: ids (index, row, col) from 0 on the patch-2 padded "
           "latent, references at index 1, 2...; text ids all 0, before the image; rope_options not applied. "
           "supported_models.Krea2: latent_formats.Wan21 (/8; x may be [B, C, T, H, W]), ModelType.FLUX with shift "
           "1.15 (ModelSamplingFlux). Base 1024 px (not stated in ComfyUI's source).",
           latent_px=8, flux_shift=1.15),
    Family("Lens", ("LensTransformer2DModel",), "pos_embed", (8, 28, 28), 10000.0, (1, 2), 1440, 16,
           "0.28.0",
           "comfy/ldm/lens/model.py: pos_embed = EmbedND(theta 10000, axes_dims_rope (8, 28, 28)), head dim 64; "
           "_lens_position_ids: image (0, row, col) centred ([-(n - n // 2), n // 2)), then text k at "
           "(s + k, s + k, s + k) with s = max(h // 2, w // 2) (index != 0); x [B, 128, h, w] is the Flux2 latent "
           "(/16), one token per latent px. supported_models.Lens: ModelType.FLUX (ModelSamplingFlux) with shift "
           "1.829, 'Default mu for 1440x1440': base 1440 px = 90 positions.",
           latent_px=16, flux_shift=1.829),
    Family("MageFlow", ("MageFlowTransformer2DModel",), "pe_embedder", (16, 56, 56), 10000.0, (1, 2), 1024, 16,
           "0.33.0",
           "comfy/ldm/mage_flow/model.py: pe_embedder = EmbedND(theta 10000, axes_dims_rope (16, 56, 56)); "
           "process_img: patch 1 on the Flux2 latent (/16), ids (index, row, col) centred as [-ceil(n/2), "
           "floor(n/2)), references at index 1, 2...; text ids all 0 (inside the image's span). "
           "model_base.MageFlow: ModelType.FLOW (ModelSamplingDiscreteFlow, shift 6, fixed). Absent in 0.28.0. "
           "Base 1024 px (not stated in ComfyUI's source).",
           latent_px=16),
    Family("Boogu", ("BooguTransformer2DModel",), "rope_embedder.rope_embedder", (40, 40, 40), 10000.0, (1, 2),
           1024, 16, "0.28.0",
           "comfy/ldm/boogu/model.py: rope_embedder = comfy.ldm.omnigen.omnigen2.OmniGen2RotaryPosEmbed(theta 10000, "
           "axes_dim_rope (40, 40, 40)), called as in OmniGen2 (caption at (k, k, k), references and the generated "
           "image each from row/col 0), so the inner EmbedND is replaced and extents come from the latent. "
           "supported_models.Boogu(Omnigen2): Flux latent (/8), patch 2, ModelType.FLOW shift 3.16 (fixed). Base "
           "1024 px (not stated in ComfyUI's source).",
           latent_px=8),
    Family("ErnieImage", ("ErnieImageModel",), "pos_embed", (32, 48, 48), 256.0, (1, 2), 1024,
           16, "0.28.0",
           "comfy/ldm/ernie/model.py: pos_embed = ErnieImageEmbedND3(theta 256, rope_axes_dim (32, 48, 48)), head dim "
           "128: frequencies 1 / theta^(arange(0, d, 2) / d) turned into split-half blocks for comfy-kitchen's "
           "rms_rope_split_half (0.33; apply_rope_split_half in 0.28), output [B, L, 1, 64, 2, 2] (layout "
           "'split_half', head_axis 2); forward: image ids (text length T + shift_t, row, col) on the unpadded patch-1 "
           "grid with rope_options scale/shift, then text k at (k, 0, 0); so the extents come from the latent. "
           "supported_models.ErnieImage: latent_formats.Flux2 (/16, 128 channels), patch 1; ModelType.FLOW, shift 3 "
           "(fixed). Base 1024 px (not stated in ComfyUI's source).",
           latent_px=16, rope_options=True, head_axis=2, layout="split_half"),
)

NOT_SUPPORTED_HINT = ("SD1.x, SDXL and SD3 have no multi-axis RoPE (learned or sinusoidal 2-D positions), so "
                      "there is nothing to promote.")


class UnsupportedModelError(ValueError):
    """No family row matches the model."""


# Image models with multi-axis RoPE that SHARP cannot patch correctly (read from ComfyUI 0.33.0): class name ->
# (model, why). Detection refuses them by name instead of guessing from constants.
NOT_PATCHABLE = {
    "Ideogram4Transformer2DModel": ("Ideogram 4",
                                    "its interleaved mRoPE (Qwen-VL style, theta 5e6, sections (24, 20, 20)) is "
                                    "computed inline in forward from position ids; there is no embedder to replace"),
    "HiDreamO1Transformer": ("HiDream-O1",
                             "its interleaved mRoPE (Qwen-VL style) is computed from LLM position ids inside the "
                             "model; there is no per-axis embedder to replace"),
    "JoyImageTransformer3DModel": ("JoyImage",
                                   "its 3-D RoPE (theta 256, float32 frequencies) is computed inline in a model "
                                   "method; there is no embedder module to replace"),
    "PixDiT_T2I": ("PixelDiT", "its 2-D RoPE is built inline (precompute_freqs_cis_2d) and it has its own NTK-aware "
                               "resolution mode (rope_mode 'ntk_aware'): use that"),
    "PidNet": ("PixelDiT", "its 2-D RoPE is built inline (precompute_freqs_cis_2d) and it has its own NTK-aware "
                           "resolution mode (rope_mode 'ntk_aware'): use that"),
}


def family(name: str) -> Family:
    """The row named `name` (KeyError naming the rows otherwise)."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(f"no family {name!r}; rows: {[f.name for f in FAMILIES]}")


def supported_families_text() -> str:
    return "; ".join(f"{f.name} (ComfyUI >= {f.comfyui})" for f in FAMILIES)


def names_text(rows=FAMILIES) -> str:
    """"A, B and C": the rows' names, in table order (for node text built from the table)."""
    names = [f.name for f in rows]
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def grouped_text(key, fmt: str = "{value}: {names}", rows=FAMILIES) -> str:
    """"1024: A, B; 1328: C": the rows grouped by key(row) (rows where it is None left out), values sorted."""
    groups: dict = {}
    for f in rows:
        if key(f) is not None:
            groups.setdefault(key(f), []).append(f)
    return "; ".join(fmt.format(value=v, names=names_text(g)) for v, g in sorted(groups.items()))


def get_path(obj, path: str):
    """obj.a.b for path "a.b"; None where any part is missing."""
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def embedder_attrs() -> list[str]:
    """The known embedder attributes, deepest path first: OmniGen2's inner EmbedND
    (rope_embedder.rope_embedder) is found before its wrapper (rope_embedder, Lumina 2's own embedder)."""
    attrs = list(dict.fromkeys(f.embedder_attr for f in FAMILIES))
    return sorted(attrs, key=lambda a: -a.count("."))


def find_embedder(diffusion_model, get_embedder=None) -> tuple[str, object]:
    """(attribute path, embedder) of the first known RoPE embedder attribute on the model.
    get_embedder(attr): how to read it (default: the attribute path; the promotion reads through the
    patcher so that another pack's object patch is what gets checked)."""
    for attr in embedder_attrs():
        emb = get_embedder(attr) if get_embedder else get_path(diffusion_model, attr)
        if emb is not None:
            return attr, emb
    return "", None


def _params_match(diffusion_model, family: Family) -> bool:
    params = getattr(diffusion_model, "params", None)
    return all(getattr(params, name, object()) == value for name, value in family.params)


def detect_family(diffusion_model, override: str | None = None, get_embedder=None) -> Family:
    """The family row of a loaded ComfyUI diffusion_model, from its class, embedder attribute and the
    embedder's theta / axes_dim. `override` (a family name) skips detection but is still checked
    against the embedder's attribute and number of axes. get_embedder: see `find_embedder`."""
    diffusion_model = getattr(diffusion_model, "_orig_mod", diffusion_model)  # torch.compile'd (TorchCompileModel)
    cls = type(diffusion_model).__name__
    for name in [c.__name__ for c in type(diffusion_model).__mro__]:
        if name in NOT_PATCHABLE:
            model, why = NOT_PATCHABLE[name]
            raise UnsupportedModelError(f"{model} ({name}) is not supported: {why}. Supported: "
                                        f"{supported_families_text()}.")
    attr, emb = find_embedder(diffusion_model, get_embedder)
    if emb is None:
        raise UnsupportedModelError(
            f"{cls} has no multi-axis RoPE embedder (looked for {sorted({f.embedder_attr for f in FAMILIES})}). "
            f"{NOT_SUPPORTED_HINT} Supported: {supported_families_text()}.")
    theta = float(getattr(emb, "theta", float("nan")))
    axes = tuple(int(d) for d in getattr(emb, "axes_dim", ()))
    if override:
        matches = [f for f in FAMILIES if f.name == override]
        if not matches:
            raise UnsupportedModelError(f"unknown family override {override!r}; choose one of "
                                        f"{[f.name for f in FAMILIES]} or leave it on auto")
        family = matches[0]
        if family.embedder_attr != attr or len(family.axes_dim) != len(axes):
            raise UnsupportedModelError(
                f"family override {override!r} expects {family.embedder_attr} with {len(family.axes_dim)} axes "
                f"{family.axes_dim}, but this {cls} has {attr} with axes_dim {axes}")
        return family
    txt_dims = getattr(getattr(diffusion_model, "params", None), "txt_ids_dims", None)
    txt_dims = tuple(txt_dims) if txt_dims is not None else ()
    # the class or, for subclasses (fine-tune forks), the nearest known base class; most specific first,
    # so ChromaRadiance (a Chroma subclass) is not taken for Chroma
    for name in [c.__name__ for c in type(diffusion_model).__mro__]:
        for family in FAMILIES:
            if (name in family.classes and attr == family.embedder_attr and axes == family.axes_dim
                    and theta == family.theta and family.txt_ids_dims in (None, txt_dims)
                    and _params_match(diffusion_model, family)):
                return family
    # Same constants under an unknown class (a subclass or fork): match on the embedder alone.
    by_constants = [f for f in FAMILIES if attr == f.embedder_attr and axes == f.axes_dim and theta == f.theta
                    and f.txt_ids_dims in (None, txt_dims) and _params_match(diffusion_model, f)]
    if len(by_constants) == 1:
        return by_constants[0]
    raise UnsupportedModelError(
        f"{cls} has a RoPE embedder ({attr}, theta {theta:g}, axes_dim {axes}) that matches no known family. "
        f"Supported: {supported_families_text()}. If it is one of these with other constants, pick it with the "
        "family override input.")


def build_embedder(family: Family, method: str = "sharp", base_resolution: int | None = None,
                   theta: float | None = None, axes_dim=None, params: rope.RoPEParams = rope.RoPEParams()):
    """A `sharp.RoPEEmbedder` for this family (base_resolution overrides the family's training grid;
    theta / axes_dim, the model's own embedder constants, override the row's: a fine-tune or a family
    picked by override keeps its own frequencies, with the row's layout; params: the method's constants)."""
    from sharp.embedder import RoPEEmbedder
    from sharp.split_half import SplitHalfRoPEEmbedder

    kwargs = family.embedder_kwargs()
    if theta is not None:
        kwargs["theta"] = float(theta)
    if axes_dim is not None:
        if len(axes_dim) != len(family.axes_dim):
            raise UnsupportedModelError(f"{family.name} has {len(family.axes_dim)} RoPE axes, got axes_dim {axes_dim}")
        kwargs["axes_dim"] = tuple(int(d) for d in axes_dim)
    if base_resolution is not None:
        kwargs["base_len"] = rope.base_len_from_resolution(base_resolution, family.px_per_token)
    cls = SplitHalfRoPEEmbedder if family.layout == "split_half" else RoPEEmbedder
    return cls(method=method, params=params, **kwargs)
