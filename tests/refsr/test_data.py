import numpy as np
import pytest
import torch

from refsr.refsr_helpers import RRSSRD, write_triplets
from sharp.refsr.data import RefSRDataset, TripletFolder, synthetic_reference


def _psnr(a, b):
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_crops_are_aligned_and_augmented_together(tmp_path):
    root = write_triplets(tmp_path / "set", n=3, size=64)
    ds = RefSRDataset([root], crop=32, scale=4, synthetic_ref_prob=0.0, register=False, seed=1)
    b = ds.batch(16)
    assert b["hr"].shape == b["up"].shape == b["ref"].shape == (16, 3, 32, 32)
    assert not b["synthetic"].any()
    for i in range(16):
        assert _psnr(b["up"][i], b["hr"][i]) > 22          # misaligned/flipped apart: ~12 dB
    item = ds[0]
    assert item["hr"].shape == (3, 32, 32)


def test_synthetic_refs_resemble_the_hr(tmp_path):
    root = write_triplets(tmp_path / "set", n=2, size=64)
    ds = RefSRDataset([root], crop=32, synthetic_ref_prob=1.0, register=False, seed=0)
    b = ds.batch(8)
    assert b["synthetic"].all()
    assert all(0 <= float(b["ref"][i].min()) and float(b["ref"][i].max()) <= 1 for i in range(8))
    g = torch.Generator().manual_seed(0)
    hr = ds.hr[0]
    fake = synthetic_reference(hr, 16, 16, 32, g)
    assert fake.shape == (1, 3, 32, 32) and not torch.equal(fake, hr[:, :, 16:48, 16:48])


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        TripletFolder(tmp_path)
    for d in ("HR", "LR", "Ref"):
        (tmp_path / d).mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        TripletFolder(tmp_path)
    with pytest.raises(ValueError, match="multiple of scale"):
        RefSRDataset([tmp_path], crop=30, scale=4)


@pytest.mark.skipif(not (RRSSRD / "val_3rd").is_dir(),
                    reason=f"RRSSRD test data not found at {RRSSRD} (shared/ beside the clone)")
def test_real_rrssrd_folder_layout():
    folder = TripletFolder(RRSSRD / "val_3rd")
    assert len(folder) == 40
    hr, lr, ref = folder.load(0)
    assert hr.shape == ref.shape == (1, 3, 480, 480) and lr.shape == (1, 3, 120, 120)


def test_wrong_refs_come_from_another_target(tmp_path, monkeypatch):
    """wrong_ref_prob 1: every crop's Ref is cut from another target's Ref (tagged here by a constant
    value per target, alignment made the identity), flagged "wrong", never synthetic."""
    import sharp.refsr.data as data

    root = write_triplets(tmp_path / "set", n=3, size=64)
    ds = RefSRDataset([root], crop=32, synthetic_ref_prob=1.0, register=False, seed=0,
                      wrong_ref_prob=1.0)
    for k in range(len(ds.hr)):
        ds.hr[k] = torch.full_like(ds.hr[k], k / 10)
        ds.ref[k] = torch.full_like(ds.ref[k], k / 10)
    monkeypatch.setattr(data, "align_reference", lambda ref, up, *a, **kw: (ref, torch.ones_like(ref[:, :1])))
    monkeypatch.setattr(data, "match_colour", lambda ref, up, s: ref)
    b = ds.batch(24)
    assert b["wrong"].all() and not b["synthetic"].any()
    own, used = b["hr"][:, 0, 0, 0], b["ref"][:, 0, 0, 0]
    assert (own != used).all() and set(used.tolist()) <= {k / 10 for k in range(3)}


def test_no_wrong_refs_draws_the_same_batches(tmp_path):
    """wrong_ref_prob 0 (the default) draws no extra random numbers: older recipes keep their batches."""
    root = write_triplets(tmp_path / "set", n=2, size=64)
    a = RefSRDataset([root], crop=32, synthetic_ref_prob=0.5, register=False, seed=3).batch(6)
    b = RefSRDataset([root], crop=32, synthetic_ref_prob=0.5, register=False, seed=3,
                     wrong_ref_prob=0.0).batch(6)
    assert all(torch.equal(a[k], b[k]) for k in ("hr", "up", "ref", "conf", "synthetic"))
    assert not b["wrong"].any()
