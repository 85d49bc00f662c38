"""The hostile and careless inputs (docs/bad_inputs.md), one list per surface, shared by the tests that try them
(library, nodes with the fakes, the real-ComfyUI server) and checked against the table in docs/bad_inputs.md
(tests/test_bad_inputs.py: every id here is a row there and back).

Each case: id -> (what the test builds, a regex the error message must match). Builders take the good
pieces and return the bad ones; they are pure (no file system) so every test can write them where it wants.
"""
from __future__ import annotations

import json
import math
import os

# --- DS-DiT checkpoints (Load DS-DiT, `python -m sharp refsr --ckpt`, sharp.refsr.load_dsdit) -------------
# builder(cfg: dict, meta: dict, state: dict) -> (meta, state); cfg is the good config as a dict.


def _cfg(**kw):
    def build(cfg, meta, state):
        return dict(meta, dsdit_config=json.dumps(dict(cfg, **kw))), state
    return build


def _raw_cfg(text):
    def build(cfg, meta, state):
        return dict(meta, dsdit_config=text), state
    return build


def _defaults(text):
    def build(cfg, meta, state):
        return dict(meta, sampling_defaults=text), state
    return build


def _nan_weight(cfg, meta, state):
    state = dict(state)
    key = sorted(state)[0]
    bad = state[key].clone()
    bad.view(-1)[0] = math.nan
    state[key] = bad
    return meta, state


def _foreign(cfg, meta, state):
    return {"format": "pt", "secret": "s3cr3t-metadata"}, state


NESTED = "[" * 30000 + "]" * 30000  # 60 000 characters: within the length bound, beyond json's recursion

CHECKPOINTS = {
    "ckpt-depth-1e7": (_cfg(depth=10 ** 7), r"config\.depth must be in \[1, 128\]"),
    "ckpt-dim-65536": (_cfg(dim=65536, heads=1), r"config\.dim must be in \[1, 4096\]"),
    "ckpt-radius-1e5": (_cfg(radius=10 ** 5), r"config\.radius must be in \[0, 32\]"),
    "ckpt-patch-2e4": (_cfg(patch=20000), r"config\.patch must be in \[1, 32\]"),
    "ckpt-latent-channels-1e7": (_cfg(latent_channels=10 ** 7), r"config\.latent_channels must be in"),
    "ckpt-mlp-ratio-1e7": (_cfg(mlp_ratio=1e7), r"config\.mlp_ratio must be a finite number in \(0, 16\]"),
    "ckpt-mlp-ratio-nan": (_raw_cfg('{"mlp_ratio": NaN}'), r"config\.mlp_ratio must be a finite number"),
    "ckpt-mlp-ratio-inf": (_raw_cfg('{"mlp_ratio": Infinity}'), r"config\.mlp_ratio must be a finite number"),
    "ckpt-res-scale-nan": (_raw_cfg('{"res_scale": NaN}'), r"config\.res_scale must be a finite number"),
    "ckpt-res-scale-inf": (_raw_cfg('{"res_scale": Infinity}'), r"config\.res_scale must be a finite number"),
    # every field within its bounds, ~10^11 parameters: refused from the header's shapes, nothing built
    "ckpt-huge-in-bounds": (_cfg(dim=4096, depth=128, heads=128, mlp_ratio=16.0, plw_hidden=4096, radius=32),
                            r"tensors do not match its DS-DiT config"),
    "ckpt-config-nested": (_raw_cfg(NESTED), r"nested too deeply"),
    "ckpt-config-1mb": (_raw_cfg(" " * (1 << 20)), r"at most 65536 characters"),
    "ckpt-config-huge-int": (_raw_cfg('{"depth": ' + "9" * 5000 + "}"), r"not valid JSON"),
    "ckpt-temperature-nan": (_defaults('{"temperature": NaN}'), r"sampling_defaults\.temperature must be a finite"),
    "ckpt-ref-transfer-1e30": (_defaults('{"ref_transfer": 1e30}'), r"sampling_defaults\.ref_transfer must be a"),
    "ckpt-defaults-nested": (_defaults(NESTED), r"nested too deeply"),
    "ckpt-nan-weights": (_nan_weight, r"holds NaN or infinite values"),
    "ckpt-foreign-metadata": (_foreign, r"not a DS-DiT checkpoint"),
}
SECRET = "s3cr3t-metadata"  # must never appear in an error message


# --- DS-DiT Reference SR / super_resolve arguments ----------------------------------------------------------
# kwargs merged into a good call (LR 16x16, Ref 64x64, x4); "lr_size": (h, w) replaces the LR (Ref = 4x it).

SR_ARGS = {
    "sr-guidance-nan": ({"guidance": math.nan}, r"guidance must be a finite number in \[0, 100\]"),
    "sr-guidance-inf": ({"guidance": math.inf}, r"guidance must be a finite number"),
    "sr-temperature-nan": ({"temperature": math.nan}, r"temperature must be a finite number in \[0, 10\]"),
    "sr-temperature-100": ({"temperature": 100.0}, r"temperature must be a finite number in \[0, 10\]"),
    "sr-ref-transfer-nan": ({"ref_transfer": math.nan}, r"ref_transfer must be a finite number"),
    "sr-ref-transfer-1e30": ({"ref_transfer": 1e30}, r"ref_transfer must be a finite number in \[0, 10\]"),
    "sr-lr-1x1": ({"lr_size": (1, 1)}, r"LR is 1x1 px: DS-DiT needs an LR of at least 2x2 px"),
    "sr-lr-nan-pixel": ({"lr_nan": True}, r"LR holds NaN or infinite pixel values"),
    "sr-overlap-equals-tile": ({"tile_size": 32, "overlap": 32}, r"overlap \(32 px\) must be smaller than the tile"),
    "sr-overlap-above-tile": ({"tile_size": 32, "overlap": 1024}, r"must be smaller than the tile"),
    "sr-stride-4px": ({"tile_size": 32, "overlap": 28}, r"needs \d+ tiles .* computing every pixel"),
    "sr-memory": ({"memory_limit": 1 << 20}, r"needs about .* GiB .* An LR of at most about \d+x\d+ px fits"),
}


# --- diffusers Flux folders under models/diffusion_models (Load RS-FLUX, `python -m sharp convert`) ---------
# builder(root: str, good: callable(path) -> writes a good pipeline folder at path) -> the folder's name.
# expected: ("skipped", regex of the logged warning) | ("error", regex) | ("loads", None)


def _config_bytes(data: bytes):
    def build(root, good):
        good(os.path.join(root, "bad"))
        with open(os.path.join(root, "bad", "transformer", "config.json"), "wb") as fh:
            fh.write(data)
        return "bad"
    return build


def _sparse_config(root, good):
    good(os.path.join(root, "bad"))
    with open(os.path.join(root, "bad", "transformer", "config.json"), "r+b") as fh:
        fh.truncate(17 << 20)  # sparse: no disk used
    return "bad"


def _index(edit):
    def build(root, good):
        good(os.path.join(root, "bad"))
        index = os.path.join(root, "bad", "transformer", "diffusion_pytorch_model.safetensors.index.json")
        with open(index) as fh:
            data = json.load(fh)
        edit(data["weight_map"])
        with open(index, "w") as fh:
            json.dump(data, fh)
        return "bad"
    return build


def _first(weight_map, value):
    weight_map[sorted(weight_map)[0]] = value


def _qkv_mismatch(root, good):
    good(os.path.join(root, "bad"), to_k_cols=64)
    return "bad"


def _symlinked_folder(root, good):
    outside = os.path.join(os.path.dirname(root), "elsewhere", "rs-flux")
    good(outside)
    os.symlink(outside, os.path.join(root, "linked"))
    return "linked"


def _symlinked_shard(root, good):
    good(os.path.join(root, "shardlink"))
    tdir = os.path.join(root, "shardlink", "transformer")
    name = sorted(f for f in os.listdir(tdir) if f.endswith(".safetensors"))[0]
    outside = os.path.join(os.path.dirname(root), "shard-store")
    os.makedirs(outside, exist_ok=True)
    os.replace(os.path.join(tdir, name), os.path.join(outside, name))
    os.symlink(os.path.join(outside, name), os.path.join(tdir, name))
    return "shardlink"


def _dotdot(root, good):
    good(os.path.join(os.path.dirname(root), "outside"))
    return "../outside"


FOLDERS = {
    "flux-config-utf16": (_config_bytes('{"_class_name": "FluxTransformer2DModel"}'.encode("utf-16")),
                          ("skipped", r"config\.json: not UTF-8 text")),
    "flux-config-nested": (_config_bytes(("[" * 100000 + "]" * 100000).encode()),
                           ("skipped", r"config\.json: JSON nested too deeply")),
    "flux-config-binary": (_config_bytes(bytes(range(256)) * 64), ("skipped", r"config\.json: not UTF-8 text")),
    "flux-config-17mb": (_sparse_config, ("skipped", r"config\.json: larger than 16 MiB")),
    "flux-weight-map-list": (_index(lambda m: _first(m, ["a.safetensors"])),
                             ("error", r"index\.json: weight_map\[.*\] is of type list, expected the file name")),
    "flux-weight-map-int": (_index(lambda m: _first(m, 7)), ("error", r"weight_map\[.*\] is of type int, expected")),
    "flux-qkv-mismatch": (_qkv_mismatch, ("error", r"cannot fuse double_blocks\.0\.img_attn\.qkv\.weight: its parts "
                                                   r"have mismatched shapes .*attn\.to_k\.weight \[128, 64\]")),
    "flux-symlinked-folder": (_symlinked_folder, ("loads", None)),
    "flux-symlinked-shard": (_symlinked_shard, ("loads", None)),
    "flux-dotdot-name": (_dotdot, ("error", r"no diffusers Flux folder '\.\./outside'")),
}


# --- Spectrum Analysis / `python -m sharp spectrum`: (labels, cutoff) for a batch of 2 images -----------------

SPECTRUM = {
    "spectrum-bad-mathtext": ((r"$\frac{$, b", 0.5), r"label '\$\\\\frac\{\$': text between \$ signs is matplotlib mathtext"),
    "spectrum-label-1mb": (("x" * (1 << 20), 0.5), r"labels text is 1048576 characters"),
    "spectrum-label-200-chars": (("y" * 200 + ", b", 0.5), r"label 1 is 200 characters long"),
    "spectrum-cutoff-nan": (("a, b", math.nan), r"cutoff must be a fraction of Nyquist in \(0, 1\), got nan"),
}


# --- SHARP Resolution Promotion: a promoted model promoted again (first node's kwargs, second node's kwargs) ----

PROMOTION = {
    "promotion-chained": (({"method": "yarn"}, {"method": "sharp", "alpha_s": 2.0}), r"already promoted \(method 'yarn'\)"),
    "promotion-chained-keep": (({"method": "sharp", "noise_shift": "resolution"}, {"method": "dype", "noise_shift": "keep"}),
                               r"noise_shift 'keep' keeps the earlier node's schedule"),
}

# node float inputs outside the DS-DiT nodes: (node id, kwargs) -> regex. ComfyUI's min/max let NaN through.
NODE_FLOATS = {
    "promotion-alpha-nan": (("SHARPResolutionPromotion", {"alpha_s": math.nan}), r"alpha_s must be a finite number"),
    "promotion-beta-inf": (("SHARPResolutionPromotion", {"beta_lo": math.inf}), r"beta must be a pair of positive"),
    "promotion-gamma-nan": (("SHARPResolutionPromotion", {"gamma_hi": math.nan}), r"gamma must be a pair of positive"),
    "schedule-alpha-nan": (("SHARPSchedulePreview", {"alpha_s": math.nan}), r"alpha_s must be a finite number"),
}
