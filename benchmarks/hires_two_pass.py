"""Two-pass hires fix with SHARP on a tiny model: HF energy of the second pass vs a single
pass, for the two time schedules of the second pass (sharp/hires.py), figures side by side in one run.

    SHARP_COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python benchmarks/hires_two_pass.py [--seeds 4]

A tiny Flux.1 from ComfyUI's own classes (tests/comfyui_harness.py: hidden 128, one double and one single
block, random weights), base grid 16 positions (256 px), target 2x per side (32 x 32 positions). Per seed:

- single pass at the target size, 20 steps: `base` (stock RoPE) and `sharp`;
- two passes: 20 steps at the base size, the latent upscaled 2x (bicubic, as LatentUpscaleBy), then 20 steps
  at denoise d (KSampler semantics: the last 20 of 20 / d steps), the second pass with `base`, `sharp` with
  the schedule continued (t = sigma / sigma_max, the default) and `sharp` restarted (t = sigma / sigma_start).

It prints the high-frequency energy ratio (sharp.spectrum.hf_energy_ratio, cutoff 0.5 x Nyquist, mean over
the 16 latent channels) and the log-spectral distance to the single `sharp` pass. The model's weights are
random: these figures say what each schedule does to the spectrum of this network, not about image quality
of a trained model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

BASE_TOKENS = 16
STEPS = 20


def sharpen(diffusion_model, gain: float) -> None:
    """Make attention matter in the random tiny Flux: q/k RMSNorm scales x gain (logits x gain^2), attention
    output projections x gain (double blocks' img/txt_attn.proj, single blocks' linear2)."""
    import torch

    with torch.no_grad():
        for name, p in diffusion_model.named_parameters():
            if name.endswith(("query_norm.scale", "key_norm.scale", "query_norm.weight", "key_norm.weight",
                              "attn.proj.weight", "linear2.weight")):
                p.mul_(gain)


def hf(latent) -> float:
    from sharp.spectrum import hf_energy_ratio

    x = latent[0].double().numpy()  # [C, H, W]
    return statistics.fmean(hf_energy_ratio(c, cutoff=0.5) for c in x)


def lsd(a, b) -> float:
    from sharp.spectrum import log_spectral_distance

    return statistics.fmean(log_spectral_distance(x, y) for x, y in zip(a[0].double().numpy(), b[0].double().numpy()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--denoise", type=float, nargs="+", default=[0.35, 0.5, 0.7])
    ap.add_argument("--attention-gain", type=float, default=4.0,
                    help="multiply the q/k norm scales (peaked attention) and the attention output weights by this, "
                         "so that positions matter in the random network (1: the test models' weights)")
    args = ap.parse_args()
    if not os.environ.get("SHARP_COMFYUI_DIR"):
        ap.error("set SHARP_COMFYUI_DIR to a ComfyUI checkout (and run with its Python)")

    import torch

    import comfyui_harness as H
    from sharp import hires

    comfy = H.import_comfy()
    import comfy.patcher_extension as pe
    import comfy.utils

    res = H.pack_module("nodes.resolution")
    model, ch = H.tiny_family_patcher("Flux.1")
    sharpen(model.model.diffusion_model, args.attention_gain)
    from sharp import families

    f = families.family("Flux.1")
    per = f.px_per_token // f.latent_px  # latent px per position
    small = (BASE_TOKENS * per, BASE_TOKENS * per)
    large = (2 * small[0], 2 * small[1])

    def promoted(method, schedule="continue"):
        p = res.ResolutionPromotion.execute(model=model, method=method, base_resolution=BASE_TOKENS * f.px_per_token,
                                            noise_shift="keep").result[0]
        return hires.set_schedule(p, schedule, apply_model_wrapper=pe.WrappersMP.APPLY_MODEL,
                                  calc_cond_batch_wrapper=pe.WrappersMP.CALC_COND_BATCH)

    pos, neg = H.family_conditioning("Flux.1", 1), H.family_conditioning("Flux.1", 2)

    def sample(patcher, latent, seed, denoise=1.0):
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(patcher, noise, STEPS, 1.0, "euler", "simple", pos, neg, latent, denoise=denoise,
                                   disable_pbar=True, seed=seed)

    variants = {"base": promoted("base"), "sharp continue": promoted("sharp"),
                "sharp restart": promoted("sharp", "restart")}
    rows = {}  # label -> list of (hf, lsd to single sharp) per seed
    gaps = {}  # denoise -> list of (LSD restart vs continue, LSD continue vs base) per seed
    sampling = variants["base"].get_model_object("model_sampling")
    for seed in range(args.seeds):
        single = {m: sample(variants[v], torch.zeros(1, ch, *large), seed)
                  for m, v in (("base", "base"), ("sharp", "sharp continue"))}
        ref = single["sharp"]
        for m, out in single.items():
            rows.setdefault(f"single pass {m}", []).append((hf(out), lsd(out, ref)))
        first = sample(variants["base"], torch.zeros(1, ch, *small), seed)  # at the base grid every method is stock
        up = comfy.utils.common_upscale(first, large[1], large[0], "bicubic", "disabled")
        rows.setdefault("upscaled first pass", []).append((hf(up), lsd(up, ref)))
        for d in args.denoise:
            outs = {}
            for name, patcher in variants.items():
                out = sample(patcher, up, seed + 1000, denoise=d)
                rows.setdefault(f"two-pass d={d:g} {name}", []).append((hf(out), lsd(out, ref)))
                outs[name] = out
            gaps.setdefault(d, []).append((lsd(outs["sharp restart"], outs["sharp continue"]),
                                           lsd(outs["sharp continue"], outs["base"])))
        gaps.setdefault("single", []).append((float("nan"), lsd(single["sharp"], single["base"])))

    smax = float(sampling.sigma_max)
    print(f"tiny Flux.1 (ComfyUI {H.comfy_version()}, attention gain {args.attention_gain:g}), base grid "
          f"{BASE_TOKENS} positions, target {2 * BASE_TOKENS} per side, {STEPS} euler steps per pass, {args.seeds} seeds")
    for d in args.denoise:
        full = comfy.samplers.calculate_sigmas(sampling, "simple", int(STEPS / d))
        t0 = float(full[-(STEPS + 1)]) / smax
        from sharp.rope import kappa_sharp

        print(f"  d={d:g}: second pass starts at t = {t0:.3f} (kappa {kappa_sharp(t0):.3f}); restart: t = 1 (kappa 1)")
    print(f"{'run':34s} {'HF ratio (mean +- sd)':>24s} {'LSD to single sharp, dB':>24s}")
    for label, vals in rows.items():
        h = [v[0] for v in vals]
        l_ = [v[1] for v in vals]
        sd = statistics.stdev(h) if len(h) > 1 else 0.0
        print(f"{label:34s} {statistics.fmean(h):16.4f} +- {sd:.4f} {statistics.fmean(l_):24.2f}")

    print(f"{'LSD, dB (mean over seeds)':34s} {'restart vs continue':>24s} {'sharp vs base':>24s}")
    for d, vals in gaps.items():
        label = "single pass" if d == "single" else f"two-pass d={d:g}"
        gap = "n/a (sigma_start = sigma_max)" if d == "single" else f"{statistics.fmean(v[0] for v in vals):.3f}"
        print(f"{label:34s} {gap:>24s} {statistics.fmean(v[1] for v in vals):24.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
