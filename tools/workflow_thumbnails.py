"""Draw the Templates-browser thumbnails: example_workflows/<name>.jpg beside every template.

    python tools/workflow_thumbnails.py            # all (the DS-DiT one runs the shipped model: ~20 s on 2 CPUs)
    python tools/workflow_thumbnails.py family_flux1 dsdit_refsr_x4

- dsdit_*: a real output: the shipped DS-DiT model on the bundled RRSSRD example (examples/refsr), shown
  as bicubic x4 | DS-DiT x4 | the reference, as the workflow saves it.
- hires_fix_*: the same for its second pass (the last steps of its schedule, at the upscaled size).
- rsflux_sharp_* and family_*: the SHARP schedule figure of `python -m sharp schedule` for the workflow's
  size (and the family's RoPE constants): what SHARP does to each frequency at each step.
- multiscale_sweep: the three sizes drawn to scale against the 1024 px training grid.
- method_comparison: what base / yarn / dype / sharp do to the RoPE frequencies at 2048 px, early and late.

Every picture comes from this project's own code; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sharp import families, plots, rope, schedule  # noqa: E402

UI_DIR = os.path.join(ROOT, "example_workflows")
SIZE = 512  # square: the Templates browser shows thumbnails as square cards


def square(rgb: np.ndarray, size: int = SIZE) -> Image.Image:
    """Letterbox an RGB array onto a white square (nothing cropped)."""
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.LANCZOS)
    out = Image.new("RGB", (size, size), "white")
    out.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return out


def latent_sizes(wf: dict) -> list[tuple[int, int]]:
    return [(n["widgets_values"][0], n["widgets_values"][1]) for n in wf["nodes"]
            if n["type"].startswith("Empty") and "Latent" in n["type"]]


def schedule_figure(width: int, height: int, family: str = "Flux.1", steps: int = 28, last: int | None = None) -> np.ndarray:
    """The `python -m sharp schedule` figure for width x height on the family's RoPE grid; last: only the last
    steps of the `steps`-step schedule (a hires fix's second pass, t = sigma / sigma_max)."""
    fam = families.family(family)
    per = schedule.VAE_DOWNSCALE * schedule.PATCH_SIZE  # rope_schedule counts 16 px per position
    w_eq, h_eq = width * per // fam.px_per_token, height * per // fam.px_per_token
    sched = schedule.rope_schedule(w_eq, h_eq, "sharp", steps=steps, base_len=fam.base_len, theta=fam.theta,
                                   axis_dim=fam.axes_dim[fam.spatial_axes[-1]])
    if last:
        sched.sigmas, sched.t, sched.kappa = sched.sigmas[-(last + 1):], sched.t[-last:], sched.kappa[-last:]
        for a in sched.axes:
            a.ratio = a.ratio[-last:]
    sched.width, sched.height = width, height  # the title names the real image size
    wide = plots.figure_to_array(plots.plot_schedule(sched))
    # a square card: the two heatmaps (left two thirds of the figure) above the t / kappa panel
    cut = int(0.655 * wide.shape[1])
    left, right = wide[:, :cut], wide[:, cut:]
    pad = np.full((right.shape[0], left.shape[1], 3), 255, np.uint8)
    off = (left.shape[1] - right.shape[1]) // 2
    pad[:, off:off + right.shape[1]] = right
    return np.concatenate([left, pad], axis=0)


def sweep_figure(sizes) -> np.ndarray:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    for (w, h), c in sorted(zip(sizes, colours), key=lambda s: -s[0][0] * s[0][1]):
        ax.add_patch(plt.Rectangle((0, 0), w, h, fc=c, ec="black", alpha=0.55))
        ax.text(w - 40, h - 60, f"{w}x{h}\n{(w // 16) * (h // 16)} tokens", ha="right", va="top", fontsize=11)
    ax.add_patch(plt.Rectangle((0, 0), 1024, 1024, fc="none", ec="black", ls="--", lw=2))
    ax.text(40, 1024 + 40, "1024 px training grid", fontsize=10)
    m = max(max(w, h) for w, h in sizes) * 1.05
    ax.set_xlim(0, m), ax.set_ylim(0, m), ax.set_aspect("equal")
    ax.set_title("one SHARP node, three sizes (read from each latent)", fontsize=11)
    ax.set_xlabel("width (px)"), ax.set_ylabel("height (px)")
    fig.tight_layout()
    return plots.figure_to_array(fig)


def methods_figure(px: int = 2048, methods=("base", "yarn", "dype", "sharp")) -> np.ndarray:
    plt = plots._pyplot()
    fig, axs = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    base = rope.base_frequencies(56, 10000.0).numpy()
    s = schedule.tokens_for_pixels(px) / 64
    for ax, t in zip(axs, (1.0, 0.3)):
        for m in methods:
            f = rope.axis_frequencies(56, 10000.0, scale=s, t=t, method=m).numpy()
            ax.plot(np.arange(len(base)), f / base, "o-", ms=3, label=m)
        ax.set_ylabel("f_j / base_j")
        ax.set_title(f"{px} px (s = {s:.1f}), t = {t:g}" + (" (pure noise)" if t == 1 else ""), fontsize=10)
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=9)
    axs[1].set_xlabel("frequency index j (high -> low)")
    fig.suptitle("RoPE frequencies per method: one seed, four methods", fontsize=11)
    fig.tight_layout()
    return plots.figure_to_array(fig)


def dsdit_figure() -> np.ndarray:
    """bicubic x4 | DS-DiT x4 over Ref | DS-DiT centre at 2x: the shipped model on the bundled example (a real run)."""
    from sharp.cli.images import load_rgb_array
    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve

    lr = load_rgb_array(os.path.join(ROOT, "examples", "refsr", "lr.jpg")).astype(np.float32) / 255.0
    ref = load_rgb_array(os.path.join(ROOT, "examples", "refsr", "ref.jpg")).astype(np.float32) / 255.0
    sr = super_resolve(load_dsdit(DEFAULT_CHECKPOINT), lr, ref, scale=4, steps=20)
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    h, w = sr.shape[:2]
    bicubic = np.asarray(Image.fromarray(to8(lr)).resize((w, h), Image.BICUBIC))
    ref8 = np.asarray(Image.fromarray(to8(ref)).resize((w, h), Image.BICUBIC))
    sr8 = to8(sr)
    zoom = np.asarray(Image.fromarray(sr8[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2]).resize((w, h), Image.NEAREST))
    return np.concatenate([np.concatenate([bicubic, sr8], axis=1),   # bicubic x4 | DS-DiT x4
                           np.concatenate([ref8, zoom], axis=1)], axis=0)  # Ref | DS-DiT centre, 2x


def thumbnail(name: str) -> Image.Image:
    wf = json.load(open(os.path.join(UI_DIR, name + ".json")))
    if name.startswith("dsdit"):
        return square(dsdit_figure())
    if name == "multiscale_sweep":
        return square(sweep_figure(latent_sizes(wf)))
    if name == "method_comparison":
        return square(methods_figure(latent_sizes(wf)[0][0]))
    if name.startswith("hires_fix"):  # the second pass: the last steps of the longer schedule, at the upscaled size
        scale = next(n["widgets_values"][1] for n in wf["nodes"] if n["type"] == "LatentUpscaleBy")
        steps = max(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "SHARPFluxSigmas")
        denoise = next(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "SplitSigmasDenoise")
        w, h = latent_sizes(wf)[0]
        return square(schedule_figure(int(w * scale), int(h * scale), steps=steps, last=round(steps * denoise)))
    w, h = latent_sizes(wf)[0]
    return square(schedule_figure(w, h, wf["extra"].get("sharp_family", "Flux.1")))


def main(names: list[str]) -> int:
    names = names or sorted(f[:-5] for f in os.listdir(UI_DIR) if f.endswith(".json"))
    for name in names:
        path = os.path.join(UI_DIR, name + ".jpg")
        thumbnail(name).save(path, quality=88)
        print("wrote", os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
