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
