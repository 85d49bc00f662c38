"""RRSSRD-style data for DS-DiT: folders with HR/, LR/ and Ref/ holding same-named images.

`TripletFolder` loads one such folder; `RefSRDataset` holds one or more of them in memory
(80 triplets of 480x480 are ~500 MB as float32) and draws
random aligned crops with the same flip/rot90 applied to HR, upsampled LR and Ref.

Real Refs are aligned to the upsampled LR once at load time (`align_reference`, as at
inference), which also gives their matching-confidence map. With probability
`synthetic_ref_prob` a crop's Ref is instead synthesised from the HR: a shifted and
slightly warped HR crop with colour/season-like changes, blur and occluding patches from
elsewhere, then colour-matched (and, with align "local", aligned) to the upsampled LR. These
pairs teach the Ref branch to find and copy matching texture, which 80 real triplets do not
teach alone.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .registration import align_reference, match_colour

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def load_image(path: str | Path) -> torch.Tensor:
    """RGB image file -> float tensor [1, 3, H, W] in [0, 1]."""
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def upsample(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling of [B, 3, h, w] to size (H, W), clamped to [0, 1]."""
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def rrssrd_degrade(hr: torch.Tensor, scale: int = 4, jpeg_quality: int = 95) -> torch.Tensor:
    """The RRSSRD LR of an HR image [1, 3, H, W] in [0, 1]: antialiased bicubic down by `scale`,
    8-bit, JPEG at quality 95. Checked against val_1st's real LR/HR pairs (10 images, mean PSNR
    of this LR against the real one): bicubic with antialias 38.0 dB, without 31.5, area 37.2;
    plus JPEG q95 44.8 dB (q90 35.9, q75 33.0) -- so the real LR is bicubic x4 + JPEG q95."""
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True,
                       align_corners=False).clamp(0.0, 1.0)
    arr = (lr[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    if jpeg_quality:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=jpeg_quality)
        buf.seek(0)
        with Image.open(buf) as im:
            arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


class TripletFolder:
    """Names and paths of the (HR, LR, Ref) triplets in one RRSSRD-style folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        missing = [d for d in ("HR", "LR", "Ref") if not (self.root / d).is_dir()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not an RRSSRD-style folder: missing "
                                    f"sub-folder(s) {missing} (need HR/, LR/ and Ref/)")
        names = {d: {p.name for p in (self.root / d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
                 for d in ("HR", "LR", "Ref")}
        self.names = sorted(names["HR"] & names["LR"] & names["Ref"])
        if not self.names:
            raise FileNotFoundError(f"no images with the same name in {self.root}/HR, LR and Ref")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hr, lr, ref), each [1, 3, H, W] in [0, 1]."""
        name = self.names[i]
        return tuple(load_image(self.root / d / name) for d in ("HR", "LR", "Ref"))


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def synthetic_reference(hr: torch.Tensor, y: int, x: int, crop: int, g: torch.Generator,
                        max_shift: int = 6) -> torch.Tensor:
    """A fake Ref for the crop at (y, x) of hr [1, 3, H, W]: shifted/warped, recoloured, occluded."""
    _, _, h, w = hr.shape
    dy = min(max(y + _randint(g, -max_shift, max_shift), 0), h - crop)
    dx = min(max(x + _randint(g, -max_shift, max_shift), 0), w - crop)
    ref = hr[:, :, dy:dy + crop, dx:dx + crop].clone()
    if _rand(g) < 0.5:   # small rotation + scaling about the centre
        a, s = math.radians(_rand(g, -4, 4)), _rand(g, 0.95, 1.05)
        theta = torch.tensor([[[s * math.cos(a), -s * math.sin(a), 0.0],
                               [s * math.sin(a), s * math.cos(a), 0.0]]])
        grid = F.affine_grid(theta, list(ref.shape), align_corners=False)
        ref = F.grid_sample(ref, grid, mode="bilinear", padding_mode="reflection",
                            align_corners=False)
    # colour / season-like change: channel gains, offsets, gamma, a little channel mixing
    gain = torch.empty(1, 3, 1, 1).uniform_(0.7, 1.3, generator=g)
    bias = torch.empty(1, 3, 1, 1).uniform_(-0.1, 0.1, generator=g)
    mix = torch.eye(3) + torch.empty(3, 3).uniform_(-0.1, 0.1, generator=g)
    ref = torch.einsum("ij,bjhw->bihw", mix, ref)
    ref = (ref * gain + bias).clamp(0, 1) ** _rand(g, 0.7, 1.4)
    if _rand(g) < 0.3:
        ref = F.avg_pool2d(F.pad(ref, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    for _ in range(_randint(g, 0, 3)):   # occlusions / changed buildings: foreign patches
        ph, pw = _randint(g, crop // 8, crop // 2), _randint(g, crop // 8, crop // 2)
        ty, tx = _randint(g, 0, crop - ph), _randint(g, 0, crop - pw)
        sy, sx = _randint(g, 0, h - ph), _randint(g, 0, w - pw)
        ref[:, :, ty:ty + ph, tx:tx + pw] = hr[:, :, sy:sy + ph, sx:sx + pw].flip(-1) * gain
    ref = ref + 0.01 * torch.randn(ref.shape, generator=g)
    return ref.clamp(0.0, 1.0)


def augment(tensors: list[torch.Tensor], k: int, flip: bool) -> list[torch.Tensor]:
    """Apply the same rot90 (k quarter turns) and horizontal flip to every [B, C, H, W]."""
    out = []
    for t in tensors:
        t = torch.rot90(t, k, dims=(-2, -1))
        out.append(t.flip(-1) if flip else t)
    return out


class RefSRDataset(torch.utils.data.Dataset):
    """Random aligned crops over RRSSRD-style folders.

    Each item is a dict of float tensors [3, crop, crop] in [0, 1]: "hr", "up" (bicubic-upsampled
    LR, aligned to HR) and "ref" (registered real Ref, or synthetic with probability
    synthetic_ref_prob); "conf" [1, crop, crop] (the Ref's matching confidence); plus
    "synthetic" (bool). align: "global" or "local" (see registration.align_reference).

    ref_as_target: every Ref is a high-resolution image too, so each triplet also
    gives the pair target = Ref, LR = rrssrd_degrade(Ref), Ref = the HR of the same place
    (aligned the same way): twice the training targets."""

    def __init__(self, roots, crop: int = 64, scale: int = 4, synthetic_ref_prob: float = 0.5,
                 register: bool = True, length: int = 10000, seed: int = 0, align: str = "global",
                 ref_as_target: bool = False):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if crop % scale:
            raise ValueError(f"crop ({crop}) must be a multiple of scale ({scale})")
        self.crop, self.scale, self.length = crop, scale, length
        self.synthetic_ref_prob = synthetic_ref_prob
        self.align = align
        self.generator = torch.Generator().manual_seed(seed)
        self.hr, self.up, self.ref, self.conf = [], [], [], []
        for root in roots:
            folder = TripletFolder(root)
            for i in range(len(folder)):
                hr, lr, ref = folder.load(i)
                if hr.shape[-2:] != ref.shape[-2:] or tuple(hr.shape[-2:]) != tuple(
                        s * scale for s in lr.shape[-2:]):
                    raise ValueError(f"{folder.root}/*/{folder.names[i]}: sizes HR {tuple(hr.shape[-2:])}, "
                                     f"LR {tuple(lr.shape[-2:])}, Ref {tuple(ref.shape[-2:])} do not "
                                     f"fit scale {scale}")
                pairs = [(hr, lr, ref)]
                if ref_as_target:
                    pairs.append((ref, rrssrd_degrade(ref, scale), hr))
                for target, low, other in pairs:
                    up = upsample(low, target.shape[-2:])
                    other, conf = align_reference(other, up, scale, align, register)
                    self.hr.append(target)
                    self.up.append(up)
                    self.ref.append(other)
                    self.conf.append(conf)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {k: v[0] for k, v in self.batch(1).items()}

    def batch(self, n: int, generator: torch.Generator | None = None) -> dict:
        """n random crops stacked: tensors [n, 3, crop, crop] ("conf" [n, 1, crop, crop]);
        "synthetic": [n] bool."""
        g = generator or self.generator
        c, s = self.crop, self.scale
        hrs, ups, refs, confs, syn = [], [], [], [], []
        for _ in range(n):
            i = _randint(g, 0, len(self.hr) - 1)
            hr, up = self.hr[i], self.up[i]
            h, w = hr.shape[-2:]
            y, x = s * _randint(g, 0, (h - c) // s), s * _randint(g, 0, (w - c) // s)
            hr_c, up_c = hr[:, :, y:y + c, x:x + c], up[:, :, y:y + c, x:x + c]
            if _rand(g) < self.synthetic_ref_prob:
                ref_c = synthetic_reference(hr, y, x, c, g)
                if self.align == "local":   # aligned like a real Ref at inference
                    ref_c, conf_c = align_reference(ref_c, up_c, s, "local")
                else:                       # colour only: attention learns the random shift
                    ref_c, conf_c = align_reference(match_colour(ref_c, up_c, s), up_c, s,
                                                    register=False)
                syn.append(True)
            else:
                ref_c = self.ref[i][:, :, y:y + c, x:x + c]
                conf_c = self.conf[i][:, :, y:y + c, x:x + c]
                syn.append(False)
            hr_c, up_c, ref_c, conf_c = augment([hr_c, up_c, ref_c, conf_c], _randint(g, 0, 3),
                                                _rand(g) < 0.5)
            hrs.append(hr_c)
            ups.append(up_c)
            refs.append(ref_c)
            confs.append(conf_c)
        return {"hr": torch.cat(hrs), "up": torch.cat(ups), "ref": torch.cat(refs),
                "conf": torch.cat(confs), "synthetic": torch.tensor(syn)}
