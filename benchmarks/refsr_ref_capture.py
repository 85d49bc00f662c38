"""How much of what a Ref offers does the network take? Synthetic vs real Refs, on crops.

    python benchmarks/refsr_ref_capture.py --data DIR [--ckpt CKPT] [--crops 24] [--crop 96]
                                           [--json out.json]

Random crops of an RRSSRD-style folder (e.g. split/hold, the 4 held-out val_2nd triplets of the
training recipe's split in docs/dsdit.md), drawn by `RefSRDataset` as in training,
once with every Ref *synthetic* (made from the HR: shifted, warped, recoloured, occluded) and
once with the real Refs, both locally aligned. Per kind, in dB over the network's no-Ref
(null-Ref) one-step estimate SR_weak:
  network   the network's own one-step estimate with the Ref (transfer off)
  oracle    SR_weak + a d, d the aligned Ref's detail layer, a in [0, 1] fitted on the HR per
            16x16 block (what a patch-level copy of the Ref's detail could add at best)
network / oracle is the share of the Ref's offer that the network takes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="DS-DiT checkpoint (default: the shipped one)")
    p.add_argument("--data", required=True, help="RRSSRD-style folder (HR/, LR/, Ref/)")
    p.add_argument("--crops", type=int, default=24)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch

    from refsr_reference_information import block_gate, psnr   # the same oracle and PSNR

    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
    from sharp.refsr.data import RefSRDataset
    from sharp.refsr.space import WorkingSpace
    from sharp.refsr.transfer import detail_layer

    torch.set_num_threads(1)
    model = load_dsdit(args.ckpt or DEFAULT_CHECKPOINT).eval()
    if model.cfg.space != "pixel" or model.cfg.predict != "x1":
        raise SystemExit("needs a pixel-space checkpoint predicting x1 (one-step estimate)")
    space = WorkingSpace(model.cfg)

    @torch.no_grad()
    def one_step(up_z, ref_z, conf, x0):
        tau = torch.zeros(x0.shape[0])
        x1, _ = model.network(x0, tau, up_z, ref_z, ref_conf=conf)
        return space.decode(space.untarget(x1, up_z))

    result = {"ckpt": str(args.ckpt or "shipped"), "data": args.data, "crops": args.crops,
              "crop": args.crop}
    for kind, share in (("synthetic", 1.0), ("real", 0.0)):
        ds = RefSRDataset([args.data], crop=args.crop, scale=model.cfg.scale, synthetic_ref_prob=share,
                          align=model.cfg.ref_align, seed=args.seed, length=args.crops)
        b = ds.batch(args.crops, torch.Generator().manual_seed(args.seed))
        up_z, ref_z = space.encode(b["up"]), space.encode(b["ref"])
        x0 = torch.randn(up_z.shape, generator=torch.Generator().manual_seed(0))
        weak = one_step(up_z, None, None, x0)
        with_ref = one_step(up_z, ref_z, b["conf"], x0)
        d = detail_layer(b["ref"], model.cfg.scale)
        oracle = (weak + block_gate(b["hr"] - weak, d) * d).clamp(0, 1)
        base = psnr(weak, b["hr"])
        row = {"network_db": psnr(with_ref, b["hr"]) - base, "oracle_db": psnr(oracle, b["hr"]) - base}
        row["share"] = row["network_db"] / row["oracle_db"] if row["oracle_db"] > 0 else float("nan")
        result[kind] = row
        print(f"{kind:9s} Refs: network {row['network_db']:+.3f} dB, oracle {row['oracle_db']:+.3f} dB "
              f"over the no-Ref estimate; the network takes {row['share']:.0%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
