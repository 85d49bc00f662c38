"""Write the example workflows' shared parts: `python tools/example_workflows.py` (idempotent).

- Builds the four RS-FLUX workflows (UI in example_workflows/, API twins in workflows/api/) on the SHARP
  authors' exact schedule: SHARP Flux Sigmas -> SamplerCustomAdvanced (RandomNoise, KSamplerSelect euler,
  BasicGuider), laid out on a grid with the sizes the ComfyUI frontend really draws.
- Puts a Note first in every UI workflow (what it shows, the models and where they go, what to change
  first, what a run costs), to the left of the graph, shifting the graph right to make room.
- Every SaveImage saves under output/SHARP/.

Run it again after editing a workflow by hand (or merging one); tests/test_example_workflows.py checks
the result without a browser, tests/test_comfyui_frontend.py in a real ComfyUI frontend.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import textwrap
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import workflow_check as W  # noqa: E402  (the drawn-size rules the checks use)
from sharp import families, rope, schedule  # noqa: E402

UI_DIR, API_DIR = W.UI_DIR, W.API_DIR
NOTE_W = 460
GAP_X, GAP_Y = 50, 40
PROMPT = ("High-resolution satellite image of a dense urban district: roads with lane markings, parked cars, "
          "rooftops with sharp edges, trees and shadows, clear weather, nadir view")
GUIDANCE = 4.5  # FluxGuidance = diffusers' guidance_scale; the authors' run_sharp.py default
SEED = 42

# link slots: type -> ([(input name, TYPE)], [(output name, TYPE)]); widgets: type -> input names in order
SLOTS = {
    "SHARPLoadRSFlux": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "SHARPResolutionPromotion": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "RandomNoise": ([], [("NOISE", "NOISE")]),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")]),
    "BasicGuider": ([("model", "MODEL"), ("conditioning", "CONDITIONING")], [("GUIDER", "GUIDER")]),
    "SHARPFluxSigmas": ([], [("SIGMAS", "SIGMAS")]),
    "SamplerCustomAdvanced": ([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                               ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                              [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "SHARPSchedulePreview": ([], [("heatmap", "IMAGE")]),
    "ImageBatch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
    "ImageStitch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
    "SHARPSpectrumAnalysis": ([("images", "IMAGE")], [("plot", "IMAGE"), ("table", "STRING")]),
    "PreviewAny": ([("source", "*")], []),
    "LatentUpscaleBy": ([("samples", "LATENT")], [("LATENT", "LATENT")]),
    "SplitSigmasDenoise": ([("sigmas", "SIGMAS")], [("high_sigmas", "SIGMAS"), ("low_sigmas", "SIGMAS")]),
}
WIDGETS = {
    "SHARPLoadRSFlux": ["folder", "weight_dtype"], "CLIPTextEncode": ["text"], "FluxGuidance": ["guidance"],
    "SHARPResolutionPromotion": ["method", "base_resolution", "alpha_s", "noise_shift", "beta_lo", "beta_hi",
                                 "gamma_lo", "gamma_hi", "mscale", "family"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"], "RandomNoise": ["noise_seed", None],
    "KSamplerSelect": ["sampler_name"], "SHARPFluxSigmas": ["steps", "shift", "mu", "width", "height"],
    "SaveImage": ["filename_prefix"],
    "SHARPSchedulePreview": ["width", "height", "method", "steps", "base_resolution", "alpha_s"],
    "ImageStitch": ["direction", "match_image_size", "spacing_width", "spacing_color"],
    "SHARPSpectrumAnalysis": ["labels", "cutoff"],
    "LatentUpscaleBy": ["upscale_method", "scale_by"], "SplitSigmasDenoise": ["denoise"],
}  # None: a UI-only value (the seed's "control after generate")
DEFAULT = rope.RoPEParams()


def promotion_widgets(method: str = rope.METHODS[0]) -> list:
    """The promotion node's widget values: the method, the family's base (0) and the authors' constants."""
    return [method, 0, DEFAULT.alpha_s, "sharp", *DEFAULT.beta, *DEFAULT.gamma, DEFAULT.mscale, "auto"]


TITLES = {"SHARPLoadRSFlux": "Load RS-FLUX (diffusers folder)", "SHARPResolutionPromotion": "SHARP Resolution Promotion",
          "SHARPFluxSigmas": "SHARP Flux Sigmas (diffusers)", "SHARPSchedulePreview": "SHARP Schedule Preview",
          "SHARPSpectrumAnalysis": "Spectrum Analysis"}
# widths the frontend draws at least (title and widget text; measured in Chromium, frontend 1.39.14 / 1.49.6)
MIN_W = {"SHARPLoadRSFlux": 320, "SHARPResolutionPromotion": 300, "SHARPFluxSigmas": 310, "CLIPTextEncode": 400,
         "ImageBatch": 240, "SamplerCustomAdvanced": 240, "BasicGuider": 240, "VAEDecode": 240}


class Graph:
    """A UI workflow under construction: nodes on a (column, row) grid, links by input name."""

    def __init__(self):
        self.nodes, self.links, self.cells = [], [], {}

    def add(self, type_, widgets=(), cell=(1, 0), size=None, title=None) -> int:
        """title: the node's title, also the API twin's _meta.title (what `sharp batch` manifests name)."""
        nid = len(self.nodes) + 1
        ins, outs = SLOTS[type_]
        node = {"id": nid, "type": type_, "pos": [0, 0], "size": list(size or (0, 0)), "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in ins],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        self.nodes.append(node)
        self.cells[nid] = cell
        return nid

    def link(self, src: int, slot: int, dst: int, input_name: str) -> None:
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        dslot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        typ = s["outputs"][slot]["type"]
        self.links.append([lid, src, slot, dst, dslot, typ])
        s["outputs"][slot]["links"].append(lid)
        d["inputs"][dslot]["link"] = lid

    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            inputs = {}
            for name, value in zip(WIDGETS.get(n["type"], []), n["widgets_values"]):
                if name is not None:
                    inputs[name] = value
            for inp in n["inputs"]:
                if inp["link"] is not None:
                    link = self.links[inp["link"] - 1]
                    inputs[inp["name"]] = [str(link[1]), link[2]]
            out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                 "_meta": {"title": n.get("title") or TITLES.get(n["type"], n["type"])}}
        return out

    def layout(self) -> None:
        grid_layout(self.nodes, self.cells)

    def ui(self, name: str, summary: str) -> dict:
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-sharp/" + name)), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "sharp_note": summary}, "version": 0.4}


def grid_layout(nodes: list, cells: dict) -> None:
    """Columns as wide as their widest node, rows as tall as their tallest (drawn sizes), gaps between;
    cells: node id -> (column, row) or (column, row, rows spanned) for a tall node such as an image."""
    for n in nodes:
        mw, mh = W.min_body_size(n)
        n["size"] = [max(n["size"][0], mw, MIN_W.get(n["type"], 270)), max(n["size"][1], mh)]
    cell = {nid: tuple(c) + (1,) * (3 - len(c)) for nid, c in cells.items()}
    cols, rows = {}, {}
    for n in nodes:
        c, r, span = cell[n["id"]]
        cols[c] = max(cols.get(c, 0), n["size"][0])
        rows.setdefault(r, 0)
        if span == 1:
            rows[r] = max(rows[r], n["size"][1] + W.TITLE_H)
    for n in nodes:  # a spanning node that does not fit its rows makes the last of them taller
        c, r, span = cell[n["id"]]
        spanned = [k for k in sorted(rows) if r <= k < r + span]
        room = sum(rows[k] for k in spanned) + GAP_Y * (len(spanned) - 1)
        if span > 1 and room < n["size"][1] + W.TITLE_H:
            rows[spanned[-1]] += n["size"][1] + W.TITLE_H - room
    x0 = {c: sum(cols[k] + GAP_X for k in cols if k < c) for c in cols}
    y0 = {r: sum(rows[k] + GAP_Y for k in rows if k < r) for r in rows}
    for n in nodes:
        c, r, _ = cell[n["id"]]
        n["pos"] = [round(x0[c]), round(y0[r] + W.TITLE_H)]
        n["size"] = [round(n["size"][0]), round(n["size"][1])]


# DS-DiT example: loaders left, SR and bicubic in the middle, outputs right (node id -> cell)
DSDIT_CELLS = {1: (1, 0), 2: (1, 1), 3: (1, 2), 4: (2, 0), 6: (2, 1), 5: (3, 0), 7: (3, 1), 8: (3, 2), 9: (4, 0)}


def _rsflux_front(g: Graph, cells: dict):
    """Loader, prompt, guidance, SHARP, guider, noise, sampler, sigmas: the part every RS-FLUX graph shares."""
    ld = g.add("SHARPLoadRSFlux", ["FLUX-RS", "default"], cells["loader"])
    txt = g.add("CLIPTextEncode", [PROMPT], cells["prompt"], size=(400, 200), title="Prompt")
    g.link(ld, 1, txt, "clip")
    fg = g.add("FluxGuidance", [GUIDANCE], cells["guidance"])
    g.link(txt, 0, fg, "conditioning")
    noise = g.add("RandomNoise", [SEED, "fixed"], cells["noise"])
    smp = g.add("KSamplerSelect", ["euler"], cells["sampler"])
    sig = g.add("SHARPFluxSigmas", [28, "fixed", schedule.FLUX_SHIFT_MU, 2048, 2048], cells["sigmas"])
    return ld, fg, noise, smp, sig


def _sample(g, model, cond, noise, smp, sig, latent, vae, prefix, cells, save_size=(420, 460), guider=None):
    if guider is None:
        guider = g.add("BasicGuider", [], cells["guider"])
        g.link(model, 0, guider, "model")
        g.link(cond, 0, guider, "conditioning")
    sca = g.add("SamplerCustomAdvanced", [], cells["sca"])
    for src, name in ((noise, "noise"), (guider, "guider"), (smp, "sampler"), (sig, "sigmas"), (latent, "latent_image")):
        g.link(src, 0, sca, name)
    dec = g.add("VAEDecode", [], cells["decode"])
    g.link(sca, 0, dec, "samples")
    g.link(vae, 2, dec, "vae")
    if prefix:
        save = g.add("SaveImage", [prefix], cells["save"], size=save_size)
        g.link(dec, 0, save, "images")
    return dec


def rsflux_single(width: int, height: int) -> Graph:
    g = Graph()
    ld, fg, noise, smp, sig = _rsflux_front(g, {"loader": (1, 0), "prompt": (1, 1), "guidance": (1, 2),
                                                "noise": (3, 0), "sampler": (3, 1), "sigmas": (3, 2)})
    g.nodes[sig - 1]["widgets_values"][3:5] = [width, height]
    sh = g.add("SHARPResolutionPromotion", promotion_widgets(), (2, 0))
    g.link(ld, 0, sh, "model")
    lat = g.add("EmptySD3LatentImage", [width, height, 1], (2, 2))
    _sample(g, sh, fg, noise, smp, sig, lat, ld, f"SHARP/rsflux_{width}x{height}",
            {"guider": (2, 1), "sca": (4, 0), "decode": (4, 1), "save": (5, 0, 3)}, save_size=(480, 520))
    prev = g.add("SHARPSchedulePreview", [width, height, rope.METHODS[0], schedule.FLUX_STEPS, 0, DEFAULT.alpha_s],
                 (1, 3))
    show = g.add("PreviewImage", [], (2, 3), size=(560, 380))
    g.link(prev, 0, show, "images")
    return g


SWEEP = [(1024, 1024), (2048, 2048), (3744, 2560)]


def multiscale_sweep() -> Graph:
    g = Graph()
    ld, fg, noise, smp, sig = _rsflux_front(g, {"loader": (1, 0), "prompt": (1, 1), "guidance": (1, 2),
                                                "noise": (1, 3), "sampler": (2, 3), "sigmas": (3, 3)})
    sh = g.add("SHARPResolutionPromotion", promotion_widgets(), (2, 0))
    g.link(ld, 0, sh, "model")
    guider = g.add("BasicGuider", [], (2, 1))
    g.link(sh, 0, guider, "model")
    g.link(fg, 0, guider, "conditioning")
    for row, (w, h) in enumerate(SWEEP):
        lat = g.add("EmptySD3LatentImage", [w, h, 1], (3, row))
        _sample(g, sh, fg, noise, smp, sig, lat, ld, f"SHARP/sweep_{w}x{h}",
                {"sca": (4, row), "decode": (5, row), "save": (6, row)}, save_size=(320, 320), guider=guider)
    return g


METHODS = ["base", "yarn", "dype", "sharp"]


def method_comparison() -> Graph:
    g = Graph()
    ld, fg, noise, smp, sig = _rsflux_front(g, {"loader": (1, 0), "prompt": (1, 1), "guidance": (1, 2),
                                                "noise": (1, 4), "sampler": (3, 4), "sigmas": (4, 4)})
    lat = g.add("EmptySD3LatentImage", [2048, 2048, 1], (1, 3))
    decoded = []
    for row, method in enumerate(METHODS):
        sh = g.add("SHARPResolutionPromotion", promotion_widgets(method), (2, row))
        g.link(ld, 0, sh, "model")
        decoded.append(_sample(g, sh, fg, noise, smp, sig, lat, ld, None,
                               {"guider": (3, row), "sca": (4, row), "decode": (5, row)}))
    batch, grid = decoded[0], decoded[0]
    for row, dec in enumerate(decoded[1:], start=1):
        b = g.add("ImageBatch", [], (6, row))
        g.link(batch, 0, b, "image1")
        g.link(dec, 0, b, "image2")
        s = g.add("ImageStitch", ["right", True, 16, "white"], (7, row))
        g.link(grid, 0, s, "image1")
        g.link(dec, 0, s, "image2")
        batch, grid = b, s
    spec = g.add("SHARPSpectrumAnalysis", [", ".join(METHODS), 0.5], (6, 0))
    g.link(batch, 0, spec, "images")
    plot = g.add("PreviewImage", [], (7, 0), size=(500, 300))
    g.link(spec, 0, plot, "images")
    table = g.add("PreviewAny", [], (8, 0), size=(400, 200))
    g.link(spec, 1, table, "source")
    save = g.add("SaveImage", ["SHARP/method_grid"], (8, 1, 3), size=(640, 300))
    g.link(grid, 0, save, "images")
    return g


HIRES_DENOISE = 0.5  # the second pass re-runs the last half of a 56-step schedule: 28 steps at 2048 px


def hires_fix() -> Graph:
    """Two-pass hires fix: 1024 px on the authors' schedule, the latent upscaled 2x, then the last
    HIRES_DENOISE of a 28 / HIRES_DENOISE-step schedule at 2048 px with the same promoted model."""
    g = Graph()
    ld, fg, noise, smp, sig = _rsflux_front(g, {"loader": (1, 0), "prompt": (1, 1), "guidance": (1, 2),
                                                "noise": (3, 0), "sampler": (3, 1), "sigmas": (3, 2)})
    g.nodes[sig - 1]["widgets_values"][3:5] = [1024, 1024]
    g.nodes[sig - 1]["title"] = "Pass 1 sigmas"
    sh = g.add("SHARPResolutionPromotion", ["sharp", 0, 4.0, "sharp", 1.25, 0.75, 16.0, 2.0, True, "auto"], (2, 0))
    g.link(ld, 0, sh, "model")
    lat = g.add("EmptySD3LatentImage", [1024, 1024, 1], (2, 2))
    guider = g.add("BasicGuider", [], (2, 1))
    g.link(sh, 0, guider, "model")
    g.link(fg, 0, guider, "conditioning")
    first = g.add("SamplerCustomAdvanced", [], (4, 0), title="Pass 1: 1024 px")
    for src, name in ((noise, "noise"), (guider, "guider"), (smp, "sampler"), (sig, "sigmas"), (lat, "latent_image")):
        g.link(src, 0, first, name)
    up = g.add("LatentUpscaleBy", ["bicubic", 2.0], (4, 1))
    g.link(first, 0, up, "samples")
    sig2 = g.add("SHARPFluxSigmas", [round(28 / HIRES_DENOISE), "fixed", schedule.FLUX_SHIFT_MU, 2048, 2048], (4, 2),
                 title="Pass 2 sigmas (28 / denoise steps)")
    split = g.add("SplitSigmasDenoise", [HIRES_DENOISE], (4, 3))
    g.link(sig2, 0, split, "sigmas")
    second = g.add("SamplerCustomAdvanced", [], (5, 0), title="Pass 2: 2048 px")
    for src, slot, name in ((noise, 0, "noise"), (guider, 0, "guider"), (smp, 0, "sampler"), (split, 1, "sigmas"),
                            (up, 0, "latent_image")):
        g.link(src, slot, second, name)
    for sca, dec_cell in ((second, (5, 1)), (first, (5, 2))):
        dec = g.add("VAEDecode", [], dec_cell)
        g.link(sca, 0, dec, "samples")
        g.link(ld, 2, dec, "vae")
        show = (g.add("SaveImage", ["SHARP/hires_fix_2048"], (6, 0, 3), size=(480, 520)) if sca == second else
                g.add("PreviewImage", [], (5, 3), size=(320, 320), title="Pass 1 (1024 px)"))
        g.link(dec, 0, show, "images")
    return g


RSFLUX = {"rsflux_sharp_2048": (lambda: rsflux_single(2048, 2048),
                                "RS-FLUX (FLUX.1-dev remote-sensing fine-tune) + SHARP at 2048x2048."),
          "rsflux_sharp_3744x2560": (lambda: rsflux_single(3744, 2560),
                                     "RS-FLUX + SHARP at 3744x2560, the paper's '3756x2560' as its pipeline samples it."),
          "multiscale_sweep": (multiscale_sweep, "One SHARP node serves 1024, 2048 and 3744x2560: the size is read "
                                                 "from each latent."),
          "method_comparison": (method_comparison, "One seed, four RoPE methods at 2048x2048; spectra + HF ratio "
                                                   "table; saved side-by-side grid."),
          "hires_fix_two_pass": (hires_fix, "Two-pass hires fix: RS-FLUX at 1024 px, latent upscaled 2x, resampled at "
                                            "denoise 0.5 at 2048 px with SHARP (schedule continued, not re-anchored).")}

# --- the Notes --------------------------------------------------------------------------------------------

RSFLUX_MODELS = (
    "MODELS: RS-FLUX, one diffusers folder (transformer/, vae/, text_encoder/, text_encoder_2/, tokenizers), "
    "from https://huggingface.co/BxuanZ/FLUX-RS (FLUX.1-dev licence, non-commercial). Put the whole folder at "
    "ComfyUI/models/diffusion_models/FLUX-RS (the 'diffusion_models' folder), press R to refresh, and pick it in "
    "'Load RS-FLUX (diffusers folder)'. It loads the transformer, both text encoders and the VAE: no other file.")
SCHEDULE = ("It samples on the SHARP authors' exact schedule: 'SHARP Flux Sigmas (diffusers)' (mu 1.15, 28 steps) "
            "-> SamplerCustomAdvanced with euler and guidance 4.5, as their diffusers pipeline does.")


def _cost(sizes, runs=1) -> str:
    tokens = [(w // 16) * (h // 16) for w, h in sizes]
    rel = [t * t / 4096 ** 2 for t in tokens]
    per = ", ".join(f"{w}x{h}: {t} image tokens, ~{r:.0f}x the attention of a 1024 px step"
                    for (w, h), t, r in zip(sizes, tokens, rel))
    return (f"COST: {28 * runs * len(sizes)} transformer evaluations of a 12B Flux ({per}). Weights: ~24 GB in "
            "bf16 plus ~10 GB for T5 (weight_dtype fp8_e4m3fn halves the transformer): a GPU job, not practical "
            "on a CPU.")


def rsflux_note(name: str) -> str:
    if name == "hires_fix_two_pass":
        shows = ("WHAT IT SHOWS: a two-pass hires fix with RS-FLUX: pass 1 at 1024x1024 (its training size, where "
                 "SHARP is stock RoPE), the latent upscaled 2x (LatentUpscaleBy, bicubic), pass 2 at 2048x2048 on the "
                 f"last {HIRES_DENOISE:g} of a {round(28 / HIRES_DENOISE)}-step schedule (SplitSigmasDenoise), both with "
                 "the same SHARP-promoted model. SHARP reads the size from each latent and its time from each sigma: "
                 "pass 2 continues SHARP's schedule at the noise level it starts from (t = sigma / sigma_max, weak "
                 "promotion for a small denoise), on purpose not re-anchored at 1 (docs/hires.md says why and what "
                 "was measured). " + SCHEDULE)
        cost = ("COST: 28 steps at 4096 image tokens + 28 steps at 16384 (~16x the attention of a 1024 px step): a GPU "
                "job. Weights: ~24 GB in bf16 plus ~10 GB for T5 (weight_dtype fp8_e4m3fn halves the transformer).")
        change = ("the prompt; the denoise of SplitSigmasDenoise (0.3-0.6; keep the steps of 'Pass 2 sigmas' at 28 / "
                  "denoise); scale_by of LatentUpscaleBy (the pass 2 size); the seed in RandomNoise.")
        return "\n\n".join([shows, RSFLUX_MODELS, "CHANGE FIRST: " + change, cost,
                             "Saves to output/SHARP/. Help on a node: select it, press Node Info (i) in the toolbar "
                             "above it."])
    if name == "multiscale_sweep":
        shows = ("WHAT IT SHOWS: one SHARP Resolution Promotion node serving three sizes (1024x1024, 2048x2048, "
                 "3744x2560): the size is read from each latent, so SHARP is off at 1024 and active above it.")
        cost, change = _cost(SWEEP), "the prompt, the sizes in the three EmptySD3LatentImage nodes, the seed."
    elif name == "method_comparison":
        shows = ("WHAT IT SHOWS: one seed, four RoPE methods (base, yarn, dype, sharp) at 2048x2048; their spectra "
                 "with the high-frequency (HF) ratio table, and a side-by-side grid saved to output/SHARP/.")
        cost, change = _cost([(2048, 2048)], runs=4), "the prompt, the seed (RandomNoise), the methods."
    else:
        w, h = (2048, 2048) if name.endswith("2048") else (3744, 2560)
        shows = (f"WHAT IT SHOWS: RS-FLUX (FLUX.1-dev fine-tuned on remote-sensing images at 1024 px) generating "
                 f"{w}x{h} with SHARP's per-step RoPE promotion; the bottom row previews what SHARP does at each "
                 "step (no model needed for that part).")
        if h == 2560:
            shows += (" The paper's '3756x2560' is sampled by its pipeline as 3744x2560 (diffusers rounds sizes down "
                      "to multiples of 16), so that is the size here.")
        cost, change = _cost([(w, h)]), ("the prompt; the size (EmptySD3LatentImage, multiples of 16; also in "
                                         "Schedule Preview); the seed in RandomNoise.")
    return "\n\n".join([shows + " " + SCHEDULE, RSFLUX_MODELS, "CHANGE FIRST: " + change, cost,
                        "Saves to output/SHARP/. Help on a node: select it, press Node Info (i) in the toolbar above it."])


def family_note(wf: dict) -> str:
    fam = families.family(wf["extra"]["sharp_family"])
    models = []
    for n in wf["nodes"]:
        for m in n.get("properties", {}).get("models", []):
            models.append(f"- {m['name']} -> ComfyUI/models/{m['directory']}/ (folder '{m['directory']}'), from "
                          f"{m['url'].split('/resolve/')[0]}")
    sizes = [(n["widgets_values"][0], n["widgets_values"][1]) for n in wf["nodes"] if n["type"].startswith("Empty")]
    w, h = sizes[0]
    steps = next((n["widgets_values"][2] for n in wf["nodes"] if n["type"] == "KSampler"), 28)
    px = fam.px_per_token
    tokens = (w // px) * (h // px)
    return "\n\n".join([
        f"WHAT IT SHOWS: {fam.name} + SHARP at {w}x{h}, above its {fam.base_resolution} px training grid. "
        "SHARP Resolution Promotion detects the family (family auto, base_resolution 0 = the family's own).",
        "MODELS (ComfyUI's own files; the Download buttons of the missing-models dialog fetch them):\n" + "\n".join(models),
        "CHANGE FIRST: the prompt, the size in the latent node, the seed in KSampler.",
        f"COST: {steps} steps at {tokens} image tokens (~{tokens ** 2 / (fam.base_resolution // px) ** 4:.0f}x the "
        "attention of a step at the training size); a GPU job, as the model itself needs.",
        "Saves to output/SHARP/."])


DSDIT_NOTE = "\n\n".join([
    "WHAT IT SHOWS: DS-DiT reference-based x4 super-resolution of a remote-sensing image: a 120 px LR image and an "
    "HR reference of the same place -> 480 px; beside it bicubic x4 and the reference, saved side by side.",
    "MODELS: none to download. 'shipped: DS-DiT x4' is the small demonstration model in "
    "the pack; your own checkpoints go to ComfyUI/models/dsdit/ (folder 'dsdit').",
    "IMAGES: the pack copies its example pair (examples/refsr: RRSSRD, Dong et al. 2021) into ComfyUI's input "
    "folder as sharp_refsr_lr.jpg and sharp_refsr_ref.jpg when they are missing (never over your files), so Run "
    "works as is.",
    "CHANGE FIRST: the two Load Image nodes (your LR image and a reference of the same place).",
    "COST: a few seconds on 2 CPU cores (steps 0 = the checkpoint's own: one step for the shipped model; "
    "one 480 px tile); no GPU needed. Steps 20 with temperature 1 give a textured sample (~20x the time).",
    "Saves to output/SHARP/."])


def note_size(text: str, width: int = NOTE_W) -> list[int]:
    """Room for the text as the frontend draws a Note (monospace, ~6.6 px a character, ~11.5 px a line at
    100 %, seen in Chromium), with some to spare."""
    lines = sum(max(1, len(textwrap.wrap(p, int((width - 24) / 6.6)))) if p else 1 for p in text.split("\n"))
    return [width, 40 + 13 * lines]


def put_note(wf: dict, text: str) -> None:
    """The Note first on the left, at the top; the graph shifted right of it (once)."""
    nodes = [n for n in wf["nodes"] if n["type"] not in W.VIRTUAL_NODES]
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes)
    shift = NOTE_W + GAP_X - left
    for n in nodes:
        n["pos"] = [n["pos"][0] + shift, n["pos"][1]]
    nid = max(n["id"] for n in nodes) + 1
    note = {"id": nid, "type": "Note", "pos": [0, top], "size": note_size(text), "flags": {}, "order": len(nodes),
            "mode": 0, "inputs": [], "outputs": [], "title": "Read me first",
            "properties": {"text": ""}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
    wf["nodes"] = nodes + [note]
    wf["last_node_id"] = max(wf.get("last_node_id", 0), nid)


def save_prefix(prefix: str) -> str:
    return prefix if prefix.startswith("SHARP/") else "SHARP/" + prefix.removeprefix("sharp_")


def dump(path: str, data: dict) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def main() -> int:
    for name, (build, summary) in RSFLUX.items():
        g = build()
        g.layout()
        ui = g.ui(name, summary)
        put_note(ui, rsflux_note(name))
        dump(os.path.join(UI_DIR, name + ".json"), ui)
        dump(W.api_twin(name), g.api())
    for path in sorted(glob.glob(os.path.join(UI_DIR, "*.json"))):
        name = os.path.basename(path)[:-5]
        if name in RSFLUX:
            continue
        ui, api = json.load(open(path)), json.load(open(W.api_twin(path)))
        for n in ui["nodes"]:
            if n["type"] == "SaveImage":
                n["widgets_values"][0] = save_prefix(n["widgets_values"][0])
                api[str(n["id"])]["inputs"]["filename_prefix"] = n["widgets_values"][0]
            if n["type"] == "SHARPLoadDSDiT":  # the shipped checkpoint's name in full
                n["size"] = [max(n["size"][0], 440), n["size"][1]]
        if name.startswith("dsdit"):
            nodes = [n for n in ui["nodes"] if n["type"] not in W.VIRTUAL_NODES]
            grid_layout(nodes, DSDIT_CELLS)
        has_note = any(n["type"] in W.VIRTUAL_NODES for n in ui["nodes"])
        if name.startswith("family_") and not has_note:   # a family workflow's own Note is kept
            put_note(ui, family_note(ui))
        elif name.startswith("dsdit"):
            put_note(ui, DSDIT_NOTE)
        dump(path, ui)
        dump(W.api_twin(path), api)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
